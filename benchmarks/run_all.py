"""``make bench``: run benchmarks 1-4 one after the other, then print one table of every ratio and target.

Each benchmark runs in its own interpreter (its printout streams through) and writes
``build/bench/<name>.json``; the summary below is computed from those files, and only from files written by
this invocation (a benchmark that failed or was skipped shows as missing, never as an old number).
``--only decode,train`` runs a subset. The GPU check (``tests/gpu/smoke.sh``) is separate: it needs a GPU.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

BENCHES = ("decode", "train", "pipeline", "scaling")


def _load(name: str, since: float) -> dict | None:
    path = C.OUT_DIR / f"bench_{name}{'.quick' if C.QUICK else ''}.json"
    if not path.is_file() or path.stat().st_mtime < since:
        return None
    return json.loads(path.read_text())


def _row(name: str, value: float | None, target: str, ok: bool | None) -> list:
    return [name, value, target, C.verdict(ok) if value is not None else "missing"]


def summary_rows(res: dict) -> list[list]:
    rows: list[list] = []
    d = res.get("decode")
    if d:
        runs = d["runs"]
        hf = runs["hf"]["tok_s"]
        for K in d["settings"]["ks"]:
            r = runs[f"ours_K{K}"]
            ratio = r["tok_s"] / (hf / K)
            rows.append(_row(f"1 decode K={K}: ours / (HF generate / K)", ratio, ">= 0.8", ratio >= 0.8))
            if r.get("decode_peak_extra") is not None:
                mem = (r["weights_bytes"] + r["decode_peak_extra"]) / (r["weights_bytes"] + r["kv_bytes"])
                rows.append(_row(f"1 decode K={K}: peak memory / (weights + KV)", mem, "<= 1.25", mem <= 1.25))
        naive = [k for k in runs if k.startswith("ref_K")]
        for key in naive:
            K = key.split("K")[1]
            ours = runs[f"ours_K{K}"]["tok_s"]
            for base, label in ((key, "naive (1 prompt, no cache)"), (f"nocache_K{K}", "naive batched, no cache")):
                if base in runs:
                    ratio = ours / runs[base]["tok_s"]
                    rows.append(_row(f"1 decode K={K}: ours / {label}", ratio, ">= 5", ratio >= 5))
        for key in (k for k in runs if k.startswith("lora_K")):
            K = key.split("K")[1]
            lo, me = runs[key], runs[f"merged16_K{K}"]
            rows.append(_row(f"1 decode K={K}: shared-base LoRA / merged models (speed)",
                             lo["tok_s"] / me["tok_s"], "report", None))
            rows.append(_row(f"1 decode K={K}: shared-base LoRA weights saved (MiB)",
                             (me["weights_bytes"] - lo["weights_bytes"]) / 2**20, "report", None))
    t = res.get("train")
    if t:
        by = {(r["model"], r["kind"]): r for r in t["runs"]}
        for (model, kind), r in by.items():
            if kind != "ours":
                continue
            ratio = r["tok_s"] / by[(model, "plain")]["tok_s"]
            rows.append(_row(f"2 train {model} LoRA: ours / plain HF Trainer (tok/s)", ratio, ">= 1.0", ratio >= 1.0))
            rows.append(_row(f"2 train {model} LoRA: roofline fraction (4N FLOP/s / fp32 matmul)",
                             r["flops_s"] / t["matmul_flops"], "report", None))
    p = res.get("pipeline")
    if p:
        s = p.get("real_run")
        if s:
            per_step = (s["wall_seconds"] - s["step_work_seconds"]) / s["steps"]
            beyond = per_step - p["startup"]["executor_step"]
            rows.append(_row(f"3 pipeline: overhead per step beyond start-up (s, {s['steps']} steps)", beyond,
                             "<= 0.2", beyond <= 0.2))
        m = p["s3_mb_s"]
        for way in ("up", "down"):
            ratio = m[f"ours_{way}"] / m[f"plain_{way}"]
            rows.append(_row(f"3 S3 {way}load: Store / boto3 defaults (MB/s)", ratio, ">= 0.9", ratio >= 0.9))
    s = res.get("scaling")
    if s:
        for axis, f in s["fits"].items():
            rows.append(_row(f"4 scaling {axis}: R^2 of a linear fit (slope {f['slope']:.2f} s/unit)", f["r2"],
                             "report", None))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {', '.join(BENCHES)}")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in BENCHES]
    if bad:
        print(f"error: --only: unknown benchmark(s) {', '.join(bad)}; allowed: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    t0, since = time.perf_counter(), time.time()
    failed, seconds = [], {}
    for name in names:
        print(f"\n== benchmarks/bench_{name}.py", flush=True)
        t = time.perf_counter()
        rc = subprocess.run([sys.executable, str(C.ROOT / "benchmarks" / f"bench_{name}.py")], cwd=C.ROOT,
                            check=False).returncode
        seconds[name] = time.perf_counter() - t
        if rc != 0:
            failed.append(f"{name} (exit {rc})")
    res = {n: _load(n, since) for n in names}
    rows = summary_rows({k: v for k, v in res.items() if v})
    for n in names:
        if res[n] is None:
            rows.append([f"bench_{n}", None, "", "missing"])
    m = C.machine()
    print(C.table(["ratio", "value", "target", "verdict"], rows,
                  title=f"\n=== make bench: every ratio (commit {m['commit']}, {m['nproc']} CPUs, {m['cpu']})"))
    print("wall per benchmark: " + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items())
          + f"; total {time.perf_counter() - t0:.0f} s ({(time.perf_counter() - t0) / 60:.1f} min)")
    if failed:
        print(f"error: benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
