"""K LoRA experts of one base in ONE forward (issue 15, item 1): same outputs as one forward per expert.

* decoding: ``EnsembleDecoder.from_lora_adapters(mode="stacked")`` (both LoRA arithmetics: our grouped matmul
  and peft's mixed-adapter batches) gives token-for-token the ids of ``mode="switch"`` (one forward per expert,
  the decoder before the change), greedy, ``prob`` and ``vote``, with EOS pruning, on tiny models and (slow) on
  SmolLM2-135M with three LoRA experts; one expert (``auto`` merges it) gives HF generate's ids and the switch
  decoder's;
* option scoring: ``option_logprobs(adapters=MultiAdapter)`` and the stacked ``members.option_logprobs_by_round``
  within 1e-5 of each expert scored alone; its merged way (each expert merged into the base in turn, the CPU
  default) within 1e-4, with the base restored exactly after each expert (fp32 and bf16).
"""
from __future__ import annotations

import pytest
import torch
from tiny_models import make_lora_adapters, make_model, make_tokenizer

from ensemw2s.ensemble import EnsembleDecoder
from ensemw2s.evaluation import option_logprobs
from ensemw2s.modeling import MultiAdapter, load_lora_adapters

PROMPTS = ["What is the boiling point of water?", "Hi", "Which gas do plants absorb?", "2+2=", "The sun is a",
           "Name a mammal that can fly."]
ALPHAS = [1.0, 1.5, 0.7]
ROWS = [{"id": f"q{i}", "question": q, "choices": c, "answer": c[0], "answer_index": 0}
        for i, (q, c) in enumerate([("What colour is the sky?", ["blue", "red", "a green thing"]),
                                    ("Hi", ["yes", "no"]),
                                    ("Which gas do plants absorb?", ["oxygen", "carbon dioxide", "helium", "neon"]),
                                    ("The sun is a", ["star", "planet", "moon"]),
                                    ("Name a mammal that can fly.", ["bat", "eagle"])])]
TOL = 1e-5


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def adapters(tok, tmp_path_factory):
    return make_lora_adapters(lambda: make_model(tok, 5), tmp_path_factory.mktemp("adapters"), 3)


@pytest.fixture(scope="module")
def common_token(tok, adapters):
    """The token the tiny ensemble emits most often (it becomes EOS in ``_eos_base``)."""
    from collections import Counter

    ids = EnsembleDecoder.from_lora_adapters(make_model(tok, 5), adapters, ALPHAS, tok, mode="switch").generate_ids(
        PROMPTS, 12)
    return Counter(t for seq in ids for t in seq).most_common(1)[0][0]


def _eos_base(tok, common):
    """The tiny base with the lm_head rows of EOS and of a frequent token swapped: some rows stop early, which
    exercises pruning of the stacked cache."""
    model = make_model(tok, 5)
    with torch.no_grad():
        w = model.lm_head.weight
        w[[tok.eos_token_id, common]] = w[[common, tok.eos_token_id]].clone()
    return model


@pytest.mark.parametrize("combine", ["prob", "vote"])
@pytest.mark.parametrize("eos", [False, True])
def test_stacked_decoding_equals_one_forward_per_expert(tok, adapters, common_token, combine, eos):
    base = (lambda: _eos_base(tok, common_token)) if eos else (lambda: make_model(tok, 5))
    switch = EnsembleDecoder.from_lora_adapters(base(), adapters, ALPHAS, tok, combine, batch_size=4,
                                                mode="switch").generate_ids(PROMPTS, 12)
    if eos:
        assert len({len(ids) for ids in switch}) > 1  # rows really finish at different steps
    for impl in MultiAdapter.IMPLS:
        dec = EnsembleDecoder.from_lora_adapters(base(), adapters, ALPHAS, tok, combine, batch_size=4,
                                                 mode="stacked", lora_impl=impl)
        assert dec.mode == "stacked" and dec.num_experts == 3 and len(dec._experts) == 1
        assert dec.generate_ids(PROMPTS, 12) == switch, impl
        assert dec.generate_ids(PROMPTS, 12, prune=False) == switch, impl


def test_single_expert_merged_equals_hf_generate_and_stacked_equals_switch(tok, adapters):
    """K = 1: ``auto`` merges the adapter (== HF generate of the merged expert); stacked K=1 == switch K=1."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(make_model(tok, 5), adapters[0]).merge_and_unload().eval()
    dec = EnsembleDecoder.from_lora_adapters(make_model(tok, 5), adapters[:1], [1.0], tok, batch_size=3)
    assert dec.mode == "models" and not hasattr(dec.models[0], "peft_config")  # a plain merged model
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    with torch.inference_mode():
        out = merged.generate(**enc, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)
    hf = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        hf.append(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    assert dec.generate_ids(PROMPTS, 8) == hf
    ids = {mode: EnsembleDecoder.from_lora_adapters(make_model(tok, 5), adapters[:1], [1.0], tok, batch_size=3,
                                                    mode=mode).generate_ids(PROMPTS, 8) for mode in ("stacked", "switch")}
    assert ids["stacked"] == ids["switch"]
    with pytest.raises(ValueError, match="merges ONE adapter"):
        EnsembleDecoder.from_lora_adapters(make_model(tok, 5), adapters, ALPHAS, tok, mode="merged")


def _alone(tok, adapters):
    from peft import PeftModel

    out = []
    for d in adapters:
        model = PeftModel.from_pretrained(make_model(tok, 5), d).eval()
        out.append(option_logprobs(model, tok, ROWS, batch_size=2))
    return out


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for rid in a:
        assert [len(o) for o in a[rid]] == [len(o) for o in b[rid]]
        for oa, ob in zip(a[rid], b[rid]):
            worst = max([worst] + [abs(x - y) for x, y in zip(oa, ob)])
    return worst


@pytest.mark.parametrize("impl", MultiAdapter.IMPLS)
def test_stacked_option_scores_equal_each_expert_alone(tok, adapters, impl):
    alone = _alone(tok, adapters)
    names = ["a", "b", "c"]
    model = load_lora_adapters(make_model(tok, 5), adapters, names)
    stacked = option_logprobs(model, tok, ROWS, batch_size=2, adapters=MultiAdapter(model, names, impl))
    assert len(stacked) == 3
    for a, s in zip(alone, stacked):
        assert _max_diff(a, s) <= TOL
    # a subset and another order: block k is always expert names[k]
    sub = option_logprobs(model, tok, ROWS, batch_size=3, adapters=MultiAdapter(model, ["c", "a"], impl))
    assert _max_diff(alone[2], sub[0]) <= TOL and _max_diff(alone[0], sub[1]) <= TOL


def test_multi_adapter_guards(tok, adapters):
    model = load_lora_adapters(make_model(tok, 5), adapters[:2], ["a", "b"])
    multi = MultiAdapter(model, ["a", "b"])
    x = torch.tensor([[5, 6, 7]] * 3)  # 3 rows cannot be 2 equal blocks
    with pytest.raises(RuntimeError, match="equal blocks"), multi.active(1), torch.inference_mode():
        model.get_base_model()(input_ids=x)
    # the patch is undone on the way out: the active adapter works again
    with torch.inference_mode():
        model(input_ids=x)
    with pytest.raises(ValueError, match="unique"):
        MultiAdapter(model, ["a", "a"])
    with pytest.raises(Exception, match="no LoRA layer"):
        MultiAdapter(model, ["zzz"])
    model.train()
    with pytest.raises(RuntimeError, match="inference"), multi.active(1):
        pass


@pytest.mark.parametrize("way, tol", [("stacked", TOL), ("merged", 1e-4)])
def test_option_logprobs_by_round_equals_one_member_at_a_time(tiny_assets, tmp_path, monkeypatch, way, tol):
    """The members path the evaluate and pseudo_label steps use: saved LoRA experts of the tiny-weak model, in
    one stacked forward, or merged into the base one after another (fp32 rounding of W + s B A: a looser
    tolerance)."""
    from ensemw2s import members as mem
    from ensemw2s.modeling import load_causal_lm, save_model

    base, tok = load_causal_lm("tiny-weak")
    dirs = make_lora_adapters(lambda: load_causal_lm("tiny-weak")[0], tmp_path / "a", 3, std=0.05)
    experts = []
    for r, d in enumerate(dirs, 1):
        from peft import PeftModel

        m = PeftModel.from_pretrained(load_causal_lm("tiny-weak")[0], d)
        save_model(m, tok, tmp_path / f"e{r}", base_model="tiny-weak", lora=True)
        experts.append({"round": r, "alpha": 1.0, "path": str(tmp_path / f"e{r}"), "lora": True,
                        "base_model": "tiny-weak"})
    from ensemw2s import assets
    from ensemw2s.data import read_jsonl

    rows = read_jsonl(assets.dataset_file("arc_easy", "test"), strict_choices=False)[:6]
    together = mem.option_logprobs_by_round(experts, {"t": rows}, 4, way=way)
    monkeypatch.setattr(mem, "STACK_MAX", 2)  # stacked: chunks of 2 + 1 experts
    chunked = mem.option_logprobs_by_round(experts, {"t": rows}, 4, way=way)
    for e in experts:
        alone = mem.option_logprobs_by_round([e], {"t": rows}, 4)[e["round"]]["t"]
        assert _max_diff(alone, together[e["round"]]["t"]) <= tol
        assert _max_diff(alone, chunked[e["round"]]["t"]) <= tol
    assert mem.scoring_way("cpu") == "merged" and mem.scoring_way("cuda") == "stacked"
    with pytest.raises(ValueError, match="merged, stacked"):
        mem.option_logprobs_by_round(experts, {"t": rows}, 4, way="fused")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_adapter_restores_the_base_exactly(tok, adapters, dtype):
    """Merging then unmerging in bf16 does not give the base back by itself; merged_adapter does, so experts
    merged one after another each see the original base. Inside, the forward is the merged model's."""
    from ensemw2s.modeling import merged_adapter

    model = load_lora_adapters(make_model(tok, 5).to(dtype), adapters, ["a", "b", "c"])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("base_layer.weight")}
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        model.set_adapter("b")
        unmerged = model(input_ids=x).logits.float()
    for name in ("a", "b", "c"):
        with merged_adapter(model, name), torch.inference_mode():
            out = model(input_ids=x).logits.float()
            if name == "b":
                assert torch.allclose(out, unmerged, atol=1e-4 if dtype == torch.float32 else 0.1)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n].detach(), w) for n, w in before.items())
    with pytest.raises(Exception, match="no LoRA layer"), merged_adapter(model, "zzz"):
        pass


@pytest.mark.slow
def test_real_smollm2_experts_stacked_equal_switch(tmp_path):
    """SmolLM2-135M with three random LoRA experts (r=16, all projections): stacked decoding is token-identical
    to one forward per expert (prob and vote), and stacked option scores are within fp32 rounding (bound below)."""
    from ensemw2s import assets
    from ensemw2s.data import format_prompt, read_jsonl
    from ensemw2s.modeling import load_causal_lm

    if not (assets.home() / "models" / "smollm2-135m").is_dir():
        pytest.fail("smollm2-135m is not set up: run `make setup` first")
    dirs = make_lora_adapters(lambda: load_causal_lm("smollm2-135m")[0], tmp_path, 3, std=0.01, r=16)
    rows = read_jsonl(assets.dataset_file("arc_easy", "test"), strict_choices=False)[:16]
    prompts = [format_prompt(r) for r in rows]
    _, tok = load_causal_lm("smollm2-135m")
    for combine in ("prob", "vote"):
        ids = {mode: EnsembleDecoder.from_lora_adapters(load_causal_lm("smollm2-135m")[0], dirs, ALPHAS, tok, combine,
                                                        mode=mode).generate_ids(prompts, 16)
               for mode in ("switch", "stacked")}
        assert ids["stacked"] == ids["switch"], combine
    # one expert: auto merges it into the base; same tokens as the unmerged switch decoder
    ids = {mode: EnsembleDecoder.from_lora_adapters(load_causal_lm("smollm2-135m")[0], dirs[:1], [1.0], tok,
                                                    mode=mode).generate_ids(prompts, 16) for mode in ("switch", "auto")}
    assert ids["auto"] == ids["switch"]
    names = [f"expert_{i}" for i in range(3)]
    model = load_lora_adapters(load_causal_lm("smollm2-135m")[0], dirs, names)
    stacked = option_logprobs(model, tok, rows, batch_size=8, adapters=MultiAdapter(model, names))
    alone = []
    for name in names:
        model.set_adapter(name)
        alone.append(option_logprobs(model, tok, rows, batch_size=8))
    # The bound is what fp32 arithmetic can promise, not a number that happened to pass. Stacking runs the same
    # math on a batch of another shape (3 x the rows), and a CPU's fp32 GEMM (oneDNN / MKL on AVX-512 or AMX)
    # blocks its reductions by the batch shape, so each of the model's L layers rounds differently: at unit
    # roundoff u = 2**-24, a per-token log-prob of size |lp| can move by about u * L * |lp| (3.8e-5 for
    # SmolLM2's 30 layers and |lp| <= 21). The same expert alone on batches of 8 and of 5 rows (nothing but the
    # shape changes) differs by 1.1e-5 to 1.5e-5 on an AVX-512 EPYC; stacked against alone was 0.0 there and
    # 1.9e-5 on an AMX Xeon. So: within max(u * L * |lp|, 4 x this CPU's own batch-shape difference), and
    # the bound must stay far below the difference between two experts (else equality would prove nothing).
    model.set_adapter(names[0])
    reshaped = option_logprobs(model, tok, rows, batch_size=5)
    shape_only = _max_diff(alone[0], reshaped)
    n_layers = model.base_model.model.config.num_hidden_layers
    largest = max(abs(x) for a in alone for opts in a.values() for o in opts for x in o)
    tol = max(2.0 ** -24 * n_layers * largest, 4 * shape_only)
    assert min(_max_diff(alone[0], alone[1]), _max_diff(alone[1], alone[2])) >= 1000 * tol
    for i in range(len(names)):
        assert _max_diff(alone[i], stacked[i]) <= tol, (i, tol, shape_only)
