"""End to end: the whole DAG through kfp.local on configs/tiny.yaml against the real SeaweedFS server;
then an interrupted run (killed after round 1) resumes and ends with the same metrics."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from s3_fixtures import unique_bucket

from ensemw2s.steps import keys

pytestmark = pytest.mark.s3

METRIC_KEYS = ("weak_single_acc_id", "weak_single_acc_ood", "ensemble_acc_id", "ensemble_acc_ood",
               "ensemble_acc_ood_by_round", "student_single_acc_ood", "student_ensemble_acc_ood",
               "ceiling_acc_ood", "pgr_single", "pgr_ens", "alphas", "rounds", "seed")


def _run_cmd(repo_root, bucket, run_id, *extra):
    return [sys.executable, "-m", "ensemw2s.cli", "run", "--config", str(repo_root / "configs/tiny.yaml"),
            "--set", f"storage.bucket={bucket}", "--run-id", run_id, *extra]


def _env(s3_env, tmp_path):
    env = dict(os.environ)
    env.update(S3_ENDPOINT_URL=s3_env.endpoint, AWS_ACCESS_KEY_ID=s3_env.access_key,
               AWS_SECRET_ACCESS_KEY=s3_env.secret_key, ENSEMW2S_PROGRESS="0")
    return env


@pytest.fixture(scope="module")
def bucket():
    return unique_bucket()


def _store(bucket):
    from ensemw2s.config import StorageConfig
    from ensemw2s.storage import Store

    st = Store.from_config(StorageConfig(bucket=bucket))
    st.check()
    return st


def test_full_pipeline_and_resume(repo_root, tiny_assets, s3_env, tmp_path, bucket):
    env = _env(s3_env, tmp_path)
    # 1. uninterrupted run
    res = subprocess.run(_run_cmd(repo_root, bucket, "full"), cwd=repo_root, env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "EnsemW2S ensemble" in res.stdout and "orchestration" in res.stdout
    st = _store(bucket)
    steps = set(st.list_steps("full"))
    expected = set(keys.run_steps(2))  # the one table of step keys: every step stored under its key
    assert steps == expected | {keys.RUN_SUMMARY}, steps ^ (expected | {keys.RUN_SUMMARY})
    for step in expected:
        for output in st.list_outputs("full", step):
            if output.endswith(".json"):
                continue
            assert st.is_complete("full", step, output), (step, output)
            man = st.get_manifest("full", step, output)
            assert man["producer"] == step and man["config_hash"] and man["files"]
            assert all(len(f["sha256"]) == 64 and f["size"] >= 0 for f in man["files"])
    report_files = {f["path"] for f in st.get_manifest("full", "report", "report")["files"]}
    assert {"metrics.json", "report.md", "report.html"} <= report_files, report_files
    # the run summary records the machine it ran on, read from the machine (not assumed)
    machine = st.get_json("full", keys.RUN_SUMMARY, "summary.json")["machine"]
    assert machine["cpu_count"] == os.cpu_count() and machine["gpu"] is None and machine["torch"]
    metrics = _metrics(st, "full", tmp_path / "m1")
    for k in METRIC_KEYS:
        assert k in metrics, k

    # 2. a run killed once round 1 is complete in storage, then resumed with the same run id
    proc = subprocess.Popen(_run_cmd(repo_root, bucket, "killed"), cwd=repo_root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if st.is_complete("killed", "update_weights-r1", "state"):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not st.exists("killed", "report", "report", "manifest.json")
    res = subprocess.run(_run_cmd(repo_root, bucket, "killed"), cwd=repo_root, env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "restored from storage" in res.stdout
    timing = st.get_json("killed", "train_expert-r1", "timing.json")
    assert timing["restored"] is True
    # the execution that trained the expert (before the kill) keeps its timing under "produced"
    produced = timing["produced"]
    assert produced["restored"] is False and produced["end"] < timing["start"] and produced["work_seconds"] > 0
    recomputed = st.get_json("killed", "train_expert-r2", "timing.json")
    assert recomputed["restored"] is False
    # each step records the source commit `ensemw2s run` handed it, the one in the run summary
    assert "commit" in recomputed and recomputed["commit"] == st.get_json("killed", "run-summary",
                                                                          "summary.json")["commit"]
    resumed = _metrics(st, "killed", tmp_path / "m2")
    for k in METRIC_KEYS:
        if k == "run_id":
            continue
        assert resumed[k] == metrics[k], k


def _metrics(st, run_id, dest):
    st.get_dir(run_id, "report", "report", dest)
    return json.loads((dest / "metrics.json").read_text())
