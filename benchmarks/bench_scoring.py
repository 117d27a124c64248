"""Option scoring of K LoRA experts of one base: which way to run it, per dtype (the per-call choice of
``members.option_logprobs_by_round``).

K = 3 LoRA experts of SmolLM2-135M-Instruct (dequantised, eager attention as on every CPU run) score the options
of ARC-Easy test questions (``evaluation.option_logprobs``, batch 16: the pipeline's ``ll`` scoring of
``evaluate``, of round selection on easy_val and of options-mode pseudo-labels), three ways, on ONE peft model
holding the K adapters over one base:

* **alone**: one forward per expert with its adapter active (peft's own LoRA path);
* **stacked**: all K experts in one forward (``modeling.MultiAdapter``: every batch K times, block k through
  adapter k);
* **merged**: one forward per expert with its adapter merged into the base weights
  (``modeling.merged_adapter``: peft's ``merge_adapter``, then ``unmerge_adapter`` and the base weights written
  back from a copy): no LoRA term in the forward.

Each way in float32 and in bfloat16 (a fresh interpreter per dtype, after a warm-up; with
``ENSEMW2S_BENCH_SCORING_REPS=n`` the ways alternate n times, best of n).
Accuracy against float32 ``alone`` (the reference: unmerged, full precision): largest |difference| of the
token log-probs, and how many per-expert answers (length-normalised log-likelihood choice, one per expert
per question) change. Merging in bf16 rounds the LoRA update into bf16 weights (peft's unmerge alone then
leaves the base up to 0.004 off: measured 2026-12-01, hence the copy); the largest |W - W0| over the base's
weights after every expert has been merged and restored is reported too (it must be 0).

Adapters: random (r=16, all projections, lora_B ~ N(0, 0.0022): the spread of lora_B in the experts the
default pipeline trains, measured on a ``make run`` of 2026-12-01), or real ones:
``ENSEMW2S_BENCH_SCORING_ADAPTERS=dir1,dir2,dir3`` (LoRA adapter folders of SmolLM2-135M, e.g. a run's
``train-expert*/expert.files/model``; results then go to build/bench/bench_scoring-real.json).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

MODEL = "smollm2-135m"
K = 2 if C.QUICK else 3
N_SCORE = 4 if C.QUICK else 64
BATCH = 16
REPS = 1 if C.QUICK else int(os.environ.get("ENSEMW2S_BENCH_SCORING_REPS", "1"))  # 2: the runs in docs §1
LORA_STD = 0.0022
DTYPES = ("float32", "bfloat16")
WAYS = ("alone", "stacked", "merged")
REAL = [d for d in os.environ.get("ENSEMW2S_BENCH_SCORING_ADAPTERS", "").split(",") if d.strip()]
OUT_NAME = "bench_scoring-real" if REAL else "bench_scoring"


def child(spec: dict) -> dict:
    C.quiet_hf()
    import torch

    from ensemw2s.evaluation import option_logprobs
    from ensemw2s.modeling import MultiAdapter, load_causal_lm, load_lora_adapters, merged_adapter

    t0 = time.perf_counter()
    base, tok = load_causal_lm(MODEL, dtype=spec["dtype"])
    names = [f"e{k}" for k in range(len(spec["adapters"]))]
    model = load_lora_adapters(base, spec["adapters"], names)
    multi = MultiAdapter(model, names)
    load_s = time.perf_counter() - t0
    rows = C.arc_rows(spec["n"], "test")
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("base_layer.weight")}

    def alone(rs):
        out = []
        for name in names:
            model.set_adapter(name)
            out.append(option_logprobs(model, tok, rs, batch_size=BATCH))
        return out

    def stacked(rs):
        return option_logprobs(model, tok, rs, batch_size=BATCH, adapters=multi)

    def merged(rs):
        out = []
        for name in names:
            with merged_adapter(model, name):
                out.append(option_logprobs(model, tok, rs, batch_size=BATCH))
        return out

    ways = {"alone": alone, "stacked": stacked, "merged": merged}
    for fn in ways.values():
        fn(rows[:2])  # warm-up
    drift = max(float((p.detach() - w0[n]).abs().max()) for n, p in model.named_parameters() if n in w0)
    best, lps = {w: float("inf") for w in ways}, {}
    for _ in range(spec["reps"]):
        for w, fn in ways.items():
            t = time.perf_counter()
            lps[w] = fn(rows)
            best[w] = min(best[w], time.perf_counter() - t)
    return {"dtype": spec["dtype"], "K": len(names), "n": len(rows), "load_s": load_s, "seconds": best,
            "questions_s": {w: len(rows) / s for w, s in best.items()}, "weight_drift_after_unmerge": drift,
            "threads": torch.get_num_threads(),
            "lp": {w: [[lp[r["id"]] for r in rows] for lp in v] for w, v in lps.items()},
            "answers": [r["answer_index"] for r in rows]}


def _choices(lp_questions) -> list[int]:
    """Per-question length-normalised log-likelihood choice of one expert."""
    return [max(range(len(q)), key=lambda k: sum(q[k]) / max(1, len(q[k]))) for q in lp_questions]


def _max_diff(a, b) -> float:
    """Largest |difference| of two experts' token log-probs ([question][option][token])."""
    return max((abs(x - y) for qa, qb in zip(a, b) for oa, ob in zip(qa, qb) for x, y in zip(oa, ob)), default=0.0)


def compare(runs: dict) -> list[dict]:
    """One row per (dtype, way): speed against ``alone`` in the same dtype, accuracy against fp32 ``alone``."""
    ref = runs["float32"]["lp"]["alone"]
    ref_choice = [_choices(e) for e in ref]
    answers = runs["float32"]["answers"]
    out = []
    for dt, r in runs.items():
        for w in WAYS:
            lp = r["lp"][w]
            choice = [_choices(e) for e in lp]
            out.append({
                "dtype": dt, "way": w, "questions_s": r["questions_s"][w],
                "vs_alone": r["questions_s"][w] / r["questions_s"]["alone"],
                "vs_fp32_alone": r["questions_s"][w] / runs["float32"]["questions_s"]["alone"],
                "max_diff_vs_same_dtype_alone": max(_max_diff(a, b) for a, b in zip(r["lp"]["alone"], lp)),
                "max_diff_vs_fp32_alone": max(_max_diff(a, b) for a, b in zip(ref, lp)),
                "answers_changed_vs_fp32_alone": sum(x != y for ce, cr in zip(choice, ref_choice)
                                                     for x, y in zip(ce, cr)),
                "answers": len(answers) * len(lp),
                "accuracy": sum(c == a for ce in choice for c, a in zip(ce, answers)) / (len(answers) * len(lp)),
                "weight_drift_after_unmerge": r["weight_drift_after_unmerge"] if w == "merged" else None})
    return out


def main() -> int:
    if C.answer_as_child(__doc__, child):
        return 0
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ensemw2s-bench-scoring-") as tmp:
        if REAL:
            adapters, source = REAL, f"real adapters {REAL}"
        else:
            print(f"making {K} random LoRA adapters of {MODEL} ...", flush=True)
            adapters = C.random_lora_adapters(MODEL, Path(tmp), K, LORA_STD, seed=200)
            source = f"random adapters (lora_B ~ N(0, {LORA_STD}))"
        runs = {}
        for dt in DTYPES:
            runs[dt] = C.run_child(Path(__file__), {"dtype": dt, "adapters": adapters, "n": N_SCORE, "reps": REPS})
            print(f"  {dt}: " + ", ".join(f"{w} {runs[dt]['questions_s'][w]:.2f} q/s" for w in WAYS)
                  + f" (load {runs[dt]['load_s']:.1f} s)", flush=True)
    rows = compare(runs)
    k, n = runs["float32"]["K"], runs["float32"]["n"]
    print(C.table(["dtype", "way", "questions/s", "/ alone (same dtype)", "/ fp32 alone", "max |d logp| vs fp32 alone",
                   "answers changed", "ll accuracy", "base |W - W0| after"],
                  [[r["dtype"], r["way"], r["questions_s"], r["vs_alone"], r["vs_fp32_alone"],
                    r["max_diff_vs_fp32_alone"], f"{r['answers_changed_vs_fp32_alone']}/{r['answers']}", r["accuracy"],
                    "" if r["weight_drift_after_unmerge"] is None else r["weight_drift_after_unmerge"]] for r in rows],
                  title=f"\nbench_scoring: option scoring of {n} ARC-Easy test questions by {k} LoRA experts of {MODEL} "
                        f"(batch {BATCH}, best of {REPS}, {runs['float32']['threads']} threads; {source})"))
    total = time.perf_counter() - t_all
    print(f"load average at the end: {C.loadavg()} (1/5/15 min; {C.machine()['nproc']} CPUs)")
    print(f"\nbench_scoring finished in {total:.0f} s")
    for r in runs.values():
        r.pop("lp")
    print(f"results: {C.save(OUT_NAME, {'runs': runs, 'rows': rows, 'source': source, 'seconds': total})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
