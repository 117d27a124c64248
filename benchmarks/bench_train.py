"""Expert SFT throughput: the project's Trainer subclass (LM head only at answer positions, per-token weighted
loss) vs a plain HF ``Trainer`` (labels with -100 on prompt and padding, standard causal-LM loss, full
logits), same model, LoRA settings (configs/default.yaml: r=16, alpha=32, all projections), data (ARC-Easy
train rows, ``encode_rows`` with max_length 192), batch (8), seed and number of steps.

tokens/s counts the non-padding tokens of the timed steps (the first step is a warm-up and is not timed).
Model FLOPs: LoRA = 4 * N * tokens (forward 2N, backward through the activations 2N; the frozen weights get
no weight gradient; N = the base model's parameters; the LoRA matrices and attention are left out), full
fine-tune = 6 * N * tokens. The same nominal formula is used for both trainers (ours does fewer real FLOPs:
its LM head runs on answer tokens only), so the FLOP/s ratio equals the tokens/s ratio. Roofline fraction =
achieved FLOP/s / the machine's fp32 matmul FLOP/s (a torch.matmul loop, same thread count).
Also: length bucketing (``train_sampling_strategy='group_by_length'``) for the project's trainer on SmolLM2, and the padding share.
"""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

BATCH, MAX_LEN = 8, 192
WARMUP = 1
MODELS = [("smollm2-135m", 1 if C.QUICK else 6), ("gemma3-270m", 1 if C.QUICK else 4)]
if C.QUICK:
    MODELS = [("tiny-weak", 1)]


def matmul_flops(n: int = 1024, seconds: float = 2.0) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        iters += 1
    return 2 * n ** 3 * iters / (time.perf_counter() - t0)


class _PlainSet:
    def __init__(self, encoded):
        self.items = encoded

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        e = self.items[i]
        return {"input_ids": e.input_ids, "answer_start": e.answer_start}


def _plain_collator(pad_id: int):
    import torch

    from ensemw2s.training import pad_batch

    def collate(features):
        ids, mask = pad_batch([f["input_ids"] for f in features], pad_id)
        labels = torch.full(ids.shape, -100, dtype=torch.long)
        for i, f in enumerate(features):
            s, n = f["answer_start"], len(f["input_ids"])
            labels[i, s:n] = ids[i, s:n]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def train_once(model_name: str, kind: str, steps: int, *, group_by_length: bool = False) -> dict:
    """kind: 'ours' (WeightedTokenTrainer) or 'plain' (transformers.Trainer, full logits)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    from ensemw2s.config import load_config
    from ensemw2s.modeling import load_causal_lm
    from ensemw2s.training import (
        _make_collator,
        _weighted_trainer_cls,
        _WeightedSet,
        apply_lora,
        encode_rows,
        length_grouping_args,
    )

    cfg = load_config(str(C.ROOT / "configs" / "default.yaml"))
    set_seed(0)
    model, tok = load_causal_lm(model_name)
    n_base = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    vocab_d = emb.numel()  # V x d: the LM head's matmul size (tied or not)
    n_body = n_base - vocab_d - (0 if model.get_output_embeddings().weight is emb
                                 else model.get_output_embeddings().weight.numel())
    model.train()
    model = apply_lora(model, cfg.experts.lora)
    total = WARMUP + steps
    enc = encode_rows(tok, C.arc_rows(BATCH * total), MAX_LEN)
    batches: list[tuple[int, int, int]] = []  # (real tokens, padded tokens, LM-head positions) per batch

    def counting(collate):
        def fn(features):
            out = collate(features)
            head = (int(out["answer_mask"][:, 1:].sum()) if "answer_mask" in out  # ours: answer positions only
                    else int(out["input_ids"].numel()))  # plain: logits at every (padded) position
            batches.append((int(out["attention_mask"].sum()), int(out["attention_mask"].numel()), head))
            return out
        return fn

    if kind == "ours":
        ds, collate, cls = _WeightedSet(enc, None), _make_collator(tok.pad_token_id), _weighted_trainer_cls()
    else:
        ds, collate, cls = _PlainSet(enc), _plain_collator(tok.pad_token_id), Trainer
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == WARMUP:
                marks["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            marks["t1"] = time.perf_counter()

    import tempfile

    bucketing = length_grouping_args() if group_by_length else {}
    with tempfile.TemporaryDirectory(prefix="ensemw2s-bench-train-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=BATCH, learning_rate=cfg.experts.train.lr,
            max_steps=total, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
            seed=0, data_seed=0, dataloader_num_workers=0, remove_unused_columns=False, use_cpu=True,
            optim="adamw_torch", disable_tqdm=True, **bucketing)
        trainer = cls(model=model, args=args, train_dataset=ds, data_collator=counting(collate),
                      callbacks=[Clock()])
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    seconds = marks["t1"] - marks["t0"]
    timed = batches[WARMUP:total]
    tokens = sum(b[0] for b in timed)
    padded = sum(b[1] for b in timed)
    head = sum(b[2] for b in timed)
    executed = 4 * n_body * padded + 4 * vocab_d * head  # the LoRA rule on what actually runs
    del trainer, model
    gc.collect()
    return {"model": model_name, "kind": kind + ("+bucketing" if group_by_length else ""), "steps": steps,
            "seconds": seconds, "tokens": tokens, "padded_tokens": padded, "tok_s": tokens / seconds,
            "step_s": seconds / steps, "n_base": n_base, "n_body": n_body, "vocab_d": vocab_d,
            "head_positions": head, "flops_s": 4 * n_base * tokens / seconds, "executed_flops_s": executed / seconds,
            "first_loss": losses[0] if losses else None, "threads": torch.get_num_threads()}


def main() -> int:
    C.quiet_hf()
    t_all = time.perf_counter()
    peak = matmul_flops(seconds=0.5 if C.QUICK else 2.0)
    print(f"fp32 matmul (1024^3 loop): {peak / 1e9:.1f} GFLOP/s", flush=True)
    runs = []
    for name, steps in MODELS:
        for kind in ("ours", "plain"):
            r = train_once(name, kind, steps)
            runs.append(r)
            print(f"  {name:14s} {r['kind']:16s} {r['tok_s']:7.1f} tok/s  {r['step_s']:5.2f} s/step  first loss "
                  f"{r['first_loss']:.4f}", flush=True)
        if name.startswith("smollm2"):
            r = train_once(name, "ours", steps, group_by_length=True)
            runs.append(r)
            print(f"  {name:14s} {r['kind']:16s} {r['tok_s']:7.1f} tok/s  {r['step_s']:5.2f} s/step", flush=True)

    rows, verdicts = [], {}
    by = {(r["model"], r["kind"]): r for r in runs}
    for name, _ in MODELS:
        ours, plain = by[(name, "ours")], by[(name, "plain")]
        ratio = ours["tok_s"] / plain["tok_s"]
        verdicts[name] = ratio >= 1.0
        for r in (ours, plain):
            rows.append([f"{name} LoRA {r['kind']}", r["tok_s"], r["step_s"], r["flops_s"] / 1e9,
                         r["flops_s"] / peak, r["executed_flops_s"] / peak, 1 - r["tokens"] / r["padded_tokens"],
                         f"{ratio:.2f} {C.verdict(ratio >= 1.0)}" if r is ours else "(baseline)"])
        b = by.get((name, "ours+bucketing"))
        if b:
            rows.append([f"{name} LoRA ours+bucketing", b["tok_s"], b["step_s"], b["flops_s"] / 1e9,
                         b["flops_s"] / peak, b["executed_flops_s"] / peak, 1 - b["tokens"] / b["padded_tokens"],
                         f"{b['tok_s'] / ours['tok_s']:.2f} x ours"])
    print(C.table(["run", "tok/s", "s/step", "GFLOP/s (4N)", "roofline 4N", "roofline exec", "padding",
                   "ours/plain >= 1.0"], rows,
                  title=f"\nbench_train: batch {BATCH}, max_length {MAX_LEN}, {runs[0]['threads']} threads; fp32 "
                        f"matmul peak {peak / 1e9:.1f} GFLOP/s.\nroofline 4N = 4 N tokens / s / peak (LoRA model FLOPs, "
                        "N = all base parameters, non-padding tokens); roofline exec = (4 N_body x padded tokens + 4 V d x "
                        "LM-head positions) / s / peak (what runs: the embedding lookup is free, ours applies the head "
                        "at answer positions only, plain at every padded position)"))
    for name, _ in MODELS:
        o, p = by[(name, "ours")], by[(name, "plain")]
        print(f"{name}: first-step loss ours {o['first_loss']:.4f} vs plain {p['first_loss']:.4f} (same tokens, "
              "same mean cross-entropy: they should agree)")
    total = time.perf_counter() - t_all
    print(f"load average at the end: {C.loadavg()} (1/5/15 min; {C.machine()['nproc']} CPUs)")
    print(f"\nbench_train finished in {total:.0f} s; targets: "
          + ", ".join(f"{k} {C.verdict(v)}" for k, v in verdicts.items()))
    print(f"results: {C.save('bench_train', {'runs': runs, 'matmul_flops': peak, 'verdicts': verdicts, 'seconds': total})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
