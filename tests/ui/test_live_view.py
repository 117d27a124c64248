"""The live view of a run (:mod:`ensemw2s.liveview`): tqdm's progress records, the split of kfp.local's output
into one log per step, and the display under a pseudo-terminal (lines redrawn in place, a bar with ETA, no
executor JSON) and through a pipe (plain lines, no control codes).

The display tests drive :func:`ensemw2s.liveview.capture` with a stand-in for kfp.local that does what it does
for each task (its log lines through ``logging`` on ``sys.stdout``, the step subprocess's lines — executor input
JSON, a tqdm bar — read from a pipe and printed indented); tests/pipeline/test_local_run.py runs the real
pipeline under a pseudo-terminal and through a pipe.
"""
import os
import re
import subprocess
import sys
import time

import pytest
from ui.ptyrun import run_in_pty

from ensemw2s import liveview

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

DRIVER = r'''
import logging, os, subprocess, sys
from pathlib import Path
from ensemw2s import liveview

tasks = {"split-data": "split_data", "train-expert": "train_expert-r1", "report": "report"}
view = liveview.RunView("demo", ["split_data", "train_expert-r1", "update_weights-r1", "report"], tasks)
CHILD = """
import json, sys, time
from tqdm.auto import tqdm
print("[KFP Executor 2026-01-01 10:00:00,000 INFO]: Got executor_input:")
print(json.dumps({"inputs": {"parameterValues": {"run_id": "demo"}}, "outputs": {}}, indent=4))
for _ in tqdm(range(int(sys.argv[1])), desc="scoring"):
    time.sleep(0.1)
print("[%s] wrote 3 things" % sys.argv[2], flush=True)
if sys.argv[3] != "0":
    print("error: something broke in " + sys.argv[2], file=sys.stderr)
sys.exit(int(sys.argv[3]))
"""
env = {**os.environ, **liveview.tqdm_env(0.2)}


def task(name, n, rc):
    root = logging.getLogger()
    root.handlers = [logging.StreamHandler(sys.stdout)]  # as kfp.local's local_logger_context
    root.setLevel(logging.INFO)
    logging.info("Executing task \x1b[96m'%s'\x1b[0m", name)
    logging.info("Streamed logs:\n")
    with subprocess.Popen([sys.executable, "-c", CHILD, str(n), tasks[name], str(rc)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1, env=env) as p:
        for line in iter(p.stdout.readline, ""):
            print("    " + line, end="")
        rc = p.wait()
    logging.info("Task '%s' finished with status %s", name, "SUCCESS" if rc == 0 else "FAILURE")
    os.write(1, b"raw write to fd 1 by the parent\n")
    return rc


with liveview.capture(view, Path(sys.argv[1]), first_heartbeat=1.0, refresh_per_second=10):
    for name, n, rc in (("split-data", 5, 0), ("train-expert", 25, 0), ("report", 3, int(sys.argv[2]))):
        if task(name, n, rc):
            break
f = view.failed()
print("FAILED", f.key, f.log_path) if f else print("ALL DONE")
'''


def _driver(tmp_path, fail: bool = False):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return [sys.executable, str(script), str(tmp_path / "logs"), "1" if fail else "0"]


def _env():
    return {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "40"}


# --------------------------------------------------------------------------- progress records


def test_tqdm_bars_write_progress_records():
    """tqdm reads TQDM_* variables as defaults: with :func:`tqdm_env` every bar (with or without a description,
    as the HF Trainer's) writes records that :func:`parse_progress` reads."""
    code = ("import time\nfrom tqdm.auto import tqdm\nfor _ in tqdm(range(4), desc='ensemble decoding'):\n"
            "    time.sleep(0.05)\nb = tqdm(total=3, dynamic_ncols=True)\nfor _ in range(3):\n"
            "    time.sleep(0.05); b.update(1)\nb.close()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **liveview.tqdm_env(0.0)})
    assert res.returncode == 0, res.stderr
    recs = [liveview.parse_progress(x) for x in re.split(r"[\r\n]", res.stderr)]
    recs = [r for r in recs if r is not None]
    dec = [r for r in recs if r.desc == "ensemble decoding"]
    assert dec and dec[-1].n == 4 and dec[-1].total == 4 and dec[-1].rate and dec[-1].rate > 0, res.stderr
    train = [r for r in recs if r.desc == ""]
    assert train and train[-1].n == 3 and train[-1].total == 3 and train[-1].label == "training"
    mid = liveview.Progress(n=25, total=100, elapsed=10.0, rate=2.5, unit="it", desc="", seen=time.time())
    assert mid.fraction == 0.25 and 29 < mid.eta() <= 30


def test_router_splits_kfp_output_into_step_logs(tmp_path):
    view = liveview.RunView("r", ["split_data", "train_expert-r1"], {"split-data": "split_data",
                                                                     "train-expert": "train_expert-r1"})
    closed = []
    router = liveview.LogRouter(view, tmp_path, on_log_closed=closed.append)
    router.write("10:00:00.000 - INFO - Running pipeline: \x1b[95m'ensemw2s'\x1b[0m\n")
    router.write("10:00:00.001 - INFO - Executing task \x1b[96m'split-data'\x1b[0m\n    {\n        \"inputs\": {}\n")
    router.write("    [split_data] outputs already complete in s3://b/runs/r/split_data: restored, nothing recomputed\n")
    router.write("10:00:01.000 - INFO - Task \x1b[96m'split-data'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n")
    router.write("10:00:01.001 - INFO - Executing task 'train-expert'\n    ensemw2s-progress 3/12 elapsed=6.0 "
                 "rate=0.5 unit=it desc=\n    half a li")
    assert view.steps["train_expert-r1"].progress.n == 3 and view.steps["split_data"].status == "restored"
    router.write("ne\n10:00:09.000 - INFO - Task 'train-expert' finished with status FAILURE\n")
    router.close()
    assert [s.key for s in closed] == ["split_data", "train_expert-r1"]
    split_log = (tmp_path / "split_data.log").read_text()
    assert '"inputs": {}' in split_log and "\x1b" not in split_log and "train-expert" not in split_log
    train_log = (tmp_path / "train_expert-r1.log").read_text()
    assert "half a line" in train_log and "ensemw2s-progress 3/12" in train_log
    assert "Running pipeline" in (tmp_path / "kfp-local.log").read_text()
    assert view.failed().key == "train_expert-r1" and view.steps["train_expert-r1"].status == "failed"
    assert liveview.tail(tmp_path / "train_expert-r1.log")[-1].endswith("finished with status FAILURE")


# --------------------------------------------------------------------------- the display


def test_live_view_under_a_terminal(tmp_path):
    out = run_in_pty(_driver(tmp_path), env=_env())
    text = ANSI.sub("", out)
    # nothing of kfp.local or the step reaches the terminal: it is all in the step logs
    for noise in ('"inputs"', "executor_input", "Executing task", "KFP Executor", "raw write to fd 1",
                  "ensemw2s-progress", "Streamed logs"):
        assert noise not in out, noise
    logs = tmp_path / "logs"
    train_log = (logs / "train_expert-r1.log").read_text()
    assert '"inputs"' in train_log and "[train_expert-r1] wrote 3 things" in train_log
    assert "raw write to fd 1" in (logs / "kfp-local.log").read_text()
    # the lines are redrawn in place (cursor up + erase line), one line per step
    assert "\x1b[2K" in out and re.search(r"\x1b\[\d*A", out)
    states = re.findall(r"train_expert-r1\s+(pending|running|done)", text)
    assert states[0] == "pending" and states[-1] == "done" and "running" in states, states
    assert states.index("running") < len(states) - states[::-1].index("running") <= states.index("done")
    # the running step shows its own progress: a bar, n/total, ETA, and the count goes up
    counts = [int(n) for n in re.findall(r"scoring (\d+)/25 \(\d+ %\), ETA", text)]
    assert len(set(counts)) >= 3 and counts == sorted(counts), counts
    assert "━" in out
    assert "update_weights-r1" in text  # a step the run did not reach stays listed, pending
    assert text.rstrip().endswith("ALL DONE")


def test_plain_lines_when_piped(tmp_path):
    res = subprocess.run(_driver(tmp_path), capture_output=True, text=True, timeout=120, env=_env())
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "\x1b" not in out and "\r" not in out
    lines = out.strip().splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[ 1/4\] split_data\s+started", lines[0]), lines
    assert re.search(r"\[ 2/4\] train_expert-r1\s+done in \d+\.\d s$", out, re.M)
    # a long step gets a progress line (after 1 s here; 1, 2, 4, ... minutes in a run)
    assert re.search(r"train_expert-r1\s+running \d+\.\d s: scoring \d+/25 \(\d+ %\), ETA", out), out
    assert len(lines) <= 3 * 3 + 1, lines  # at most a few lines per step
    assert '"inputs"' not in out and "Executing task" not in out


def test_a_failing_step_is_named_with_its_log(tmp_path):
    res = subprocess.run(_driver(tmp_path, fail=True), capture_output=True, text=True, timeout=120, env=_env())
    out = res.stdout
    log = tmp_path / "logs" / "report.log"
    assert re.search(rf"\[ 3/4\] report\s+FAILED after \d+\.\d s \(log: {re.escape(str(log))}\)", out), out
    assert out.strip().endswith(f"FAILED report {log}")
    tail = liveview.tail(log)
    assert any("error: something broke in report" in x for x in tail), tail


def test_verbose_shows_everything_and_still_writes_logs(tmp_path):
    """``verbose``: kfp.local's output as it comes (today's behaviour), per-step logs written all the same."""
    script = tmp_path / "v.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nfrom ensemw2s import liveview\n"
        "view = liveview.RunView('v', ['split_data'], {'split-data': 'split_data'})\n"
        "with liveview.capture(view, Path(sys.argv[1]), verbose=True):\n"
        "    print(\"12:00:00.000 - INFO - Executing task 'split-data'\")\n"
        "    print('    {\\n        \"inputs\": {}')\n"
        "    print(\"12:00:01.000 - INFO - Task 'split-data' finished with status SUCCESS\")\n")
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "logs")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert '"inputs"' in res.stdout and "Executing task" in res.stdout
    assert '"inputs"' in (tmp_path / "logs" / "split_data.log").read_text()
    assert (tmp_path / "logs" / "kfp-local.log").exists()


@pytest.mark.parametrize("seconds,text", [(3.04, "3.0 s"), (65, "1m05s"), (3725, "1h02m")])
def test_fmt_seconds(seconds, text):
    assert liveview.fmt_seconds(seconds) == text


def test_a_short_terminal_folds_finished_and_pending_steps():
    """More steps than terminal lines: the finished ones fold into one line, then the pending ones at the end;
    the running step always shows."""
    from rich.console import Console

    from ensemw2s.steps import keys

    view = liveview.RunView("x", list(keys.run_steps(3)), {})
    for key in list(view.steps)[:6] + ["pseudo_label-gold"]:  # split_data, train_single, rounds 1-2
        view.steps[key].status = "done"
    view.steps["update_weights-r3"].status = "running"
    view.steps["update_weights-r3"].start = time.time()
    assert len(view.rows(40)) == 19
    rows = view.rows(6)
    assert [(kind, st.key if st else None, n) for kind, st, n in rows] == [
        ("done+", None, 7), ("pending", "train_expert-r3", 1), ("running", "update_weights-r3", 1),
        ("pending", "pseudo_label-ensemble", 1), ("pending", "train_student-ensemble", 1), ("pending+", None, 8)]
    con = Console(width=100, height=8, force_terminal=False, record=True)
    con.print(view)
    text = con.export_text()
    assert len(text.strip().splitlines()) == 7 and "7 steps done" in text and "8 more steps pending" in text
    assert re.search(r"update_weights-r3\s+running", text)
