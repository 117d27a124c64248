"""Tiny pipeline runs shared by the reliability tests (session-scoped: each runs at most once per session).

- ``baseline``: an undisturbed ``ensemw2s run`` of configs/tiny.yaml against the test S3 server; its logs,
  bucket and kfp-local folder are what the secrets test greps, its metrics what the others compare to;
- ``disturbed_run``: the same config and seed under another run id against a dedicated SeaweedFS, in three
  attempts: the S3 server SIGKILLed once train_expert-r1 is complete (then restarted from the same home);
  resumed and SIGTERMed while train_expert-r2 runs; resumed to the end. Every step of it was computed by
  its own attempts, so it is also the determinism test's second run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from s3_fixtures import unique_bucket

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
RUN_TIMEOUT = 900


@dataclasses.dataclass
class S3:
    endpoint: str
    access_key: str
    secret_key: str


@dataclasses.dataclass
class Run:
    run_id: str
    bucket: str
    s3: S3
    attempts: list  # [{"rc", "stdout", "stderr", "seconds"}] in order; the last one finished the run
    notes: dict = dataclasses.field(default_factory=dict)

    def store(self):
        return make_store(self.s3, self.bucket)

    @property
    def logs(self) -> str:
        return "\n".join(a["stdout"] + "\n" + a["stderr"] for a in self.attempts)

    def metrics(self, dest: Path) -> dict:
        """metrics.json without what must differ between runs: the run id and wall-clock timings."""
        st = self.store()
        st.get_dir(self.run_id, "report", "report", dest)
        metrics = json.loads((dest / "metrics.json").read_text())
        return {k: v for k, v in metrics.items() if k != "run_id" and "seconds" not in k}

    def kfp_dir(self) -> Path:
        from ensemw2s import assets

        return assets.home() / "kfp-local" / self.run_id


def make_store(s3: S3, bucket: str):
    from ensemw2s.config import StorageConfig
    from ensemw2s.storage import Store

    return Store(StorageConfig(bucket=bucket), s3.endpoint, s3.access_key, s3.secret_key, "us-east-1")


def run_cmd(run_id: str, bucket: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ensemw2s.cli",
        "run",
        "--config",
        str(TINY),
        "--set",
        f"storage.bucket={bucket}",
        "--run-id",
        run_id,
    ]


def run_env(s3: S3) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION")}
    env.update(
        S3_ENDPOINT_URL=s3.endpoint,
        AWS_ACCESS_KEY_ID=s3.access_key,
        AWS_SECRET_ACCESS_KEY=s3.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        ENSEMW2S_PROGRESS="0",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_to_end(run_id: str, bucket: str, s3: S3) -> dict:
    t0 = time.perf_counter()
    res = subprocess.run(
        run_cmd(run_id, bucket),
        cwd=REPO,
        env=run_env(s3),
        capture_output=True,
        text=True,
        check=False,
        timeout=RUN_TIMEOUT,
    )
    return {
        "rc": res.returncode,
        "stdout": res.stdout,
        "stderr": res.stderr,
        "seconds": round(time.perf_counter() - t0, 1),
    }


class Background:
    """``ensemw2s run`` in its own process group, output to files (read while it runs)."""

    def __init__(self, run_id: str, bucket: str, s3: S3, logdir: Path):
        logdir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logdir / f"{run_id}.out", logdir / f"{run_id}.err"
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")  # noqa: SIM115 - closed in wait()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            run_cmd(run_id, bucket),
            cwd=REPO,
            env=run_env(s3),
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
        )

    def wait(self, timeout: float) -> dict:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait()
            raise
        finally:
            self._out.close()
            self._err.close()
        return {
            "rc": rc,
            "stdout": self.out_path.read_text(errors="replace"),
            "stderr": self.err_path.read_text(errors="replace"),
            "seconds": round(time.perf_counter() - self.t0, 1),
        }

    def kill(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def alive(self) -> bool:
        return self.proc.poll() is None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def running_components(pid: int) -> set[str]:
    """The KFP component functions the pipeline process ``pid`` runs now, as ``name`` or ``name:round``."""
    names = set()
    for c in descendants(pid):
        with contextlib.suppress(OSError):
            cmd = (
                (Path("/proc") / str(c) / "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
            m = re.search(r"--function_to_execute\s+(\w+)", cmd)
            if m:
                r = re.search(r'"round_":\s*(\d+)', cmd)
                names.add(f"{m.group(1)}:{r.group(1)}" if r else m.group(1))
    return names


def wait_for(pred, timeout: float, what: str, proc: Background | None = None, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        if proc is not None and not proc.alive():
            pytest.fail(f"the run ended before {what}:\n{proc.err_path.read_text()[-3000:]}")
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _cleanup_local(run_id: str) -> None:
    from ensemw2s import assets

    for p in (assets.home() / "kfp-local" / run_id, assets.home() / "cache" / "runs" / run_id):
        shutil.rmtree(p, ignore_errors=True)


@pytest.fixture(scope="session")
def test_s3(s3_server) -> S3:
    return S3(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)


@pytest.fixture(scope="session")
def baseline(test_s3, tiny_assets) -> Run:
    run = Run(f"rel-base-{uuid.uuid4().hex[:8]}", unique_bucket(), test_s3, [])
    make_store(test_s3, run.bucket).check()
    run.attempts.append(run_to_end(run.run_id, run.bucket, test_s3))
    a = run.attempts[-1]
    assert a["rc"] == 0, a["stdout"][-3000:] + a["stderr"][-3000:]
    yield run
    _cleanup_local(run.run_id)


@pytest.fixture(scope="session")
def disturbed_run(tmp_path_factory, tiny_assets) -> Run:
    """One run id, three attempts, against a dedicated SeaweedFS (same config and seed as ``baseline``):

    1. storage fault: once train_expert-r1 is complete the S3 server is SIGKILLed; the run must fail by
       itself; the server is restarted from the same home (same data, same port);
    2. interrupted: the run is resumed, and its process group SIGTERMed while train_expert-r2 runs;
    3. the run is resumed again and must finish.

    After 1 and 2, every output in the bucket is checked: complete ones verify against their manifest, the
    rest are not complete. ``notes`` records what the tests assert on.
    """
    from ensemw2s import s3server
    from ensemw2s.steps.stepio import LOCAL_MARK

    home = tmp_path_factory.mktemp("s3fault")
    logs = tmp_path_factory.mktemp("disturbed-logs")
    info = s3server.serve(home=home)
    s3 = S3(info.endpoint, info.access_key, info.secret_key)
    run = Run(f"rel-dist-{uuid.uuid4().hex[:8]}", unique_bucket(), s3, [])
    st = run.store()
    st.check()
    try:
        # ---- 1. the S3 server dies mid-run
        bg = Background(run.run_id, run.bucket, s3, logs / "1")
        wait_for(
            lambda: st.is_complete(run.run_id, "train_expert-r1", "expert"),
            RUN_TIMEOUT,
            "train_expert-r1 to be complete",
            bg,
            poll=0.2,
        )
        if os.getpgid(info.pid) == info.pid:  # SIGKILL: no chance to flush or say goodbye
            os.killpg(info.pid, signal.SIGKILL)
        else:
            os.kill(info.pid, signal.SIGKILL)
        t_kill = time.perf_counter()
        try:
            first = bg.wait(timeout=300)  # must fail by itself (bounded retries), not hang
        except subprocess.TimeoutExpired:
            pytest.fail("the run hung for 300 s after the S3 server was killed")
        first["seconds_after_kill"] = round(time.perf_counter() - t_kill, 1)
        run.attempts.append(first)
        info2 = s3server.serve(home=home)  # same home: same data, same ports
        run.notes["same_endpoint"] = info2.endpoint == info.endpoint
        run.s3 = S3(info2.endpoint, info2.access_key, info2.secret_key)
        st = run.store()
        run.notes["fault_check"] = check_no_partial_complete(run, tmp_path_factory.mktemp("fault-verify"))

        # ---- 2. resumed, then SIGTERM to the whole process group while train_expert-r2 runs
        bg = Background(run.run_id, run.bucket, run.s3, logs / "2")
        wait_for(
            lambda: "train_expert:2" in running_components(bg.proc.pid),
            RUN_TIMEOUT,
            "train_expert-r2 to start",
            bg,
            poll=0.1,
        )
        time.sleep(3.0)  # well inside the step (importing torch, training)
        run.notes["expert2_complete_at_kill"] = st.is_complete(run.run_id, "train_expert-r2", "expert")
        run.notes["complete_before_term"] = sorted(
            s
            for s in st.list_steps(run.run_id)
            if any(st.is_complete(run.run_id, s, o) for o in st.list_outputs(run.run_id, s))
        )
        bg.kill(signal.SIGTERM)
        try:
            second = bg.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the run did not stop within 120 s of SIGTERM")
        run.attempts.append(second)
        deadline = time.monotonic() + 30  # nothing of the process group may linger (an orphaned step)
        while group_members(bg.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        run.notes["lingering"] = group_members(bg.proc.pid)
        run.notes["term_check"] = check_no_partial_complete(run, tmp_path_factory.mktemp("term-verify"))
        run.notes["local_marks"] = [
            {**json.loads(m.read_text()), "dir": str(m.parent)} for m in run.kfp_dir().rglob(LOCAL_MARK)
        ]

        # ---- 3. resumed to the end
        run.attempts.append(run_to_end(run.run_id, run.bucket, run.s3))
        yield run
    finally:
        s3server.stop(home)
        _cleanup_local(run.run_id)


def check_no_partial_complete(run: Run, scratch: Path) -> dict:
    """Every output of every step in the bucket: with a manifest it must be complete and download with
    every sha256 verified; without one it must not be complete. Returns {"complete": [...], "partial": [...]}
    as ``step/output`` names."""
    st = run.store()
    complete, partial = [], []
    for step in st.list_steps(run.run_id):
        for output in st.list_outputs(run.run_id, step):
            if st.exists(run.run_id, step, output, "manifest.json"):
                assert st.is_complete(run.run_id, step, output), (step, output)
                st.get_dir(run.run_id, step, output, scratch / step / output)  # verifies every sha256
                complete.append(f"{step}/{output}")
            else:
                assert not st.is_complete(run.run_id, step, output), (step, output)
                partial.append(f"{step}/{output}")
    return {"complete": complete, "partial": partial}
