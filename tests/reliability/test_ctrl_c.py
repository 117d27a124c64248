"""Ctrl-C during ``ensemw2s run`` (issue 25): SIGINT to the run's whole process group, as a terminal sends it,
while a step is running. The run must exit 130 with one ``error:`` line that says how to resume, print no
traceback, leave no process behind, and be recorded as interrupted (``runs list`` said "running or stopped")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.s3, pytest.mark.timeout(600)]


def _alive(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,pgid=,args=", "-e"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln.split()[1:2] == [str(pgid)]]


def test_ctrl_c_stops_the_run_says_how_to_resume_and_records_it(s3_env, store, tiny_assets):
    run_id = "ctrl-c"
    args = [sys.executable, "-m", "ensemw2s.cli", "run", "--config", "configs/tiny.yaml", "--run-id", run_id,
            "--set", f"storage.bucket={store.bucket}"]
    env = {**os.environ, "ENSEMW2S_PROGRESS": "0"}
    # as from a terminal: SIGINT at its default action. A suite started in the background (`make test &`, some CI
    # shells) inherits SIGINT ignored, and an ignored SIGINT stays ignored across exec, so Python would never
    # raise KeyboardInterrupt in the run
    p = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    started = threading.Event()

    def read():
        for line in p.stdout:
            lines.append(line)
            if "train_expert-r1" in line and "started" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(300), "train_expert-r1 never started:\n" + "".join(lines)
    time.sleep(2)  # inside the step (its model is loading or training)
    os.killpg(p.pid, signal.SIGINT)
    err = p.stderr.read()
    rc = p.wait(timeout=120)
    reader.join(10)
    out = "".join(lines)
    assert rc == 130, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: run {run_id} interrupted (Ctrl-C)"), err
    assert last.endswith(f"Resume with: ensemw2s run --run-id {run_id} --config configs/tiny.yaml"), err
    deadline = time.time() + 20
    while _alive(p.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(p.pid), "processes of the run survived Ctrl-C"
    status = store.get_json(run_id, "run-summary", "status.json")
    assert status["status"] == "interrupted" and "train_expert-r1" in status["steps"], status
    assert store.exists(run_id, "split_data", "timing.json")
    assert not store.exists(run_id, "train_expert-r1", "timing.json")
    listing = subprocess.run([sys.executable, "-m", "ensemw2s.cli", "runs", "list", "--config", "configs/tiny.yaml",
                              "--set", f"storage.bucket={store.bucket}"], cwd=REPO, env=env, capture_output=True,
                             text=True, check=True).stdout
    row = next(ln for ln in listing.splitlines() if ln.startswith(run_id))
    done = sum(store.exists(run_id, s, "timing.json") for s in store.list_steps(run_id))
    assert f"interrupted ({done}/17 steps done)" in row and done >= 1, listing
