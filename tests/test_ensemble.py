"""Token-level ensemble decoding (src/ensemw2s/ensemble.py): the cached, batched decoder must give exactly
the same token ids as the uncached one-prompt-at-a-time reference, and as HF greedy generate for K=1.

Everything is built in-test (tiny random Llama models, a character-level tokenizer): no downloads.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from tiny_models import make_model, make_tokenizer

from ensemw2s.boosting import normalise_alphas
from ensemw2s.ensemble import EnsembleDecoder, mixture_next_token_scores, reference_generate_ids

PROMPTS = [
    "What is the boiling point of water?",
    "Hi",
    "Which gas do plants absorb?",
    "2+2=",  # '+' and '=' are not in the vocabulary: <unk>
    "The sun is a",
    "Name a mammal that can fly.",
]
MAX_NEW = 12


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def experts(tok):
    return [make_model(tok, seed) for seed in (11, 22, 33)]


@pytest.fixture(scope="module")
def eos_model(tok):
    """A model that emits EOS after a few tokens for some prompts: swap the lm_head rows of EOS and of the
    token the untouched model emits most often."""
    model = make_model(tok, 44)
    ids = reference_generate_ids([model], [1.0], tok, PROMPTS, MAX_NEW)
    common = Counter(t for seq in ids for t in seq).most_common(1)[0][0]
    eos = tok.eos_token_id
    with torch.no_grad():
        w = model.lm_head.weight
        w[[eos, common]] = w[[common, eos]].clone()
    return model


def hf_greedy(model, tok, prompts, max_new_tokens):
    """model.generate greedy on a left-padded batch; new ids cut at the first EOS."""
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.inference_mode():
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    res = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        res.append(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    return res


# ---------------------------------------------------------------------------------------------- pure helpers


def test_normalise_alphas():
    assert normalise_alphas([1.0, 3.0]) == pytest.approx([0.25, 0.75])
    assert normalise_alphas([2.0]) == [1.0]
    assert sum(normalise_alphas([0.3, 0.7, 1.9])) == pytest.approx(1.0)
    for bad in ([], [1.0, 0.0], [1.0, -0.5], [float("nan")], [float("inf")]):
        with pytest.raises(ValueError):
            normalise_alphas(bad)
    with pytest.raises(ValueError, match="2 alphas for 3 experts"):
        normalise_alphas([1.0, 2.0], expected=3)


def test_mixture_scores_prob_and_vote():
    # expert 0 (weight 0.4) prefers token 0 sharply; experts 1, 2 (0.3 each) prefer token 1 mildly
    l0 = torch.tensor([[5.0, 0.0, 0.0]])
    l1 = torch.tensor([[0.0, 1.0, 0.0]])
    w = [0.4, 0.3, 0.3]
    prob = mixture_next_token_scores([l0, l1, l1], w, "prob")
    expected = sum(wi * torch.softmax(li, -1) for wi, li in zip(w, [l0, l1, l1]))
    assert torch.allclose(prob, expected)
    assert int(prob.argmax()) == 0  # the mixture follows the confident expert
    vote = mixture_next_token_scores([l0, l1, l1], w, "vote")
    assert int(vote.argmax()) == 1  # 0.6 of the vote beats 0.4
    assert torch.isinf(vote[0, 2]) and vote[0, 2] < 0
    # vote tie (0.5 / 0.5) is broken by the probability mixture: the confident expert wins
    tie = mixture_next_token_scores([l0, l1], [0.5, 0.5], "vote")
    assert int(tie.argmax()) == 0
    assert int(mixture_next_token_scores([l1, l0], [0.5, 0.5], "vote").argmax()) == 0
    # one expert: argmax of its logits
    assert torch.equal(mixture_next_token_scores([l1], [1.0], "prob"), l1)
    with pytest.raises(ValueError, match="'prob', 'vote'"):
        mixture_next_token_scores([l0], [1.0], "mean")


# ---------------------------------------------------------------------------------------------- validation


def test_constructor_errors(tok, experts):
    with pytest.raises(ValueError, match="'prob', 'vote'"):
        EnsembleDecoder(experts[:2], [1.0, 1.0], tok, combine="max")
    with pytest.raises(ValueError, match="3 alphas for 2 experts"):
        EnsembleDecoder(experts[:2], [1.0, 1.0, 1.0], tok)
    with pytest.raises(ValueError, match="> 0"):
        EnsembleDecoder(experts[:2], [1.0, 0.0], tok)
    with pytest.raises(ValueError, match="> 0"):
        EnsembleDecoder(experts[:2], [1.0, -2.0], tok)
    with pytest.raises(ValueError):
        EnsembleDecoder([], [], tok)
    other = make_model(tok, 5, vocab_size=len(tok) + 8)
    with pytest.raises(ValueError, match=f"expert 0: {len(tok)}, expert 1: {len(tok) + 8}"):
        EnsembleDecoder([experts[0], other], [1.0, 1.0], tok)
    with pytest.raises(ValueError, match="vocabulary"):
        reference_generate_ids([experts[0], other], [1.0, 1.0], tok, ["a"], 2)


# ---------------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("combine", ["prob", "vote"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_cached_batched_equals_reference(tok, experts, k, combine):
    models = experts[:k]
    # K=2: equal weights, so every disagreement is a vote tie broken by the mixture; K=3: no expert holds a
    # majority of the vote on its own
    alphas = {1: [0.7], 2: [1.0, 1.0], 3: [0.9, 1.3, 0.8]}[k]
    ref = reference_generate_ids(models, alphas, tok, PROMPTS, MAX_NEW, combine=combine)
    assert sum(map(len, ref)) >= 3 * MAX_NEW  # mostly long sequences: a real comparison
    # batch_size 4: one left-padded batch of 4 prompts of different lengths + one batch of 2
    dec = EnsembleDecoder(models, alphas, tok, combine=combine, batch_size=4)
    assert dec.generate_ids(PROMPTS, MAX_NEW) == ref
    dec1 = EnsembleDecoder(models, alphas, tok, combine=combine, batch_size=1)
    assert dec1.generate_ids(PROMPTS, MAX_NEW) == ref


def test_kv_pool_is_one_slab_reused_across_batches(tok, experts):
    """The reserved KV caches of one call: every layer's buffers are views of ONE key slab and ONE value slab
    (allocated by the first layer), a later, smaller batch reuses them, and a layer whose shapes differ gets
    buffers of its own instead of re-slabbing the others."""
    from ensemw2s.ensemble import _new_cache

    model = experts[0]
    pool: dict = {}
    cache = _new_cache(model.config, capacity=10, pool=pool)
    n_layers = model.config.num_hidden_layers
    assert pool["layers"] == tuple(range(n_layers))
    h, d = model.config.num_key_value_heads, model.config.hidden_size // model.config.num_attention_heads
    ks = torch.randn(3, h, 4, d)
    for i, layer in enumerate(cache.layers):
        k, v = layer.update(ks + i, ks - i)
        assert torch.equal(k, ks + i) and torch.equal(v, ks - i)
    storages = {pool[i][0].untyped_storage().data_ptr() for i in range(n_layers)}
    assert len(storages) == 1 and pool[0][0].shape == (3, h, 10, d)
    first = pool[0][0]
    again = _new_cache(model.config, capacity=8, pool=pool)  # the next batch: fewer rows, shorter
    for layer in again.layers:
        layer.update(ks[:2], ks[:2])
    assert pool[0][0] is first and again.layers[-1].keys.untyped_storage().data_ptr() in storages
    odd = _new_cache(model.config, capacity=8, pool=pool)
    odd.layers[0].update(ks[:2], ks[:2])
    odd.layers[1].update(torch.randn(2, h, 4, d + 2), torch.randn(2, h, 4, d + 2))  # another head size
    assert pool[0][0] is first and pool[1][0].shape[-1] == d + 2


def test_ensemble_differs_from_members(tok, experts):
    """Guard against a vacuous equivalence test: the experts disagree and the ensemble is not one of them."""
    singles = [reference_generate_ids([m], [1.0], tok, PROMPTS, MAX_NEW) for m in experts]
    assert singles[0] != singles[1] != singles[2]
    ens = EnsembleDecoder(experts, [1.0, 1.0, 1.0], tok).generate_ids(PROMPTS, MAX_NEW)
    assert all(ens != s for s in singles)
    vote = EnsembleDecoder(experts, [1.0, 1.0, 1.0], tok, combine="vote").generate_ids(PROMPTS, MAX_NEW)
    assert vote != ens


def test_one_expert_equals_hf_greedy(tok, experts):
    model = experts[1]
    hf = hf_greedy(model, tok, PROMPTS, MAX_NEW)
    dec = EnsembleDecoder([model], [2.5], tok, batch_size=len(PROMPTS))
    assert dec.generate_ids(PROMPTS, MAX_NEW) == hf
    # unbatched HF generate agrees too
    assert [hf_greedy(model, tok, [p], MAX_NEW)[0] for p in PROMPTS] == hf


def test_eos_stopping_and_pruning(tok, experts, eos_model):
    eos = tok.eos_token_id
    hf = hf_greedy(eos_model, tok, PROMPTS, MAX_NEW)
    lengths = [len(s) for s in hf]
    # some sequences stop early, at different steps
    assert min(lengths) < MAX_NEW and max(lengths) > min(lengths), lengths
    one = EnsembleDecoder([eos_model], [1.0], tok, batch_size=len(PROMPTS))
    assert one.generate_ids(PROMPTS, MAX_NEW) == hf
    assert one.generate_ids(PROMPTS, MAX_NEW, prune=False) == hf  # pad-feeding path, no cache slicing
    assert reference_generate_ids([eos_model], [1.0], tok, PROMPTS, MAX_NEW) == hf

    models, alphas = [eos_model, experts[0]], [3.0, 1.0]
    ref = reference_generate_ids(models, alphas, tok, PROMPTS, MAX_NEW)
    assert min(len(s) for s in ref) < MAX_NEW
    dec = EnsembleDecoder(models, alphas, tok, batch_size=4)
    assert dec.generate_ids(PROMPTS, MAX_NEW) == ref
    assert dec.generate_ids(PROMPTS, MAX_NEW, prune=False) == ref
    for seq in ref:
        assert eos not in seq and len(seq) <= MAX_NEW
    # a list of EOS ids in generation_config is honoured (here: an extra, frequent token ends sequences)
    extra = Counter(t for s in ref for t in s).most_common(1)[0][0]
    m2 = copy.deepcopy(eos_model)
    m2.generation_config.eos_token_id = [eos, extra]
    got = EnsembleDecoder([m2, experts[0]], alphas, tok).generate_ids(PROMPTS, MAX_NEW)
    assert got == reference_generate_ids([m2, experts[0]], alphas, tok, PROMPTS, MAX_NEW)
    assert all(extra not in s and eos not in s for s in got)
    assert sum(map(len, got)) < sum(map(len, ref))


def test_generate_text_and_edge_cases(tok, experts):
    dec = EnsembleDecoder(experts[:2], [1.0, 2.0], tok, batch_size=3)
    ids = dec.generate_ids(PROMPTS, 6)
    texts = dec.generate(PROMPTS, 6)
    assert texts == [tok.decode(i, skip_special_tokens=True).strip() for i in ids]
    assert all(isinstance(t, str) for t in texts) and any(texts)
    assert dec.generate_ids(PROMPTS, 0) == [[] for _ in PROMPTS]
    assert dec.generate_ids([], 5) == []
    # prompt order does not matter (batches are sorted by length internally)
    assert dec.generate_ids(PROMPTS[::-1], 6) == ids[::-1]
    with pytest.raises(TypeError):
        dec.generate_ids("a single string", 3)
    with pytest.raises(ValueError):
        dec.generate_ids(["x"], -1)
    # progress bar path
    assert EnsembleDecoder(experts[:2], [1.0, 2.0], tok, progress=True).generate_ids(PROMPTS[:2], 3) == [
        i[:3] for i in ids[:2]
    ]


# ---------------------------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora_setup(tok, tmp_path_factory):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = make_model(tok, 7)
    dirs = []
    for i, seed in enumerate((101, 202, 303)):
        torch.manual_seed(seed)
        cfg = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
            init_lora_weights=False,  # random non-zero B: the adapter really changes the outputs
            task_type="CAUSAL_LM",
        )
        pm = get_peft_model(copy.deepcopy(base), cfg)
        d = tmp_path_factory.mktemp(f"adapter{i}")
        pm.save_pretrained(d)
        dirs.append(d)
    merged = [PeftModel.from_pretrained(copy.deepcopy(base), d).merge_and_unload().eval() for d in dirs]
    return base, dirs, merged


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("combine", ["prob", "vote"])
def test_lora_shared_base_equals_merged(tok, lora_setup, combine):
    base, dirs, merged = lora_setup
    alphas = [1.0, 0.5, 2.0]
    base_ids = reference_generate_ids([base], [1.0], tok, PROMPTS, MAX_NEW)
    merged_ref = reference_generate_ids(merged, alphas, tok, PROMPTS, MAX_NEW, combine=combine)
    singles = [reference_generate_ids([m], [1.0], tok, PROMPTS, MAX_NEW) for m in merged]
    assert all(s != base_ids for s in singles)  # the adapters matter
    separate = EnsembleDecoder(merged, alphas, tok, combine=combine, batch_size=4)
    assert separate.generate_ids(PROMPTS, MAX_NEW) == merged_ref
    shared = EnsembleDecoder.from_lora_adapters(
        copy.deepcopy(base), dirs, alphas, tok, combine=combine, batch_size=4
    )
    assert shared.num_experts == 3
    assert shared.generate_ids(PROMPTS, MAX_NEW) == merged_ref
    # base weights are held once: every expert calls the same module
    assert len({id(e.model) for e in shared._experts}) == 1


def test_lora_errors(tok, lora_setup):
    base, dirs, _ = lora_setup
    with pytest.raises(ValueError, match="3 alphas for 2 experts"):
        EnsembleDecoder.from_lora_adapters(copy.deepcopy(base), dirs[:2], [1.0, 1.0, 1.0], tok)
    with pytest.raises(ValueError):
        EnsembleDecoder.from_lora_adapters(copy.deepcopy(base), [], [], tok)
