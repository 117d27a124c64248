"""Object storage against a real S3 server (SeaweedFS from the s3_server fixture; no mocks)."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import time
from pathlib import Path

import google_crc32c
import pytest

from ensemw2s import s3server, storage
from ensemw2s.config import StorageConfig
from ensemw2s.digests import sha256_file
from ensemw2s.storage import CorruptArtifactError, StorageError, Store, validate_name

pytestmark = pytest.mark.s3

MiB = 1024 * 1024


def _make_tree(root: Path) -> dict[str, bytes]:
    content = {
        "a.txt": b"alpha\n",
        "sub/b.bin": os.urandom(4096),
        "sub/deeper/c.json": json.dumps({"x": 1}).encode(),
        "empty": b"",
    }
    for rel, data in content.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return content


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("bad", ["..", "a..b", "a/b", "x\n", "", "-a", ".hidden", "a b", "a" * 129, "é"])
def test_validate_name_rejects(bad):
    with pytest.raises(StorageError) as err:
        validate_name("run id", bad)
    assert "run id" in str(err.value) and repr(bad) in str(err.value)


@pytest.mark.parametrize("good", ["r1", "run-2024.01_x", "A", "a" * 128, "train_expert_r0_e1"])
def test_validate_name_accepts(good):
    assert validate_name("step name", good) == good


def test_keys_validate_every_name(store):
    assert store.key("r1", "split_data", "out", "files/a.txt") == "runs/r1/split_data/out/files/a.txt"
    assert store.uri("r1", "s") == f"s3://{store.bucket}/runs/r1/s"
    for args in [("..", "s"), ("r", "a/b"), ("r", "s", "../x"), ("r", "s", "a//b"), ("r\n", "s")]:
        with pytest.raises(StorageError):
            store.key(*args)
    with pytest.raises(StorageError, match="output name"):
        store.put_dir(Path("."), "r1", "s", "../o", producer="t", config_hash="h")


# -------------------------------------------------------------------------------------- artifacts
def test_put_dir_get_dir_round_trip(store, tmp_path):
    src = tmp_path / "src"
    content = _make_tree(src)
    manifest = store.put_dir(src, "run1", "split_data", "data", producer="test", config_hash="abc",
                             extra={"rows": 3})
    assert {k: manifest[k] for k in ("run_id", "step", "output", "producer", "config_hash")} == {
        "run_id": "run1", "step": "split_data", "output": "data", "producer": "test", "config_hash": "abc"}
    assert manifest["extra"] == {"rows": 3} and manifest["created"].endswith("Z")
    by_path = {f["path"]: f for f in manifest["files"]}
    assert set(by_path) == set(content)
    for rel, data in content.items():
        assert by_path[rel]["size"] == len(data)
        assert by_path[rel]["sha256"] == sha256_file(src / rel)
        assert by_path[rel]["crc32c"] == f"{google_crc32c.value(data):08x}"
    assert store.is_complete("run1", "split_data", "data")

    dest = tmp_path / "out" / "data"
    got = store.get_dir("run1", "split_data", "data", dest)
    assert got["files"] == manifest["files"]
    assert _read_tree(dest) == content
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data"]  # no temp dirs left

    # downloading again replaces a non-empty directory entirely
    (dest / "stray.txt").write_text("old")
    store.get_dir("run1", "split_data", "data", dest)
    assert _read_tree(dest) == content

    assert store.list_runs() == ["run1"]
    assert store.list_steps("run1") == ["split_data"]
    assert store.list_outputs("run1", "split_data") == ["data"]


def test_put_dir_again_removes_stale_files(store, tmp_path):
    src = tmp_path / "src"
    _make_tree(src)
    store.put_dir(src, "r", "s", "o", producer="t", config_hash="1")
    (src / "sub" / "b.bin").unlink()
    manifest = store.put_dir(src, "r", "s", "o", producer="t", config_hash="2")
    assert "sub/b.bin" not in {f["path"] for f in manifest["files"]}
    assert not store.exists("r", "s", "o", "files/sub/b.bin")
    store.get_dir("r", "s", "o", tmp_path / "dl")
    assert not (tmp_path / "dl" / "sub" / "b.bin").exists()
    assert store.get_manifest("r", "s", "o")["config_hash"] == "2"


def test_large_file_goes_multipart(store, tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    big = src / "model.safetensors"
    with open(big, "wb") as fh:
        fh.writelines(os.urandom(MiB) for _ in range(100))
    assert big.stat().st_size > store.cfg.multipart_threshold_mb * MiB
    store.put_dir(src, "r", "train_student", "model", producer="t", config_hash="h")
    head = store.client.head_object(Bucket=store.bucket, Key=store.key("r", "train_student", "model",
                                                                       "files/model.safetensors"))
    etag = head["ETag"].strip('"')
    assert "-" in etag and int(etag.rsplit("-", 1)[1]) >= 2, etag
    dest = tmp_path / "dl"
    # a ranged (multipart) download: parts land out of order in the hashing file
    assert big.stat().st_size > store.transfer_config.multipart_chunksize
    store.get_dir("r", "train_student", "model", dest)
    assert sha256_file(dest / "model.safetensors") == sha256_file(big)


@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled-with-rewrites"])
def test_hashing_file_matches_sha256_of_the_result(tmp_path, order):
    """Parts written out of order, and parts written twice (a retried range), still give the file's sha256."""
    import random

    from ensemw2s.storage import _HashingFile

    data = os.urandom(3 * MiB + 12345)
    parts = [(i, data[i:i + 256 * 1024]) for i in range(0, len(data), 256 * 1024)]
    if order == "reversed":
        parts = parts[::-1]
    elif order != "in-order":
        rng = random.Random(0)
        rng.shuffle(parts)
        # a retried range: a prefix of one part rewritten after later parts landed
        parts.insert(len(parts) // 2, (parts[0][0], parts[0][1][:1000]))
        parts.append((parts[3][0] + 7, parts[3][1][7:5000]))
    path = tmp_path / "out.bin"
    with open(path, "w+b", buffering=0) as fh:
        f = _HashingFile(fh)
        for offset, chunk in parts:
            f.seek(offset)
            assert f.write(chunk) == len(chunk)
        digest = f.hexdigest()
        if order != "shuffled-with-rewrites":  # hashed as written, no second pass over the file
            assert f._done == len(data) and not f._ranges
    assert path.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_manifest_is_written_last(store, tmp_path, monkeypatch):
    src = tmp_path / "src"
    _make_tree(src)
    store.put_dir(src, "r", "s", "o", producer="t", config_hash="old")
    assert store.is_complete("r", "s", "o")

    real_put = store.client.put_object

    def crash_on_manifest(**kwargs):
        if kwargs["Key"].endswith("/manifest.json"):
            raise KeyboardInterrupt("killed before the manifest")
        return real_put(**kwargs)

    monkeypatch.setattr(store.client, "put_object", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        store.put_dir(src, "r", "s", "o", producer="t", config_hash="new")
    monkeypatch.undo()
    # every file is there, but without a manifest the artifact is not complete (not even the old one)
    assert store.exists("r", "s", "o", "files/a.txt")
    assert not store.is_complete("r", "s", "o")
    with pytest.raises(StorageError, match="missing artifact"):
        store.get_dir("r", "s", "o", tmp_path / "dl")
    assert not (tmp_path / "dl").exists()


def test_is_complete_false_when_a_file_is_missing(store, tmp_path):
    src = tmp_path / "src"
    _make_tree(src)
    store.put_dir(src, "r", "s", "o", producer="t", config_hash="h")
    store.client.delete_object(Bucket=store.bucket, Key=store.key("r", "s", "o", "files/a.txt"))
    assert not store.is_complete("r", "s", "o")
    with pytest.raises(StorageError, match="incomplete artifact.*files/a.txt"):
        store.get_dir("r", "s", "o", tmp_path / "dl")


def _stored_tree(store, tmp_path) -> tuple[Path, dict, str]:
    """A small tree stored as artifact r/s/o: (source dir, manifest, key of its files/a.txt)."""
    src = tmp_path / "src"
    _make_tree(src)
    manifest = store.put_dir(src, "r", "s", "o", producer="t", config_hash="h")
    return src, manifest, store.key("r", "s", "o", "files/a.txt")


def test_older_manifest_without_crc32c_is_verified_by_sha256(store, tmp_path):
    src, manifest, key = _stored_tree(store, tmp_path)
    old = {**manifest, "files": [{k: v for k, v in f.items() if k != "crc32c"} for f in manifest["files"]]}
    mkey = store.key("r", "s", "o", "manifest.json")
    store.client.put_object(Bucket=store.bucket, Key=mkey, Body=json.dumps(old).encode())
    store.get_dir("r", "s", "o", tmp_path / "ok")
    assert _read_tree(tmp_path / "ok") == _read_tree(src)
    store.client.put_object(Bucket=store.bucket, Key=key, Body=b"ALPHA\n")  # same size, other bytes
    with pytest.raises(CorruptArtifactError, match=f"expected sha256 {sha256_file(src / 'a.txt')}, got "
                       f"{hashlib.sha256(b'ALPHA' + bytes([10])).hexdigest()}"):
        store.get_dir("r", "s", "o", tmp_path / "bad")


def test_truncated_object_is_a_size_mismatch(store, tmp_path):
    _, _, key = _stored_tree(store, tmp_path)
    store.client.put_object(Bucket=store.bucket, Key=key, Body=b"alp")
    with pytest.raises(CorruptArtifactError, match=r"size mismatch for s3://.*/files/a.txt: expected 6 bytes, got 3"):
        store.get_dir("r", "s", "o", tmp_path / "bad")


def test_corrupted_object_is_detected(store, tmp_path):
    src, _, key = _stored_tree(store, tmp_path)
    store.client.put_object(Bucket=store.bucket, Key=key, Body=b"ALPHA\n")  # same size, other bytes
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "keep.txt").write_text("previous download")
    with pytest.raises(CorruptArtifactError) as err:
        store.get_dir("r", "s", "o", dest)
    msg = str(err.value)
    assert f"s3://{store.bucket}/{key}" in msg
    want = f"{google_crc32c.value((src / 'a.txt').read_bytes()):08x}"
    assert f"expected crc32c {want}, got {google_crc32c.value(b'ALPHA' + bytes([10])):08x}" in msg
    # the failed download left the previous directory untouched and no temp dir behind
    assert _read_tree(dest) == {"keep.txt": b"previous download"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "src"]


def test_missing_artifact_names_run_step_and_uri(store, tmp_path):
    with pytest.raises(StorageError) as err:
        store.get_dir("run9", "train_expert", "model", tmp_path / "x")
    msg = str(err.value)
    assert msg.startswith("missing artifact: run run9, step train_expert, output model, uri ")
    assert f"s3://{store.bucket}/runs/run9/train_expert/model/" in msg
    assert not store.is_complete("run9", "train_expert", "model")


# --------------------------------------------------------------------------- json, files, delete
def test_json_file_and_delete_run(store, tmp_path, monkeypatch):
    store.put_json("r1", "evaluate", "metrics", {"acc": 0.5})
    assert store.get_json("r1", "evaluate", "metrics") == {"acc": 0.5}
    with pytest.raises(StorageError, match="missing object: run r1, step evaluate, name nope"):
        store.get_json("r1", "evaluate", "nope")

    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 1000)
    uri = store.put_file(f, "r1", "s", "blobs/f.bin")
    assert uri == f"s3://{store.bucket}/runs/r1/s/blobs/f.bin"
    out = store.get_file("r1", "s", "blobs/f.bin", tmp_path / "g" / "f.bin")
    assert out.read_bytes() == b"x" * 1000
    with pytest.raises(StorageError, match="missing object"):
        store.get_file("r1", "s", "blobs/none.bin", tmp_path / "g" / "none.bin")
    assert not (tmp_path / "g" / "none.bin").exists()

    for i in range(5):
        store.put_json("r2", f"step{i}", "m", {"i": i})
    monkeypatch.setattr(storage, "_DELETE_BATCH", 2)  # exercise the batching
    assert store.delete_run("r1") == 2
    assert store.list_runs() == ["r2"]
    assert store.delete_run("r2") == 5
    assert store.list_runs() == []


# ------------------------------------------------------------------------------------ failures
def test_wrong_credentials_fail_fast(s3_server, store_factory):
    cfg = StorageConfig(endpoint=s3_server.endpoint, bucket="ew2s-wrong-creds")
    cases = [("EW2SNOSUCHKEY0000000", "not-the-secret-123"), (s3_server.access_key, "not-the-secret-456")]
    for ak, sk in cases:
        st = Store(cfg, s3_server.endpoint, ak, sk, "us-east-1")
        t0 = time.monotonic()
        with pytest.raises(StorageError) as err:
            st.check()
        assert time.monotonic() - t0 < 10
        msg = str(err.value)
        assert s3_server.endpoint in msg and "ew2s-wrong-creds" in msg
        assert "wrong credentials" in msg or "access denied" in msg, msg
        assert sk not in msg and s3_server.secret_key not in msg
        assert "\n" not in msg


def test_unreachable_endpoint_fails_fast():
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    st = Store(StorageConfig(endpoint=endpoint), endpoint, "a", "b", "us-east-1")
    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        st.check()
    assert time.monotonic() - t0 < 10
    assert endpoint in str(err.value) and "cannot connect" in str(err.value)


def test_missing_bucket_without_create(s3_env, store_factory):
    st = Store.from_config(StorageConfig(bucket="ew2s-does-not-exist"))
    with pytest.raises(StorageError, match="bucket .ew2s-does-not-exist. does not exist at") as err:
        st.check(create=False)
    assert s3_env.endpoint in str(err.value) and "ew2s-does-not-exist" in str(err.value)


def test_no_storage_configured_tells_how_to_fix(monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(s3server, "status", lambda home=None: None)
    with pytest.raises(StorageError, match="ensemw2s storage serve.*S3_ENDPOINT_URL"):
        Store.from_config(StorageConfig())


def test_resolve_credentials_from_env(s3_env):
    endpoint, ak, sk, region = storage.resolve_credentials(StorageConfig())
    assert (endpoint, ak, sk, region) == (s3_env.endpoint, s3_env.access_key, s3_env.secret_key, "us-east-1")
    assert storage.resolve_credentials(StorageConfig(endpoint="http://x:1"))[0] == "http://x:1"


# ----------------------------------------------------------------------------- embedded server
def test_server_lifecycle(tmp_path, capsys):
    home = tmp_path / "home"
    assert s3server.status(home) is None
    assert s3server.cli(["--home", str(home), "status"]) == 1
    try:
        info = s3server.serve(home)
        assert info.endpoint.startswith("http://127.0.0.1:")
        assert info.secret_key not in repr(info)
        assert os.getsid(info.pid) == info.pid  # detached: its own session, outlives the caller
        s3dir = home / "s3"
        for name in ("credentials.json", "s3_identities.json"):
            assert stat.S_IMODE((s3dir / name).stat().st_mode) == 0o600, name
        assert info.secret_key not in (s3dir / "server.json").read_text()
        assert info.secret_key not in (s3dir / "weed.log").read_text()

        again = s3server.serve(home)  # idempotent
        assert (again.pid, again.endpoint) == (info.pid, info.endpoint)
        assert s3server.ensure_running(home).pid == info.pid
        assert s3server.status(home).endpoint == info.endpoint

        capsys.readouterr()
        assert s3server.cli(["--home", str(home), "status"]) == 0
        out = capsys.readouterr().out
        assert info.endpoint in out and info.access_key in out and info.secret_key not in out

        # the right key works
        cfg = StorageConfig(endpoint=info.endpoint, bucket="keep")
        st = Store(cfg, info.endpoint, info.access_key, info.secret_key, "us-east-1")
        st.check()
        st.put_json("r", "s", "kept", {"ok": True})

        assert s3server.stop(home) is True
        assert s3server.status(home) is None
        assert s3server.stop(home) is False

        # restart: same credentials, same endpoint when its port is still free, data kept
        info2 = s3server.serve(home)
        assert info2.access_key == info.access_key and info2.pid != info.pid
        st2 = Store(cfg, info2.endpoint, info2.access_key, info2.secret_key, "us-east-1")
        assert st2.get_json("r", "s", "kept") == {"ok": True}
    finally:
        s3server.stop(home)
    assert s3server.status(home) is None


def test_fetch_uri_folder_downloads_a_model_folder_once(store, tmp_path, monkeypatch):
    from ensemw2s import storage

    monkeypatch.setenv("ENSEMW2S_HOME", str(tmp_path / "home"))
    store.client.put_object(Bucket=store.bucket, Key="models/m1/config.json", Body=b"{}")
    store.client.put_object(Bucket=store.bucket, Key="models/m1/sub/w.bin", Body=b"x" * 10)
    dest = storage.fetch_uri_folder(f"s3://{store.bucket}/models/m1")
    assert (dest / "config.json").read_bytes() == b"{}" and (dest / "sub/w.bin").stat().st_size == 10
    store.client.delete_object(Bucket=store.bucket, Key="models/m1/config.json")
    assert storage.fetch_uri_folder(f"s3://{store.bucket}/models/m1") == dest  # cached, no second download
    with pytest.raises(storage.StorageError, match="no objects under"):
        storage.fetch_uri_folder(f"s3://{store.bucket}/models/none")
    with pytest.raises(storage.StorageError, match="not an s3:// folder"):
        storage.fetch_uri_folder("s3://bucketonly")
