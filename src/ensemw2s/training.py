"""Training: tokenising question/answer pairs, SFT with per-token loss weights, teacher-forced passes.

Training uses the HF ``Trainer`` with one override: the loss is a per-token weighted cross-entropy on the
answer tokens only, and the LM head is applied only at those positions (Gemma's vocabulary has 262k entries;
projecting every prompt position would dominate the step time).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ensemw2s.data import format_prompt, format_target
from ensemw2s.errors import ModelError, TrainingError
from ensemw2s.modeling import decoder_parts, load_causal_lm, resolve_dtype, save_model

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    id: str
    input_ids: list  # prompt + answer (+ EOS)
    answer_start: int  # index of the first answer token in input_ids

    @property
    def n_answer(self) -> int:
        return len(self.input_ids) - self.answer_start


def encode_pair(tok, prompt: str, answer: str, max_length: int, *, add_eos: bool = True) -> tuple[list, int]:
    """Token ids of prompt + answer. The prompt uses the tokenizer's special tokens (Gemma's BOS), the
    answer none (a BOS inside the sequence wrecks Gemma's accuracy). Long prompts are cut from the left."""
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    a = tok(format_target(answer), add_special_tokens=False)["input_ids"]
    if add_eos and tok.eos_token_id is not None:
        a = a + [tok.eos_token_id]
    a = a[: max(1, max_length // 2)]
    room = max_length - len(a)
    if len(p) > room:
        keep_bos = tok.bos_token_id is not None and p[0] == tok.bos_token_id
        p = [p[0]] + p[len(p) - room + 1:] if keep_bos else p[len(p) - room:]
    return p + a, len(p)


def encode_rows(tok, rows: Sequence[dict], max_length: int, answer_key: str = "answer") -> list[Encoded]:
    out = []
    for r in rows:
        ids, start = encode_pair(tok, format_prompt(r), r[answer_key], max_length)
        out.append(Encoded(r["id"], ids, start))
    return out


def pad_batch(seqs: Sequence[list], pad_id: int, *, left: bool = False):
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if left:
            ids[i, n - len(s):] = torch.tensor(s)
            mask[i, n - len(s):] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
    return ids, mask


# --------------------------------------------------------------------------- answer-position logits


def logits_at(model, input_ids, attention_mask, positions):
    """Logits predicting the token at each (row, col) in ``positions`` (a bool mask over input_ids)."""
    import torch

    trunk, head, cap = decoder_parts(model)
    pos = torch.cumsum(attention_mask, -1) - 1
    pos = pos.clamp_min(0)
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state
    # the logit for token at column c comes from the hidden state at column c - 1
    sel = positions[:, 1:]
    h = hidden[:, :-1][sel]
    logits = head(h).float()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, input_ids[:, 1:][sel]


def teacher_forced(model, tok, encoded: Sequence[Encoded], batch_size: int = 16, *, desc: str = "scoring",
                   need_logprobs: bool = True) -> dict[str, dict]:
    """One no-grad pass: per answer token, whether the argmax is wrong and the gold token's log-prob."""
    import torch

    dev = next(model.parameters()).device
    out: dict[str, dict] = {}
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    with torch.inference_mode():
        for b in progress_bar(range(0, len(order), batch_size), desc):
            batch = [encoded[i] for i in order[b: b + batch_size]]
            ids, mask = pad_batch([e.input_ids for e in batch], tok.pad_token_id)
            positions = torch.zeros_like(mask, dtype=torch.bool)
            for i, e in enumerate(batch):
                positions[i, e.answer_start: len(e.input_ids)] = True
            logits, gold = logits_at(model, ids.to(dev), mask.to(dev), positions.to(dev))
            wrong = (logits.argmax(-1) != gold).cpu().numpy().astype(np.int8)
            lp = torch.log_softmax(logits, -1).gather(1, gold[:, None])[:, 0].cpu().numpy()
            k = 0
            for e in batch:
                n = e.n_answer
                out[e.id] = {"wrong": wrong[k: k + n].tolist(), "logprob": lp[k: k + n].astype(float).tolist()}
                k += n
    return out


def progress_bar(it, desc):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False, disable=os.environ.get("ENSEMW2S_PROGRESS", "1") == "0")


# --------------------------------------------------------------------------- training


class _WeightedSet:
    def __init__(self, encoded: Sequence[Encoded], token_weights: Optional[dict]):
        self.items = []
        for e in encoded:
            w = token_weights[e.id] if token_weights is not None else [1.0] * e.n_answer
            if len(w) != e.n_answer:
                raise ValueError(f"row {e.id!r}: {len(w)} token weights for {e.n_answer} answer tokens "
                                 "(weights were made with another tokenizer or max_length?)")
            if sum(w) > 0:
                self.items.append((e, w))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        e, w = self.items[i]
        return {"input_ids": e.input_ids, "answer_start": e.answer_start, "weights": w}


def _make_collator(pad_id: int):
    import torch

    def collate(features):
        ids, mask = pad_batch([f["input_ids"] for f in features], pad_id)
        weights = torch.zeros(ids.shape, dtype=torch.float32)
        answer = torch.zeros(ids.shape, dtype=torch.bool)
        for i, f in enumerate(features):
            s, n = f["answer_start"], len(f["input_ids"])
            weights[i, s:n] = torch.tensor(f["weights"], dtype=torch.float32)
            answer[i, s:n] = True
        return {"input_ids": ids, "attention_mask": mask, "token_weights": weights, "answer_mask": answer}

    return collate


def _weighted_trainer_cls(desc: str = "train"):
    import torch
    from transformers import Trainer

    class WeightedTokenTrainer(Trainer):
        """Trainer whose loss is sum_j w_j CE_j / (#answer tokens) over the answer tokens of the batch; a
        non-finite loss stops training (:class:`TrainingError`) instead of saving a NaN model."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            answer = inputs["answer_mask"]
            logits, gold = logits_at(model, inputs["input_ids"], inputs["attention_mask"], answer)
            w = inputs["token_weights"][:, 1:][answer[:, 1:]]
            ce = torch.nn.functional.cross_entropy(logits, gold, reduction="none")
            loss = (w * ce).sum() / answer[:, 1:].sum().clamp_min(1)
            if not torch.isfinite(loss.detach()):  # one host sync per micro-batch: negligible next to a step
                raise TrainingError(
                    f"{desc}: the training loss is {loss.item()} at optimizer step {self.state.global_step + 1} of "
                    f"{self.state.max_steps} (learning rate {self.args.learning_rate:g}); the model diverged and "
                    "nothing was saved; lower the section's train.lr (or check the data)")
            return (loss, None) if return_outputs else loss

    return WeightedTokenTrainer


def apply_lora(model, lora_cfg):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    targets = [t for t in lora_cfg.target_modules if t in names]
    if not targets:
        raise ModelError(f"lora.target_modules {lora_cfg.target_modules} match no module of "
                         f"{type(model).__name__}")
    top = {}
    if lora_cfg.layers:
        n_layers = int(model.config.num_hidden_layers)
        if lora_cfg.layers > n_layers:
            raise ModelError(f"lora.layers: {lora_cfg.layers} is out of range; {type(model).__name__} has "
                             f"{n_layers} decoder layers (use 1..{n_layers}, or 0 for all)")
        top = {"layers_to_transform": list(range(n_layers - lora_cfg.layers, n_layers))}
    pcfg = PeftLoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                          target_modules=targets, task_type="CAUSAL_LM", **top)
    return get_peft_model(model, pcfg)


def length_grouping_args() -> dict:
    """TrainingArguments keywords for length-grouped batches (transformers 5: train_sampling_strategy; 4.x:
    group_by_length)."""
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields else {
        "group_by_length": True}


def sft_precision(dtype: Optional[str], *, lora: bool, cuda: bool) -> tuple[Optional[str], bool]:
    """(dtype to load the weights in, bf16 autocast on?) for SFT under ``resources.dtype`` = ``dtype``.

    ``None``: bf16 weights + autocast on a GPU, float32 on a CPU (the behaviour before the setting existed).
    bf16 on a CPU: LoRA keeps the frozen base in bf16 weights (the LoRA matrices and their AdamW state stay
    float32, peft's default), which measured faster than autocast over fp32 weights (docs/performance.md §5);
    a full fine-tune keeps float32 master weights and runs under bf16 autocast."""
    if dtype is None:
        return None, cuda
    resolved = resolve_dtype(dtype, "cuda" if cuda else "cpu")
    if resolved == "float32":
        return "float32", False
    if cuda:
        return "bfloat16", True
    return ("bfloat16", False) if lora else ("float32", True)


def train_sft(model_name: str, section, encoded: Sequence[Encoded], *, token_weights: Optional[dict],
              seed: int, out_dir: Path, desc: str = "train", dtype: Optional[str] = None) -> dict:
    """Fine-tune a fresh copy of ``model_name`` (LoRA or full, per ``section``) and save it to ``out_dir``.

    ``dtype``: ``resources.dtype`` (:func:`sft_precision`). Returns training stats (steps, tokens, seconds,
    final loss).
    """
    import time

    import torch
    from transformers import TrainingArguments, set_seed

    set_seed(seed)
    load_dtype, autocast = sft_precision(dtype, lora=section.lora.enabled, cuda=torch.cuda.is_available())
    model, tok = load_causal_lm(model_name, dtype=load_dtype)
    model.train()
    if section.lora.enabled:
        model = apply_lora(model, section.lora)
    ds = _WeightedSet(encoded, token_weights)
    if len(ds) == 0:
        raise ValueError("no training rows with a non-zero loss weight")
    tc = section.train
    steps_per_epoch = math.ceil(len(ds) / (tc.batch_size * tc.grad_accum))
    total = tc.max_steps if tc.max_steps > 0 else max(1, math.ceil(steps_per_epoch * tc.epochs))
    # batches of similar length: less padding (1.03-1.15x tokens/s in benchmarks/bench_train.py)
    bucketing = length_grouping_args() if tc.group_by_length else {}
    with tempfile.TemporaryDirectory(prefix="ensemw2s-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=tc.batch_size, gradient_accumulation_steps=tc.grad_accum,
            learning_rate=tc.lr, weight_decay=tc.weight_decay, lr_scheduler_type=tc.scheduler,
            warmup_steps=int(round(tc.warmup_ratio * total)), max_steps=total, logging_steps=max(1, total // 10),
            save_strategy="no", report_to=[], seed=seed, data_seed=seed, dataloader_num_workers=0,
            remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
            bf16=autocast, optim="adamw_torch", disable_tqdm=os.environ.get(
                "ENSEMW2S_PROGRESS", "1") == "0", **bucketing,
        )
        trainer = _weighted_trainer_cls(desc)(model=model, args=args, train_dataset=ds,
                                          data_collator=_make_collator(tok.pad_token_id))
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
    model.eval()
    save_model(model, tok, out_dir, base_model=model_name, lora=section.lora.enabled)
    n_tokens = int(sum(len(e.input_ids) for e, _ in ds.items) * total / max(1, steps_per_epoch))
    return {"steps": total, "rows": len(ds), "train_seconds": round(seconds, 2),
            "train_loss": float(result.training_loss), "tokens_seen_approx": n_tokens,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", "") + (" + bf16 autocast" if autocast
                                                                                   else "")}
