"""``make bench``: run every benchmark one after the other, then print one table of every ratio and target.

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

BENCHES = ("decode", "scoring", "train", "pipeline", "scaling", "dtype")


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
        kn = d["settings"].get("k_naive", 3)
        for K in d["settings"]["ks"]:
            st, me = runs[f"stacked_K{K}"], runs[f"merged_K{K}"]
            ratio = st["tok_s"] / hf
            rows.append(_row(f"1 decode K={K}: stacked LoRA / single-model HF generate", ratio,
                             ">= 0.5" if K == kn else "report", ratio >= 0.5 if K == kn else None))
            rows.append(_row(f"1 decode K={K}: stacked LoRA / today's decoder (K merged models)",
                             st["tok_s"] / me["tok_s"], "report", None))
            if "same_ids_as_merged" in st:
                rows.append(_row(f"1 decode K={K}: stacked token ids = K merged models' (share of prompts)",
                                 st["same_ids_as_merged"], "= 1", st["same_ids_as_merged"] == 1.0))
            if st.get("decode_peak_extra") is not None:
                mem = (st["weights_bytes"] + st["decode_peak_extra"]) / (st["weights_bytes"] + st["kv_bytes"])
                rows.append(_row(f"1 decode K={K}: stacked peak memory / (base + K adapters + KV)", mem,
                                 "<= 1.25", mem <= 1.25))
        for K in d["settings"]["ks"]:
            ratio = runs[f"merged_K{K}"]["tok_s"] / (hf / K)
            rows.append(_row(f"1 decode K={K}: K merged models / (HF generate / K)", ratio, ">= 0.8", ratio >= 0.8))
        st = runs[f"stacked_K{kn}"]
        if f"hfrows_K{kn}" in runs:
            rows.append(_row(f"1 decode K={kn}: stacked / (HF generate over the stacked rows / K)",
                             st["tok_s"] / (runs[f"hfrows_K{kn}"]["tok_s"] / kn), "report", None))
        if f"switch_K{kn}" in runs:
            rows.append(_row(f"1 decode K={kn}: stacked / today's switch-adapter LoRA decoder",
                             st["tok_s"] / runs[f"switch_K{kn}"]["tok_s"], "report", None))
            rows.append(_row(f"1 decode K={kn}: stacked token ids = switch decoder's (share)",
                             st["same_ids_as_switch"], "= 1", st["same_ids_as_switch"] == 1.0))
        if f"stackedpeft_K{kn}" in runs:
            rows.append(_row(f"1 decode K={kn}: our grouped LoRA matmul / peft mixed batches",
                             st["tok_s"] / runs[f"stackedpeft_K{kn}"]["tok_s"], "report", None))
        for key, label in ((f"ref_K{kn}", "naive (1 prompt, no cache)"), (f"nocache_K{kn}", "naive batched, no cache")):
            if key in runs:
                ratio = runs[f"merged_K{kn}"]["tok_s"] / runs[key]["tok_s"]
                rows.append(_row(f"1 decode K={kn}: ours / {label}", ratio, ">= 5", ratio >= 5))
    sc = res.get("scoring")
    if sc:
        k = sc["runs"]["float32"]["K"]
        for r in sc["rows"]:
            exact = r["dtype"] == "float32"
            if exact and r["way"] == "alone":
                continue  # the reference
            label = f"1 option scoring K={k} {r['dtype']}: {r['way']}"
            if r["way"] != "alone":
                rows.append(_row(f"{label} / one expert at a time (questions/s)", r["vs_alone"], "report", None))
            # fp32: stacked is the same arithmetic (1e-5); merging rounds W + s B A to fp32 (1e-4); bf16: report
            bound = (1e-5 if r["way"] == "stacked" else 1e-4) if exact else None
            rows.append(_row(f"{label} max |logp - fp32 one at a time|", r["max_diff_vs_fp32_alone"],
                             f"<= {bound:g}" if bound else "report",
                             r["max_diff_vs_fp32_alone"] <= bound if bound else None))
            if not exact:
                rows.append(_row(f"{label} answers changed vs fp32 (of {r['answers']})",
                                 float(r["answers_changed_vs_fp32_alone"]), "report", None))
            if r["weight_drift_after_unmerge"] is not None:
                rows.append(_row(f"{label}: base weights restored after (max |W - W0|)",
                                 r["weight_drift_after_unmerge"], "= 0", r["weight_drift_after_unmerge"] == 0))
    dt = res.get("dtype")
    if dt:
        for r in dt["runs"]:
            m = r["model"]
            for what in ("forward", "decode"):
                v = r[f"{what}_tok_s"]
                ratio = v["bfloat16"] / v["float32"]
                rows.append(_row(f"5 bf16 {m} {what}: bf16 / fp32 (tok/s)", ratio, ">= 1.3 to adopt", ratio >= 1.3))
            s = r["sft_tok_s"]
            ratio = max(s["bf16 weights"], s["bf16 autocast"]) / s["float32"]
            rows.append(_row(f"5 bf16 {m} LoRA SFT: best bf16 / fp32 (tok/s)", ratio, ">= 1.3 to adopt", ratio >= 1.3))
            a = r["accuracy"]
            rows.append(_row(f"5 bf16 {m} ll accuracy bf16 - fp32 ({a['n']} q, McNemar p {a['mcnemar_p']:.2f})",
                             a["diff"], "within noise", a["ci_low"] <= 0 <= a["ci_high"]))
            rows.append(_row(f"5 bf16 {m} greedy decode identical to fp32 (share of prompts)",
                             r["decode_agreement"]["identical"], "report", None))
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
    ap.add_argument("--no-run", action="store_true",
                    help="run nothing: the table from the result files already in build/bench (each with its date)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in BENCHES]
    if bad:
        print(f"error: --only: unknown benchmark(s) {', '.join(bad)}; allowed: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    t0, since = time.perf_counter(), time.time()
    failed, seconds = [], {}
    if args.no_run:
        since = 0.0
        names_run: list[str] = []
    else:
        names_run = names
    for name in names_run:
        print(f"\n== benchmarks/bench_{name}.py", flush=True)
        t = time.perf_counter()
        rc = subprocess.run([sys.executable, str(C.ROOT / "benchmarks" / f"bench_{name}.py")], cwd=C.ROOT,
                            check=False).returncode
        seconds[name] = time.perf_counter() - t
        if rc != 0:
            failed.append(f"{name} (exit {rc})")
    res = {n: _load(n, since) for n in names}
    if args.no_run:
        for n, r in res.items():
            if r:
                print(f"bench_{n}: {r['date']}, commit {r['machine']['commit']}, load {r['machine']['loadavg']}")
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
