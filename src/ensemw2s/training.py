"""Models: loading, tokenising question/answer pairs, SFT with per-token loss weights, teacher-forced passes.

Training uses the HF ``Trainer`` with one override: the loss is a per-token weighted cross-entropy on the
answer tokens only, and the LM head is applied only at those positions (Gemma's vocabulary has 262k entries;
projecting every prompt position would dominate the step time).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ensemw2s.data import format_prompt, format_target

log = logging.getLogger(__name__)

MODEL_INFO_FILE = "ensemw2s_model.json"


class ModelError(RuntimeError):
    """A model folder or name the user must fix; the message names it."""


# --------------------------------------------------------------------------- loading


def _check_weights_folder(path: Path) -> None:
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise ModelError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise ModelError(f"model folder {path} has no weights (*.safetensors)")
    if not list(path.glob("*.safetensors")):
        # never unpickle: *.bin files are pickles and can run code on load
        raise ModelError(f"model folder {path} holds only pickled weights (*.bin); only safetensors are loaded")
    for f in path.glob("*.safetensors"):
        _check_safetensors(f)


def _check_safetensors(path: Path) -> None:
    """Cheap header check so a corrupt or truncated file is named before a long load."""
    import struct

    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelError(f"corrupt safetensors file {path}: shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size:
            raise ModelError(f"corrupt safetensors file {path}: header length {n} exceeds file size {size}")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise ModelError(f"corrupt safetensors file {path}: header is not JSON (is it a pickle?)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ModelError(f"corrupt safetensors file {path}: truncated ({size} bytes, needs {8 + n + end})")


def resolve_model_path(name_or_path: str) -> str:
    """Registry name / local folder / s3:// folder / hub id -> something ``from_pretrained`` loads."""
    if name_or_path.startswith("s3://"):
        from ensemw2s import storage

        return str(storage.fetch_uri_folder(name_or_path))
    from ensemw2s import assets

    return assets.resolve_model(name_or_path)


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, *, adapter: Optional[str] = None, dtype=None):
    """Load (model, tokenizer). ``adapter``: a LoRA adapter folder applied on top (kept unmerged)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if Path(path).is_dir():
        _check_weights_folder(Path(path))
    dev = torch_device()
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager"
                                                 if dev.type == "cpu" else "sdpa")
    tok = load_tokenizer(path)
    if adapter:
        from peft import PeftModel

        _check_weights_folder(Path(adapter))
        model = PeftModel.from_pretrained(model, adapter)
    model.to(dev)
    model.eval()
    return model, tok


def save_model(model, tokenizer, out: Path, *, base_model: str, lora: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / MODEL_INFO_FILE).write_text(json.dumps({"base_model": base_model, "lora": lora}, indent=1))


def load_saved(folder: str | Path, *, dtype=None):
    """Load a model saved by :func:`save_model` (a full model, or a LoRA adapter on its base)."""
    folder = Path(folder)
    info_file = folder / MODEL_INFO_FILE
    if not info_file.is_file():
        raise ModelError(f"{folder} is not a saved ensemw2s model (no {MODEL_INFO_FILE})")
    info = json.loads(info_file.read_text())
    if info["lora"]:
        return load_causal_lm(info["base_model"], adapter=str(folder), dtype=dtype)
    return load_causal_lm(str(folder), dtype=dtype)


def tokenizer_signature(tok) -> str:
    """A fingerprint of a tokenizer's vocabulary: experts must share one tokenizer."""
    import hashlib

    vocab = tok.get_vocab()
    items = sorted(vocab.items(), key=lambda kv: kv[1])
    return hashlib.sha1(json.dumps(items[:5000] + [len(vocab)]).encode()).hexdigest()[:16]


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


def _inner(model):
    """(decoder trunk, lm_head, softcap) of a causal LM, through a peft wrapper if present."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    trunk = getattr(base, "model", None)
    head = base.get_output_embeddings()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if trunk is None or head is None:
        raise ModelError(f"unsupported model class {type(base).__name__}: no .model trunk / output embeddings")
    return trunk, head, cap


def logits_at(model, input_ids, attention_mask, positions):
    """Logits predicting the token at each (row, col) in ``positions`` (a bool mask over input_ids)."""
    import torch

    trunk, head, cap = _inner(model)
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
        for b in _progress(range(0, len(order), batch_size), desc):
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


def _progress(it, desc):
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


def _weighted_trainer_cls():
    import torch
    from transformers import Trainer

    class WeightedTokenTrainer(Trainer):
        """Trainer whose loss is sum_j w_j CE_j / (#answer tokens) over the answer tokens of the batch."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            answer = inputs["answer_mask"]
            logits, gold = logits_at(model, inputs["input_ids"], inputs["attention_mask"], answer)
            w = inputs["token_weights"][:, 1:][answer[:, 1:]]
            ce = torch.nn.functional.cross_entropy(logits, gold, reduction="none")
            loss = (w * ce).sum() / answer[:, 1:].sum().clamp_min(1)
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
    pcfg = PeftLoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, pcfg)


def length_grouping_args() -> dict:
    """TrainingArguments keywords for length-grouped batches (transformers 5: train_sampling_strategy; 4.x:
    group_by_length)."""
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields else {
        "group_by_length": True}


def train_sft(model_name: str, section, encoded: Sequence[Encoded], *, token_weights: Optional[dict],
              seed: int, out_dir: Path, desc: str = "train") -> dict:
    """Fine-tune a fresh copy of ``model_name`` (LoRA or full, per ``section``) and save it to ``out_dir``.

    Returns training stats (steps, tokens, seconds, final loss).
    """
    import time

    import torch
    from transformers import TrainingArguments, set_seed

    set_seed(seed)
    model, tok = load_causal_lm(model_name)
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
            bf16=torch.cuda.is_available(), optim="adamw_torch", disable_tqdm=os.environ.get(
                "ENSEMW2S_PROGRESS", "1") == "0", **bucketing,
        )
        trainer = _weighted_trainer_cls()(model=model, args=args, train_dataset=ds,
                                          data_collator=_make_collator(tok.pad_token_id))
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
    model.eval()
    save_model(model, tok, out_dir, base_model=model_name, lora=section.lora.enabled)
    n_tokens = int(sum(len(e.input_ids) for e, _ in ds.items) * total / max(1, steps_per_epoch))
    return {"steps": total, "rows": len(ds), "train_seconds": round(seconds, 2),
            "train_loss": float(result.training_loss), "tokens_seen_approx": n_tokens}
