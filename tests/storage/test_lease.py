"""The run-id lease (ensemw2s.lease) against the real SeaweedFS: one live holder per run id, refusal with the
holder named, expiry of a dead holder, heartbeat renewal, loss detection, and races between contenders both
with the server's conditional writes and with a server that ignores them (write, settle, read back). Ends with
the real CLI: `ensemw2s run` of a run id whose lease another live run holds is refused before any step runs."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from s3_fixtures import unique_bucket

from ensemw2s.errors import ClusterError

RUN_SUMMARY, LEASE = "run-summary", "lease.json"


def Lease(*args, **kwargs):  # noqa: N802 - imported late, so the CLI test below also runs on older code
    from ensemw2s.lease import Lease

    return Lease(*args, **kwargs)


def local_holder() -> str:
    from ensemw2s.lease import local_holder

    return local_holder()

pytestmark = pytest.mark.s3


def test_the_embedded_seaweedfs_honours_conditional_writes(store):
    """What the lease's first line of defence rests on (the module docstring says so)."""
    from botocore.exceptions import ClientError

    key = store.key("cond", RUN_SUMMARY, "x.json")
    first = store.client.put_object(Bucket=store.bucket, Key=key, Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        store.client.put_object(Bucket=store.bucket, Key=key, Body=b"2", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        store.client.put_object(Bucket=store.bucket, Key=key, Body=b"3", IfMatch='"0123456789abcdef"')
    store.client.put_object(Bucket=store.bucket, Key=key, Body=b"4", IfMatch=first["ETag"])
    assert store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read() == b"4"


def test_second_holder_is_refused_with_the_holder_named(store):
    a = Lease(store, "run-a", "kfp:wf-one", ttl=60, settle=0.1).acquire()
    with pytest.raises(ClusterError) as err:
        Lease(store, "run-a", "kfp:wf-two", ttl=60, settle=0.1).acquire()
    msg = str(err.value)
    assert "run id 'run-a' is in use" in msg and "held by kfp:wf-one" in msg and "expires in" in msg
    assert f"s3://{store.bucket}/runs/run-a/{RUN_SUMMARY}/{LEASE}" in msg
    # the same holder (another task of the same KFP run) takes it again; another run id is independent
    Lease(store, "run-a", "kfp:wf-one", ttl=60, settle=0.1).acquire()
    Lease(store, "run-b", "kfp:wf-two", ttl=60, settle=0.1).acquire()
    # release never removes someone else's lease
    Lease(store, "run-a", "kfp:wf-two", ttl=60, settle=0.1).release()
    assert a.read().holder == "kfp:wf-one"
    a.release()
    assert a.read() is None
    Lease(store, "run-a", "kfp:wf-two", ttl=60, settle=0.1).acquire()


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it_lost(store):
    old = Lease(store, "run-x", "kfp:wf-old", ttl=1, settle=0.1).acquire()  # no heartbeat: it dies
    time.sleep(3.0)  # ages are whole seconds of the server's clock
    Lease(store, "run-x", "kfp:wf-new", ttl=60, settle=0.1).acquire()
    assert old.renew() is False and "was taken by kfp:wf-new" in old.lost


def test_a_dead_local_holder_on_this_host_is_expired_at_once(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    ghost = Lease(store, "run-k", f"local:{socket.gethostname()}:{pid}", ttl=600, settle=0.1)
    body = ghost._body("ghost-token")
    body["pid"] = pid  # a run killed with SIGKILL: its lease is fresh, its process is gone
    assert ghost._write(body, if_none_match=True)
    cur = ghost.read()
    assert cur.age < 5 and cur.expired()
    Lease(store, "run-k", local_holder(), settle=0.1).acquire()  # resumed at once, no wait for the TTL
    # a live process elsewhere is not second-guessed: a fresh lease of another host is refused
    body.update(host="some-other-host", pid=1, holder="local:some-other-host:1")
    ghost.store.client.put_object(Bucket=store.bucket, Key=ghost.key, Body=__import__("json").dumps(body))
    with pytest.raises(ClusterError, match="held by local:some-other-host:1"):
        Lease(store, "run-k", local_holder(), settle=0.1).acquire()


def test_the_heartbeat_keeps_a_live_lease_fresh_and_release_frees_it(store):
    with Lease(store, "run-h", "kfp:wf-live", ttl=2, renew_every=0.3, settle=0.1) as lease:
        time.sleep(4.0)  # twice the TTL: only the heartbeat keeps it
        cur = lease.read()
        assert cur.age <= 1.5 and not cur.expired()
        with pytest.raises(ClusterError, match="held by kfp:wf-live"):
            Lease(store, "run-h", "kfp:wf-other", ttl=2, settle=0.1).acquire()
    assert lease.read() is None  # released at exit
    Lease(store, "run-h", "kfp:wf-other", ttl=2, settle=0.1).acquire()


def test_a_heartbeat_that_finds_another_holder_reports_the_loss(store):
    lost = []
    lease = Lease(store, "run-l", "kfp:wf-slow", ttl=1, renew_every=0.2, settle=0.1, on_lost=lost.append)
    lease.acquire()
    time.sleep(3.0)  # stalled beyond its TTL (no heartbeat yet)
    Lease(store, "run-l", "kfp:wf-fast", ttl=60, settle=0.1).acquire()
    lease.start_heartbeat()
    deadline = time.time() + 10
    while not lost and time.time() < deadline:
        time.sleep(0.1)
    lease.stop_heartbeat()
    assert lost and "was taken by kfp:wf-fast" in lost[0]


class _IgnoresConditions:
    """A boto3 client of a server that ignores If-None-Match / If-Match (older MinIO, SeaweedFS)."""

    def __init__(self, client):
        self._client = client

    def put_object(self, **kwargs):
        kwargs.pop("IfNoneMatch", None)
        kwargs.pop("IfMatch", None)
        return self._client.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


@pytest.mark.parametrize("server", ["honours-conditions", "ignores-conditions"])
def test_contenders_racing_for_one_run_id_leave_exactly_one_holder(store_factory, server):
    st = store_factory()
    if server == "ignores-conditions":
        st.client = _IgnoresConditions(st.client)
    n, barrier, results = 6, threading.Barrier(6), {}

    def contend(i):
        lease = Lease(st, "run-race", f"kfp:wf-{i}", ttl=60, settle=1.0)
        barrier.wait()
        try:
            lease.acquire()
            results[i] = "won"
        except ClusterError as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [i for i, r in results.items() if r == "won"]
    assert len(results) == n and len(winners) == 1, results
    holder = Lease(st, "run-race", "kfp:nobody", ttl=60).read().holder
    assert holder == f"kfp:wf-{winners[0]}"
    assert all("is in use" in r or "overtaken" in r for i, r in results.items() if i != winners[0]), results


@pytest.mark.parametrize("server", ["honours-conditions", "ignores-conditions"])
def test_the_settle_wait_is_only_paid_where_the_server_ignores_conditions(store_factory, server, monkeypatch):
    """The read-back's wait guards a server that ignores conditional writes; the probe tells the two apart and
    leaves no scratch object behind."""
    import ensemw2s.lease as lease_mod

    st = store_factory()
    if server == "ignores-conditions":
        st.client = _IgnoresConditions(st.client)
    slept = []
    monkeypatch.setattr(lease_mod.time, "sleep", slept.append)
    lease = Lease(st, "run-p", "kfp:wf-probe", ttl=60, settle=1.5).acquire()
    assert lease.server_honours_conditions() is (server == "honours-conditions")
    assert slept == ([] if server == "honours-conditions" else [1.5])
    lease_key = st.key("run-p", RUN_SUMMARY, LEASE)
    listed = st.client.list_objects_v2(Bucket=st.bucket, Prefix=lease_key.rsplit("/", 1)[0] + "/")
    assert [o["Key"] for o in listed.get("Contents", [])] == [lease_key]


def test_a_second_live_local_run_of_a_run_id_is_refused(repo_root, tiny_assets, s3_env):
    """`ensemw2s run --run-id X` while another live run (here: this test process) holds X's lease:
    exit 1, the holder named, and no step of the pipeline ran."""
    from ensemw2s.config import StorageConfig
    from ensemw2s.storage import Store

    bucket = unique_bucket()
    st = Store.from_config(StorageConfig(bucket=bucket))
    st.check()
    # the live run's lease, written as the lease module writes it (this process is its live holder)
    lease = {"holder": "local:laptop-of-someone-else:4242", "token": "t0", "ttl": 600, "run_id": "busy",
             "acquired": "2026-01-01T00:00:00Z", "renewed": "2026-01-01T00:00:00Z", "host": socket.gethostname(),
             "pid": os.getpid()}
    st.put_json("busy", RUN_SUMMARY, LEASE, lease)
    env = dict(os.environ, ENSEMW2S_PROGRESS="0")
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "ensemw2s.cli", "run", "--config", str(repo_root / "configs/tiny.yaml"),
                          "--set", f"storage.bucket={bucket}", "--run-id", "busy"], cwd=repo_root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "run id 'busy' is in use" in res.stderr and "held by local:laptop-of-someone-else:4242" in res.stderr
    assert time.time() - t0 < 120
    assert st.list_steps("busy") == [RUN_SUMMARY]  # no step ran
    assert st.get_json("busy", RUN_SUMMARY, LEASE)["holder"] == "local:laptop-of-someone-else:4242"  # kept
