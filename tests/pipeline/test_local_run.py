"""End to end: the whole DAG through kfp.local on configs/tiny.yaml against the real SeaweedFS server, in a
pseudo-terminal (the live view a person sees); then an interrupted run (killed after round 1) resumes through a
pipe (the plain form) and ends with the same metrics. Every step's full log is kept locally and in S3."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from s3_fixtures import unique_bucket
from ui.ptyrun import run_in_pty

from ensemw2s.steps import keys

pytestmark = pytest.mark.s3
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

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
    from ensemw2s import assets

    logs = assets.home() / "kfp-local" / "full" / "logs"
    shutil.rmtree(logs, ignore_errors=True)  # the run id is the same in every session: no stale logs
    # 1. uninterrupted run, in a terminal, the steps' progress bars on
    out = run_in_pty(_run_cmd(repo_root, bucket, "full"), env={**env, "ENSEMW2S_PROGRESS": "1"}, cwd=repo_root,
                     timeout=900)
    text = ANSI.sub("", out)
    assert "EnsemW2S ensemble" in text and "orchestration" in text
    # the run header says the precision of the model steps and why (resources.dtype)
    from ensemw2s.modeling import resolve_dtype

    assert re.search(rf"precision: {resolve_dtype('auto')} on cpu \(auto", text), text[:2000]
    # the live view: one line per step under its step key, redrawn in place, a bar with ETA while training;
    # nothing of kfp.local (executor input JSON, its task names) on the terminal
    for noise in ('"inputs"', "executor_input", "Executing task", "KFP Executor", "train-expert-2", "Streamed logs"):
        assert noise not in out, noise
    assert "\x1b[2K" in out and re.search(r"\x1b\[\d*A", out)
    for key in keys.run_steps(2):
        assert re.search(rf"✔ {re.escape(key)}\s+done\s+\d", text), key
    assert re.search(r"training \d+/\d+ \(\d+ %\), ETA", text), text[-3000:]
    assert "report: s3://" in text and "/report/report.html" in text
    st = _store(bucket)
    # every step's full log, locally and next to its artifacts in S3: kfp.local's output is there
    for key in keys.run_steps(2):
        assert (logs / f"{key}.log").is_file() and st.exists("full", key, "step.log"), key
    train_log = (logs / "train_expert-r1.log").read_text()
    assert '"inputs"' in train_log and "ensemw2s-progress" in train_log and "[train_expert-r1]" in train_log
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
    # through a pipe: plain lines, no control codes, a few per step
    assert "\x1b" not in res.stdout + res.stderr and "\r" not in res.stdout
    for key in keys.run_steps(2):
        mine = [x for x in res.stdout.splitlines() if re.search(rf"\] {re.escape(key)} ", x)]
        assert 2 <= len(mine) <= 3 and "started" in mine[0], (key, mine)
    assert re.search(r"\] train_expert-r1\s+restored from storage in ", res.stdout)
    assert '"inputs"' not in res.stdout and "Executing task" not in res.stdout
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
