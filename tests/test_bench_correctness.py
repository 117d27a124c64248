"""The benchmarks' baselines must compute the same thing as the code they are compared with (no timing here).

* bench_decode's batched no-cache ensemble == ``reference_generate_ids`` == ``EnsembleDecoder`` (EOS off);
* bench_train's plain-Trainer batch (labels, full logits) has the same loss as the project's answer-only,
  per-token-weighted loss with unit weights.

Tiny random Llama models and a character-level tokenizer built in-test: no downloads.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import make_model, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _model(tok, seed: int):
    model = make_model(tok, seed)
    model.generation_config.eos_token_id = None
    return model


def test_nocache_baseline_matches_reference_and_decoder():
    from ensemw2s.boosting import normalise_alphas
    from ensemw2s.ensemble import EnsembleDecoder, reference_generate_ids

    bd = _load("bench_decode")
    tok = make_tokenizer()
    models = [_model(tok, s) for s in (1, 2, 3)]
    alphas = [1.0, 1.25, 1.5]
    prompts = ["What is the boiling point of water?", "Hi", "The sun is a", "Name a mammal that can fly."]
    new = 7
    ref = reference_generate_ids(models, alphas, bd.NoEos(tok), prompts, new)
    nocache = bd._nocache_batched(models, normalise_alphas(alphas), tok, prompts, new)
    ours = EnsembleDecoder(models, alphas, bd.NoEos(tok), batch_size=3).generate_ids(prompts, new)
    assert all(len(r) == new for r in ref)  # EOS really is off
    assert nocache == ref
    assert ours == ref


def test_plain_trainer_loss_equals_weighted_answer_loss():
    from ensemw2s.training import _make_collator, _weighted_trainer_cls, _WeightedSet, encode_rows

    bt = _load("bench_train")
    tok = make_tokenizer()
    model = _model(tok, 0)
    rows = [{"id": f"q{i}", "question": q, "choices": ["red", "blue", "green"], "answer": a, "answer_index": 0}
            for i, (q, a) in enumerate([("Which colour is the sky?", "blue"), ("Grass is?", "green"),
                                        ("What colour is a ripe tomato on a sunny day?", "red")])]
    enc = encode_rows(tok, rows, 96)
    ours_batch = _make_collator(tok.pad_token_id)([_WeightedSet(enc, None)[i] for i in range(len(enc))])
    plain_batch = bt._plain_collator(tok.pad_token_id)([bt._PlainSet(enc)[i] for i in range(len(enc))])
    trainer = _weighted_trainer_cls().__new__(_weighted_trainer_cls())  # compute_loss needs no Trainer state
    with torch.no_grad():
        ours = trainer.compute_loss(model, ours_batch)
        plain = model(**plain_batch).loss
    assert torch.equal(ours_batch["input_ids"], plain_batch["input_ids"])
    assert float(ours) == pytest.approx(float(plain), rel=1e-5)
