"""Interrupted runs: SIGTERM to the pipeline's process group while train_expert-r2 runs (``disturbed_run``,
attempt 2). Nothing may keep running, nothing half-written may be visible as complete (in the bucket or
locally), and the resumed run redoes exactly the unfinished steps."""

from pathlib import Path

import pytest

pytestmark = [pytest.mark.s3, pytest.mark.timeout(1800)]


def test_sigterm_stops_the_whole_run(disturbed_run):
    second = disturbed_run.attempts[1]
    assert second["rc"] != 0
    assert disturbed_run.notes["lingering"] == [], "processes of the run survived SIGTERM"
    assert disturbed_run.notes["expert2_complete_at_kill"] is False


def test_nothing_half_written_is_complete(disturbed_run, tmp_path):
    from ensemw2s.digests import sha256_file

    complete = set(disturbed_run.notes["term_check"]["complete"])
    assert "train_expert-r2/expert" not in complete
    assert {"split_data/splits", "train_expert-r1/expert", "update_weights-r1/state"} <= complete
    # locally, an output is marked complete (_ensemw2s_artifact.json) only once all its files are written:
    # the step killed mid-way has no marked output, and a marked output is exactly what storage holds
    marks = disturbed_run.notes["local_marks"]
    assert marks
    assert not [m for m in marks if m["step"] == "train_expert-r2"], marks
    st = disturbed_run.store()
    for m in marks:
        if f"{m['step']}/{m['output']}" not in complete:
            continue  # its upload was cut by the storage fault: the bucket copy is not complete
        man = st.get_manifest(m["run_id"], m["step"], m["output"])
        local = {
            p.relative_to(m["dir"]).as_posix(): sha256_file(p)
            for p in Path(m["dir"]).rglob("*")
            if p.is_file()
        }
        assert local == {f["path"]: f["sha256"] for f in man["files"]}, m["dir"]


def test_resume_redoes_only_unfinished_steps(disturbed_run, baseline, tmp_path):
    last = disturbed_run.attempts[-1]
    assert last["rc"] == 0, last["stdout"][-3000:] + last["stderr"][-3000:]
    st = disturbed_run.store()
    done_before = set(disturbed_run.notes["complete_before_term"])
    assert {"split_data", "train_expert-r1", "update_weights-r1"} <= done_before
    assert "train_expert-r2" not in done_before
    restored = {
        s: st.get_json(disturbed_run.run_id, s, "timing.json")["restored"]
        for s in st.list_steps(disturbed_run.run_id)
        if s != "run-summary"
    }
    assert len(restored) == 17, restored  # every step of a 2-round run (keys.run_steps(2))
    for step, was_restored in restored.items():
        assert was_restored is (step in done_before), (step, was_restored, sorted(done_before))
    assert disturbed_run.metrics(tmp_path / "d") == baseline.metrics(tmp_path / "b")
