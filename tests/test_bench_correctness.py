"""The benchmarks' baselines must compute the same thing as the code they are compared with (no timing here).

* bench_decode's batched no-cache ensemble == ``reference_generate_ids`` == ``EnsembleDecoder`` (EOS off);
* bench_train's plain-Trainer batch (labels, full logits) has the same loss as the project's answer-only,
  per-token-weighted loss with unit weights.

Tiny random Llama models and a character-level tokenizer built in-test: no downloads.
"""
from __future__ import annotations

import importlib.util
import string
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    chars = string.ascii_letters + string.digits + " .,?!:;'-\n()"
    vocab = {t: i for i, t in enumerate(specials + list(chars))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def _model(tok, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.1, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    return model


def test_nocache_baseline_matches_reference_and_decoder():
    from ensemw2s.ensemble import EnsembleDecoder, normalise_alphas, reference_generate_ids

    bd = _load("bench_decode")
    tok = _tokenizer()
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
    tok = _tokenizer()
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
