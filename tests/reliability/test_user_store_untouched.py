"""The suite leaves a user's run store as it found it (issue 22).

A user who ran ``make run`` and then ``make test`` has, in one ENSEMW2S_HOME, the local records of their runs
and an embedded S3 server holding them, and may have that server exported in their shell (S3_ENDPOINT_URL and
keys). Here such a user is made for real: a home with the set-up assets, a running SeaweedFS with a complete
stored run in the default bucket, local run records and step caches. Then the storage-touching tests run in a
child pytest started from that user's environment; afterwards every object (key, size, ETag, last-modified)
and every file of the user's home must be as before. A negative control shows the check can fail: a test that
writes into the user's store is caught by the session guard (tests/conftest.py, tests/isolation.py).
"""
import os
import subprocess
import sys
from pathlib import Path

import isolation
import pytest
from stored_runs import store_run

pytestmark = pytest.mark.s3

REPO = Path(__file__).resolve().parents[2]
INNER = "ENSEMW2S_TEST_INNER_SUITE"
# the tests that write runs, logs, caches and buckets: run browsing, the object store and its leases, the
# bad-input catalogue's CLI cases (fresh homes, runs started and refused)
SELECTION = ["tests/ui/test_runs_cli.py", "tests/storage/test_storage.py", "tests/storage/test_lease.py",
             "tests/reliability/test_bad_inputs.py"]
RUN_ID = "20261206-093000-usrrun"


@pytest.fixture
def user(tmp_path, tiny_assets):
    """A user's home with a running embedded S3 server and one stored run; yields (home, child env)."""

    from ensemw2s import s3server
    from ensemw2s.config import StorageConfig
    from ensemw2s.storage import Store

    if os.environ.get(INNER):
        pytest.skip("already inside the child suite of this test")
    home = tmp_path / "user-home"
    isolation.link_assets(tiny_assets, home)
    info = s3server.serve(home=home)
    env = {k: v for k, v in os.environ.items() if k not in isolation.USER_ENV}
    env.update(ENSEMW2S_HOME=str(home), S3_ENDPOINT_URL=info.endpoint, AWS_ACCESS_KEY_ID=info.access_key,
               AWS_SECRET_ACCESS_KEY=info.secret_key, AWS_DEFAULT_REGION="us-east-1", **{INNER: "1"})
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
                mp.setenv(k, env[k])
            store = Store.from_config(StorageConfig())  # the default bucket, as `ensemw2s run` uses it
            store.check()  # creates the bucket, as a user's first run does
            work = tmp_path / "work"
            work.mkdir()
            store_run(store, RUN_ID, tmp=work)
        logs = home / "kfp-local" / RUN_ID / "logs"
        logs.mkdir(parents=True)
        (logs / "split_data.log").write_text("[split_data] the user's own log\n")
        cache = home / "cache" / "runs" / RUN_ID / "split_data" / "splits"
        cache.mkdir(parents=True)
        (cache / "easy_train.jsonl").write_text('{"id": "u1"}\n')
        yield home, env
    finally:
        s3server.stop(home)


def _child(env, *args):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)


def test_the_suite_leaves_a_users_run_store_untouched(user):
    home, env = user
    before = isolation.snapshot(home)
    assert any(k.startswith(f"s3://ensemw2s/runs/{RUN_ID}/report/") for k in before["objects"]), before["objects"]
    assert "kfp-local/" + RUN_ID + "/logs/split_data.log" in before["files"]
    r = _child(env, *SELECTION)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    assert " passed" in r.stdout.splitlines()[-1], tail
    assert isolation.changes(before, isolation.snapshot(home)) == []


LEAK = '''
import os
from isolation import SAVED_ENV

def test_writes_into_the_users_store():
    import boto3
    s3 = boto3.client("s3", endpoint_url=SAVED_ENV["S3_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=SAVED_ENV["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=SAVED_ENV["AWS_SECRET_ACCESS_KEY"])
    s3.put_object(Bucket="ensemw2s", Key="runs/leaked-by-a-test/x", Body=b"x")
'''


def test_a_test_that_writes_into_the_users_store_fails_the_session(user, tmp_path):
    """Negative control: the same check catches a test that reaches the user's store on purpose."""
    home, env = user
    before = isolation.snapshot(home)
    leak = tmp_path / "leaky" / "test_leak.py"
    leak.parent.mkdir()
    leak.write_text(LEAK)
    # the repository's conftest as a plugin: the leaky file lives outside tests/
    env = dict(env, PYTHONPATH=str(REPO / "tests"))
    r = _child(env, "-p", "conftest", "--rootdir", str(REPO), str(leak))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "1 passed" in out and "error: the test session changed the user's ENSEMW2S_HOME" in out, out[-3000:]
    assert "added object: s3://ensemw2s/runs/leaked-by-a-test/x" in out, out[-3000:]
    assert isolation.changes(before, isolation.snapshot(home)) == [
        "added object: s3://ensemw2s/runs/leaked-by-a-test/x"]
