"""Orchestration overhead of the local run, and S3 throughput of the storage layer vs plain boto3.

1. Interpreter start-up (median of 3 fresh interpreters): ``python -c pass``; ``import
   ensemw2s.steps.split_data``; ``import kfp.dsl.executor_main`` plus that step module (what every
   SubprocessRunner task imports before the step's own work starts).
2. kfp.local alone: a chain of no-op lightweight components (``base_image`` any string,
   ``install_kfp_package=False``) through ``SubprocessRunner(use_venv=False)``; per task = wall / tasks.
   Overhead beyond start-up = per task - start-up of ``python -c "import kfp.dsl.executor_main"``.
3. The real local run (``ensemw2s.local.run_local``, configs/tiny.yaml, kfp.local + SeaweedFS): per step =
   (runner wall - sum of the steps' own work from timing.json) / steps; beyond start-up = that - start-up of
   ``import kfp.dsl.executor_main, ensemw2s.steps.<step>``. Target <= 0.2 s per step.
4. S3: one 500 MB file through ``Store.put_dir`` / ``Store.get_dir`` (sha256 + CRC32C computed beside the
   upload, manifest; on download size + CRC32C checked while the bytes arrive, atomic rename) vs
   ``client.upload_file`` / ``client.download_file`` with boto3's default ``TransferConfig`` (no checksum),
   against a SeaweedFS started with ``ensemw2s.s3server.serve(home=<tmp>)`` (stopped at the end). Best of 5
   alternating repetitions each (loopback transfers on 2 cores vary by ±30 % run to run). Target: ours /
   plain >= 0.9.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SIZE_MB = 8 if C.QUICK else 500
REPS = 1 if C.QUICK else 5
NOOP_TASKS = 3 if C.QUICK else 8
RUN_REAL = os.environ.get("ENSEMW2S_BENCH_SKIP_REAL_RUN", "0") != "1" and not C.QUICK
MB = 1_000_000


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's (and its children's) stdout/stderr to ``path``: kfp.local echoes every task's log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def startup(code: str, reps: int = 3, **extra_env: str) -> float:
    times = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(C.ROOT / "src"), str(C.ROOT)]), **extra_env}
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=C.ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def noop_pipeline_seconds(n: int, root: Path) -> float:
    import kfp.local
    from _noop_component import chain_pipeline

    chain = chain_pipeline(n)

    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   raise_on_error=True)
    t0 = time.perf_counter()
    chain()
    return time.perf_counter() - t0


def s3_bench(tmp: Path) -> dict:
    import boto3
    from botocore.config import Config

    from ensemw2s import s3server
    from ensemw2s.config import StorageConfig
    from ensemw2s.storage import Store

    home = tmp / "s3home"
    info = s3server.serve(home=home)
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        store = Store(StorageConfig(bucket=bucket), info.endpoint, info.access_key, info.secret_key, "us-east-1")
        store.check()
        # boto3 defaults (TransferConfig(), default retries/timeouts); proxies off for loopback like the Store
        plain = boto3.session.Session(aws_access_key_id=info.access_key, aws_secret_access_key=info.secret_key,
                                      region_name="us-east-1").client(
            "s3", endpoint_url=info.endpoint, config=Config(proxies={}, s3={"addressing_style": "path"}))
        src = tmp / "artifact"
        src.mkdir()
        big = src / "weights.bin"
        with open(big, "wb") as fh:
            left = SIZE_MB * MB
            while left:
                n = min(left, 64 * MB)
                fh.write(os.urandom(n))
                left -= n
        res: dict[str, list[float]] = {"ours_up": [], "plain_up": [], "ours_down": [], "plain_down": []}
        for rep in range(REPS):
            with C.Timer() as t:
                store.put_dir(src, "bench", "s3", "artifact", producer="bench", config_hash="0")
            res["ours_up"].append(t.s)
            with C.Timer() as t:
                plain.upload_file(str(big), bucket, "plain/weights.bin")
            res["plain_up"].append(t.s)
            dest = tmp / f"down-ours-{rep}"
            with C.Timer() as t:
                store.get_dir("bench", "s3", "artifact", dest)
            res["ours_down"].append(t.s)
            plain_dest = tmp / f"down-plain-{rep}.bin"
            with C.Timer() as t:
                plain.download_file(bucket, "plain/weights.bin", str(plain_dest))
            res["plain_down"].append(t.s)
            assert (dest / "weights.bin").stat().st_size == plain_dest.stat().st_size == SIZE_MB * MB
            (dest / "weights.bin").unlink()
            plain_dest.unlink()
        store.delete_run("bench")
        plain.delete_object(Bucket=bucket, Key="plain/weights.bin")
        big.unlink()
        return {k: min(v) for k, v in res.items()} | {"all": res, "tc_ours": {
            "multipart_threshold": store.transfer_config.multipart_threshold,
            "multipart_chunksize": store.transfer_config.multipart_chunksize,
            "max_concurrency": store.transfer_config.max_concurrency}}
    finally:
        s3server.stop(home=home)


def real_run(tmp: Path) -> dict:
    """The tiny pipeline through local.run_local (kfp.local + SeaweedFS under tmp)."""
    from ensemw2s import s3server
    from ensemw2s.config import load_config
    from ensemw2s.local import run_local

    home = tmp / "s3home-run"
    info = s3server.serve(home=home)
    saved = {k: os.environ.get(k) for k in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "PYTHONPATH")}
    try:
        os.environ.update(S3_ENDPOINT_URL=info.endpoint, AWS_ACCESS_KEY_ID=info.access_key,
                          AWS_SECRET_ACCESS_KEY=info.secret_key, ENSEMW2S_PROGRESS="0")
        cfg = load_config(str(C.ROOT / "configs" / "tiny.yaml"), [f"storage.bucket=bench-{uuid.uuid4().hex[:8]}"])
        out = run_local(cfg, f"bench-{uuid.uuid4().hex[:6]}", workdir=tmp / "kfp-run")
        return out["summary"]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3server.stop(home=home)


def gaps(summary: dict) -> tuple[float, float]:
    """Median and max time between one step's end and the next step's start (timing.json stamps): the
    previous process's exit, kfp.local's bookkeeping, the next start-up and its imports before the step."""
    t = sorted(summary["timings"].values(), key=lambda v: v["start"])
    g = [b["start"] - a["end"] for a, b in zip(t, t[1:])]
    return (statistics.median(g), max(g)) if g else (float("nan"), float("nan"))


def ends(summary: dict) -> tuple[float, float]:
    """The run's own time before its first step starts (store check, lease, config and status records, kfp.local
    init and the first task's start-up) and after its last step ends (lease release, log uploads)."""
    if "started" not in summary:
        return float("nan"), float("nan")
    t = summary["timings"].values()
    return min(v["start"] for v in t) - summary["started"], summary["ended"] - max(v["end"] for v in t)


def main() -> int:
    C.quiet_hf()
    import warnings

    warnings.filterwarnings("ignore")
    t_all = time.perf_counter()
    s_py = startup("pass")
    s_step = startup("import ensemw2s.steps.split_data")
    # a lightweight component runs `_KFP_RUNTIME=true python3 -m kfp.dsl.executor_main` (skips kfp's
    # compile-time imports)
    s_kfp = startup("import kfp.dsl.executor_main", _KFP_RUNTIME="true")
    s_exec = startup("import kfp.dsl.executor_main, ensemw2s.steps.split_data", _KFP_RUNTIME="true")
    print(f"start-up: python {s_py:.2f} s, +ensemw2s step {s_step:.2f} s, kfp executor {s_kfp:.2f} s, "
          f"executor+step {s_exec:.2f} s", flush=True)
    verdicts = {}
    with tempfile.TemporaryDirectory(prefix="ensemw2s-bench-pipeline-", dir="/tmp") as tmp_s:
        tmp = Path(tmp_s)
        log = C.OUT_DIR / "bench_pipeline.kfp-local.log"
        log.unlink(missing_ok=True)
        print(f"(kfp.local task logs go to {log})", flush=True)
        with output_to(log):
            wall = noop_pipeline_seconds(NOOP_TASKS, tmp / "noop")
        per_task = wall / NOOP_TASKS
        print(f"kfp.local no-op chain: {NOOP_TASKS} tasks in {wall:.1f} s = {per_task:.2f} s per task", flush=True)
        with output_to(log):
            summary = real_run(tmp) if RUN_REAL else None
        if summary:
            print(f"tiny pipeline: {summary['steps']} steps, wall {summary['wall_seconds']} s, steps' work "
                  f"{summary['step_work_seconds']} s", flush=True)
        s3 = s3_bench(tmp)
    mbs = {k: SIZE_MB / s3[k] for k in ("ours_up", "plain_up", "ours_down", "plain_down")}

    rows = [["python -c pass", s_py, "", ""], ["import ensemw2s.steps.split_data", s_step, "", ""],
            ["import kfp.dsl.executor_main", s_kfp, "", ""],
            ["import executor_main + step (start-up)", s_exec, "", ""],
            ["kfp.local no-op task (per task)", per_task, per_task - s_kfp, "(kfp.local only)"]]
    if summary:
        per_step = (summary["wall_seconds"] - summary["step_work_seconds"]) / summary["steps"]
        beyond = per_step - s_exec
        verdicts["overhead_per_step"] = beyond <= 0.2
        rows.append([f"real tiny run, per step ({summary['steps']} steps)", per_step, beyond,
                     C.verdict(beyond <= 0.2)])
        rows.append(["  gaps between steps: median / max", gaps(summary)[0], gaps(summary)[1], ""])
        rows.append(["  before the first step / after the last", ends(summary)[0], ends(summary)[1], ""])
    print(C.table(["orchestration", "seconds", "beyond start-up", "<= 0.2 s"], rows,
                  title="\nbench_pipeline: per-step orchestration overhead"))
    up, down = mbs["ours_up"] / mbs["plain_up"], mbs["ours_down"] / mbs["plain_down"]
    verdicts["s3_upload"], verdicts["s3_download"] = up >= 0.9, down >= 0.9
    print(C.table([f"S3 {SIZE_MB} MB", "Store MB/s", "boto3 default MB/s", "ratio", ">= 0.9"],
                  [["upload (put_dir, +sha256 +crc32c)", mbs["ours_up"], mbs["plain_up"], up, C.verdict(up >= 0.9)],
                   ["download (get_dir, +crc32c verify)", mbs["ours_down"], mbs["plain_down"], down,
                    C.verdict(down >= 0.9)]],
                  title=f"\nS3 throughput vs plain boto3 (SeaweedFS on 127.0.0.1; Store TransferConfig "
                        f"{s3['tc_ours']})"))
    total = time.perf_counter() - t_all
    print(f"load average at the end: {C.loadavg()} (1/5/15 min; {C.machine()['nproc']} CPUs)")
    print(f"\nbench_pipeline finished in {total:.0f} s; targets: "
          + ", ".join(f"{k} {C.verdict(v)}" for k, v in verdicts.items()))
    payload = {"startup": {"python": s_py, "step": s_step, "kfp_executor": s_kfp, "executor_step": s_exec},
               "noop": {"tasks": NOOP_TASKS, "wall": wall, "per_task": per_task}, "real_run": summary,
               "s3": s3, "s3_mb_s": mbs, "verdicts": verdicts, "seconds": total}
    print(f"results: {C.save('bench_pipeline', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
