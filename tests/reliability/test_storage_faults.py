"""Storage faults: the S3 server (a dedicated SeaweedFS) is SIGKILLed in the middle of a tiny run, once
train_expert-r1 is complete (``disturbed_run``, attempt 1). The run must fail by itself with a clear error
(bounded retries, no hang); after a restart from the same home (same data, same port) nothing partial may
look complete, and the run resumed with the same --run-id must end with the metrics of an undisturbed run."""

import pytest

pytestmark = [pytest.mark.s3, pytest.mark.timeout(1800)]


def test_run_fails_clearly_while_storage_is_down(disturbed_run):
    first = disturbed_run.attempts[0]
    assert first["rc"] != 0, "the run succeeded although the S3 server was killed"
    assert first["seconds_after_kill"] < 300
    last = first["stderr"].strip().splitlines()[-1]
    print(f"failed {first['seconds_after_kill']} s after the kill: {last}")
    assert last.startswith(f"error: run {disturbed_run.run_id} failed:"), first["stderr"][-3000:]
    assert (
        "Inner task failed" in last and f"resume with: ensemw2s run --run-id {disturbed_run.run_id}" in last
    )
    assert "Traceback" not in first["stderr"]
    # the failing step said why, naming the endpoint
    log = first["stdout"] + first["stderr"]
    assert "cannot connect" in log and disturbed_run.s3.endpoint in log, log[-4000:]


def test_restart_keeps_data_and_endpoint(disturbed_run):
    assert disturbed_run.notes["same_endpoint"]
    complete = disturbed_run.notes["fault_check"]["complete"]
    # what was complete before the crash is still there and verifies against its manifest
    assert {"split_data/splits", "split_data/state", "train_expert-r1/expert"} <= set(complete), complete


def test_no_partial_object_visible_as_complete(disturbed_run):
    # check_no_partial_complete (conftest) asserted it right after the restart, for every output it lists
    check = disturbed_run.notes["fault_check"]
    assert check["complete"]
    assert not set(check["partial"]) & set(check["complete"])


def test_resumed_run_matches_undisturbed_run(disturbed_run, baseline, tmp_path):
    last = disturbed_run.attempts[-1]
    assert last["rc"] == 0, last["stdout"][-3000:] + last["stderr"][-3000:]
    assert "restored from storage" in last["stdout"]
    st = disturbed_run.store()
    assert st.get_json(disturbed_run.run_id, "train_expert-r1", "timing.json")["restored"] is True
    assert disturbed_run.metrics(tmp_path / "d") == baseline.metrics(tmp_path / "b")
