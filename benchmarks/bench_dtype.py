"""bf16 vs fp32 on this CPU: forward, decode and LoRA SFT tokens/s, and what bf16 does to accuracy.

For each model (SmolLM2-135M-Instruct, Gemma-3-270M; both dequantised), in one fresh interpreter, a float32
copy and a bfloat16 copy (``load_causal_lm(dtype=...)``, eager attention as on every CPU run):

* **forward**: ``training.teacher_forced`` (the pipeline's scoring forward: trunk + LM head at answer
  positions) on 32 ARC-Easy train rows (prompt + answer), batch 16; tokens/s = non-padding tokens / s;
* **decode**: ``EnsembleDecoder`` K=1, greedy, 16 ARC-Easy test prompts, 16 new tokens, batch 16, EOS off;
* **LoRA SFT**: the project's loss (``WeightedTokenTrainer.compute_loss``: LM head at answer positions,
  weighted CE) + AdamW on the LoRA parameters (configs/default.yaml LoRA: r=16, all projections), batch 8 of
  ARC-Easy train rows (max_length 192), the same batches for every variant. Variants: fp32; **bf16 weights**
  (frozen base in bf16, LoRA weights and optimizer state fp32: peft's default); **bf16 autocast** (fp32
  weights, ``torch.autocast("cpu", bfloat16)``: what ``TrainingArguments(bf16=True)`` does on a CPU);

fp32 and bf16 alternate, best of ``REPS`` each (side by side in one process, so load drift hits both).

Accuracy (bf16 vs fp32 on the same questions): option log-likelihood accuracy of the base model
(``evaluation.option_logprobs``, the pipeline's ``ll`` metric) on 300 ARC-Easy test questions, the paired
difference with a 95 % bootstrap interval and the McNemar p-value, how many questions change their answer; and
decode agreement: greedy continuations (32 new tokens, EOS off) of 32 ARC-Easy test prompts, share identical
to fp32 and mean length of the common prefix.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

DEFAULT_MODELS = ["tiny-weak"] if C.QUICK else ["smollm2-135m", "gemma3-270m"]
# ENSEMW2S_BENCH_DTYPE_MODELS=qwen2.5-coder-1.5b (a comma list of asset names) measures other models; their
# results go to build/bench/bench_dtype-<names>.json so `make bench`'s own file is never overwritten
MODELS = [m for m in os.environ.get("ENSEMW2S_BENCH_DTYPE_MODELS", "").split(",") if m.strip()] or DEFAULT_MODELS
OUT_NAME = "bench_dtype" if MODELS == DEFAULT_MODELS else "bench_dtype-" + "+".join(MODELS)
REPS = 2 if C.QUICK else int(os.environ.get("ENSEMW2S_BENCH_DTYPE_REPS", "3"))
N_FWD, FWD_BATCH = (4, 2) if C.QUICK else (32, 16)
N_DEC, NEW_DEC = (2, 2) if C.QUICK else (16, 16)
SFT_BATCH, SFT_LEN, SFT_STEPS = (2, 64, 2) if C.QUICK else (8, 192, 3)
N_ACC = 8 if C.QUICK else int(os.environ.get("ENSEMW2S_BENCH_DTYPE_QUESTIONS", "300"))
N_AGREE, NEW_AGREE = (2, 4) if C.QUICK else (32, 32)
DTYPES = ("float32", "bfloat16")


def _best(fns: dict, reps: int) -> dict:
    """Best wall time of each callable, the callables alternating (fp32, bf16, fp32, ...)."""
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def child(model_name: str) -> dict:
    C.quiet_hf()
    import torch
    from bench_decode import NoEos

    from ensemw2s.config import load_config
    from ensemw2s.ensemble import EnsembleDecoder
    from ensemw2s.evaluation import option_logprobs
    from ensemw2s.modeling import cpu_bf16_feature, load_causal_lm
    from ensemw2s.stats import paired_test
    from ensemw2s.training import (
        _make_collator,
        _weighted_trainer_cls,
        _WeightedSet,
        apply_lora,
        encode_rows,
        teacher_forced,
    )

    res: dict = {"model": model_name, "threads": torch.get_num_threads(), "bf16_feature": cpu_bf16_feature()}
    models, tok = {}, None
    for dt in DTYPES:
        models[dt], tok = load_causal_lm(model_name, dtype=dt)
        models[dt].generation_config.eos_token_id = None
    res["params"] = sum(p.numel() for p in models["float32"].parameters())

    # forward (teacher-forced scoring pass)
    enc = encode_rows(tok, C.arc_rows(N_FWD), SFT_LEN)
    n_tok = sum(len(e.input_ids) for e in enc)
    fwd = {dt: (lambda m=models[dt]: teacher_forced(m, tok, enc, batch_size=FWD_BATCH)) for dt in DTYPES}
    for f in fwd.values():
        f()  # warm-up
    best = _best(fwd, REPS)
    res["forward_tok_s"] = {dt: n_tok / best[dt] for dt in DTYPES}

    # decode (K=1 ensemble decoder = the pipeline's generation path)
    prompts = C.arc_prompts(max(N_DEC, N_AGREE))
    decs = {dt: EnsembleDecoder([models[dt]], [1.0], NoEos(tok), batch_size=16) for dt in DTYPES}
    dec = {dt: (lambda d=decs[dt]: d.generate_ids(prompts[:N_DEC], NEW_DEC)) for dt in DTYPES}
    for d in decs.values():
        d.generate_ids(prompts[:2], 2)  # warm-up
    best = _best(dec, REPS)
    res["decode_tok_s"] = {dt: N_DEC * NEW_DEC / best[dt] for dt in DTYPES}

    # accuracy: option log-likelihood (the pipeline's ll metric) and decode agreement
    from ensemw2s.assets import dataset_file
    from ensemw2s.data import read_jsonl

    rows = read_jsonl(dataset_file("arc_easy", "test"))[:N_ACC]
    correct, chosen, secs = {}, {}, {}
    for dt in DTYPES:
        t0 = time.perf_counter()
        lp = option_logprobs(models[dt], tok, rows, batch_size=16)
        secs[dt] = time.perf_counter() - t0
        picks = []
        for r in rows:
            scores = [sum(o) / max(1, len(o)) for o in lp[r["id"]]]
            picks.append(max(range(len(scores)), key=scores.__getitem__))
        chosen[dt] = picks
        correct[dt] = [int(k == r["answer_index"]) for k, r in zip(picks, rows)]
    test = paired_test(correct["bfloat16"], correct["float32"])
    res["accuracy"] = {"n": len(rows), "acc": {dt: sum(correct[dt]) / len(rows) for dt in DTYPES},
                       "diff": test["diff"], "ci_low": test["ci_low"], "ci_high": test["ci_high"],
                       "mcnemar_p": test["mcnemar_p"],
                       "changed_answers": sum(a != b for a, b in zip(chosen["float32"], chosen["bfloat16"])),
                       "scoring_s": secs}
    gen = {dt: decs[dt].generate_ids(prompts[:N_AGREE], NEW_AGREE) for dt in DTYPES}

    def prefix(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    pairs = list(zip(gen["float32"], gen["bfloat16"]))
    res["decode_agreement"] = {"n": len(pairs), "new": NEW_AGREE,
                               "identical": sum(a == b for a, b in pairs) / len(pairs),
                               "mean_common_prefix": sum(prefix(a, b) for a, b in pairs) / len(pairs)}
    del decs

    # LoRA SFT steps: fp32, bf16 weights, bf16 autocast (fp32 weights)
    cfg = load_config(str(C.ROOT / "configs" / "default.yaml"))
    sft_enc = encode_rows(tok, C.arc_rows(SFT_BATCH * 4, "train"), SFT_LEN)
    collate = _make_collator(tok.pad_token_id)
    ds = _WeightedSet(sft_enc, None)
    batches = [collate([ds[i] for i in range(b * SFT_BATCH, (b + 1) * SFT_BATCH)]) for b in range(4)]
    sft_tokens = [int(b["attention_mask"].sum()) for b in batches]
    loss_fn = _weighted_trainer_cls().compute_loss
    trainer = _weighted_trainer_cls().__new__(_weighted_trainer_cls())  # compute_loss needs no Trainer state
    lora = {dt: apply_lora(models[dt], cfg.experts.lora) for dt in DTYPES}
    variants = {"float32": (lora["float32"], False), "bf16 weights": (lora["bfloat16"], False),
                "bf16 autocast": (lora["float32"], True)}
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
            for k, (m, _) in variants.items()}
    step_i = {k: 0 for k in variants}
    losses: dict = {k: [] for k in variants}

    def sft_step(name):
        model, autocast = variants[name]
        model.train()
        batch = batches[step_i[name] % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(trainer, model, batch)
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        step_i[name] += 1
        losses[name].append(float(loss))

    for name in variants:
        sft_step(name)  # warm-up
    best_step = {k: float("inf") for k in variants}
    for _ in range(SFT_STEPS):
        for name in variants:
            t0 = time.perf_counter()
            sft_step(name)
            best_step[name] = min(best_step[name], time.perf_counter() - t0)
    mean_tokens = sum(sft_tokens) / len(sft_tokens)
    res["sft_tok_s"] = {k: mean_tokens / best_step[k] for k in variants}
    res["sft_first_loss"] = {k: v[0] for k, v in losses.items()}
    res["loadavg"] = C.loadavg()
    return res


def main() -> int:
    if C.answer_as_child(__doc__, lambda spec: child(spec["model"])):
        return 0
    t_all = time.perf_counter()
    runs = []
    for name in MODELS:
        print(f"  {name} ...", flush=True)
        r = C.run_child(Path(__file__), {"model": name}, timeout=3600)
        runs.append(r)
        print(f"    forward {r['forward_tok_s']}, decode {r['decode_tok_s']}, sft {r['sft_tok_s']}, "
              f"load {r['loadavg']}", flush=True)
    rows = []
    for r in runs:
        f, d, s, a = r["forward_tok_s"], r["decode_tok_s"], r["sft_tok_s"], r["accuracy"]
        bf_sft = max(s["bf16 weights"], s["bf16 autocast"])
        rows.append([r["model"], f["float32"], f["bfloat16"], f["bfloat16"] / f["float32"],
                     d["float32"], d["bfloat16"], d["bfloat16"] / d["float32"],
                     s["float32"], s["bf16 weights"], s["bf16 autocast"], bf_sft / s["float32"]])
    print(C.table(["model", "fwd fp32", "fwd bf16", "x", "dec fp32", "dec bf16", "x", "SFT fp32",
                   "SFT bf16 w", "SFT autocast", "x (best bf16)"], rows,
                  title=f"\nbench_dtype: tokens/s, bf16 vs fp32, best of {REPS} alternating; "
                        f"{runs[0]['threads']} threads; CPU bf16 feature: {runs[0]['bf16_feature']}"))
    rows = []
    for r in runs:
        a, g = r["accuracy"], r["decode_agreement"]
        rows.append([r["model"], a["n"], a["acc"]["float32"], a["acc"]["bfloat16"],
                     f"{a['diff']:+.3f} [{a['ci_low']:+.3f}, {a['ci_high']:+.3f}]", a["mcnemar_p"],
                     a["changed_answers"], f"{g['identical']:.0%}", g["mean_common_prefix"]])
    print(C.table(["model", "questions", "ll acc fp32", "ll acc bf16", "bf16 - fp32 [95% CI]", "McNemar p",
                   "answers changed", f"decode identical ({NEW_AGREE} tok)", "common prefix"], rows,
                  title="\naccuracy: option log-likelihood on ARC-Easy test; greedy decode agreement with fp32"))
    total = time.perf_counter() - t_all
    print(f"load average at the end: {C.loadavg()} (1/5/15 min; {C.machine()['nproc']} CPUs)")
    print(f"\nbench_dtype finished in {total:.0f} s")
    print(f"results: {C.save(OUT_NAME, {'runs': runs, 'seconds': total, 'reps': REPS})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
