"""Token-level weighted ensemble decoding over K causal LMs that share one tokenizer (DESIGN.md §4.3).

Greedy decoding where every expert conditions on the same ensemble prefix. At each step the next token is

* ``combine="prob"``: ``argmax_v sum_t a_t * softmax(logits_t)[v]`` with ``a_t = alpha_t / sum(alpha)``;
* ``combine="vote"``: each expert votes for its own argmax token with weight ``a_t``; the token with the
  largest total vote wins. **Ties** between tokens with the same vote total (e.g. two experts of equal weight
  disagreeing) are broken by the probability-mixture score of the ``"prob"`` rule; a remaining exact tie goes
  to the lowest token id (``torch.argmax`` semantics).

Probabilities are computed in float32 whatever the models' dtype.

:class:`EnsembleDecoder` is the fast path: prompts are decoded in left-padded batches, every expert keeps its
own KV cache and only the newest token is fed after the prompt; sequences that reach EOS are dropped from the
batch (and from every cache). :func:`reference_generate_ids` is the slow, obviously-correct definition: one
prompt at a time, no cache, the whole prefix recomputed for every token. Tests require both to produce the
same token ids.

:meth:`EnsembleDecoder.from_lora_adapters` decodes K LoRA experts of one base model with a single
``peft.PeftModel`` holding K named adapters, the base weights in memory once. By default (``mode="auto"``)
K > 1 experts run in ONE forward per token: the batch holds every prompt once per expert (K blocks of rows),
row block k goes through adapter k (:class:`ensemw2s.modeling.MultiAdapter`), and one KV cache serves the
stacked batch; a single expert is merged into the base instead (no LoRA matmuls). ``mode="switch"`` is the
older path: one forward per expert with its adapter switched on, one KV cache per expert (same token ids;
tests/test_multi_adapter.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from ensemw2s.boosting import normalise_alphas
from ensemw2s.modeling import MultiAdapter, accepts, cache_keyword, load_lora_adapters, unwrap_peft

log = logging.getLogger(__name__)

COMBINE_MODES = ("prob", "vote")
LORA_MODES = ("auto", "stacked", "switch", "merged")

# Vote totals are sums of normalised weights (total 1); two totals closer than this are a tie.
_VOTE_TIE_TOL = 1e-9


# --------------------------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------------------------


def check_combine(combine: str) -> str:
    if combine not in COMBINE_MODES:
        raise ValueError(
            f"combine must be one of {', '.join(repr(c) for c in COMBINE_MODES)}; got {combine!r}"
        )
    return combine


def mixture_next_token_scores(
    logits_list: Sequence[torch.Tensor], weights: Sequence[float], combine: str = "prob"
) -> torch.Tensor:
    """Scores ``[B, V]`` (float32) whose ``argmax(-1)`` is the ensemble's next token.

    ``logits_list``: one ``[B, V]`` tensor per expert (next-token logits); ``weights``: normalised expert
    weights (see :func:`normalise_alphas`).

    * ``"prob"``: the mixture ``sum_t w_t softmax(logits_t)``. With a single expert the float32 logits are
      returned instead (same argmax, and exactly what ``model.generate`` greedy compares).
    * ``"vote"``: the probability mixture restricted to the tokens with the largest weighted vote, ``-inf``
      elsewhere, so the argmax is the vote winner with ties broken by the mixture probability.
    """
    check_combine(combine)
    if len(logits_list) != len(weights) or not logits_list:
        raise ValueError(
            f"need one weight per expert logits tensor; got {len(logits_list)} and {len(weights)}"
        )
    logits32 = [lg.float() for lg in logits_list]
    for lg in logits32[1:]:
        if lg.shape != logits32[0].shape:
            raise ValueError(f"expert logits shapes differ: {tuple(lg.shape)} vs {tuple(logits32[0].shape)}")

    if len(logits32) == 1:
        # one expert: argmax of softmax == argmax of logits; the logits avoid exp() rounding two distinct
        # logits onto the same probability, so K=1 reproduces model.generate(do_sample=False) exactly.
        mix = logits32[0]
    else:
        mix = torch.zeros_like(logits32[0])
        for w, lg in zip(weights, logits32):
            # log-sum-exp-safe softmax: exp(l - logsumexp(l))
            mix = mix + float(w) * torch.exp(lg - torch.logsumexp(lg, dim=-1, keepdim=True))
    if combine == "prob":
        return mix

    votes = torch.zeros(logits32[0].shape, dtype=torch.float64, device=logits32[0].device)
    for w, lg in zip(weights, logits32):
        top = lg.argmax(dim=-1, keepdim=True)
        votes.scatter_add_(-1, top, torch.full(top.shape, float(w), dtype=torch.float64, device=votes.device))
    best = votes.max(dim=-1, keepdim=True).values
    winners = votes >= best - _VOTE_TIE_TOL
    return torch.where(winners, mix, torch.full_like(mix, float("-inf")))


# --------------------------------------------------------------------------------------------------------------
# model plumbing
# --------------------------------------------------------------------------------------------------------------


def _vocab_size(model: torch.nn.Module) -> int:
    out_emb = None
    try:
        out_emb = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        out_emb = None
    weight = getattr(out_emb, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "vocab_size", None)
    if size is None:
        raise ValueError(f"cannot tell the output vocabulary size of {type(model).__name__}")
    return int(size)


def check_same_vocab(models: Sequence[torch.nn.Module]) -> int:
    """All experts must score the same vocabulary (they share one tokenizer). Returns its size."""
    sizes = [_vocab_size(m) for m in models]
    if len(set(sizes)) != 1:
        detail = ", ".join(f"expert {i}: {s}" for i, s in enumerate(sizes))
        raise ValueError(
            f"experts have different vocabulary sizes ({detail}); ensemble decoding needs experts that share "
            "one tokenizer and output vocabulary"
        )
    return sizes[0]


def _input_device(model: torch.nn.Module) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    try:
        return [int(v) for v in value]
    except TypeError:
        return [int(value)]


def eos_token_ids(models: Sequence[torch.nn.Module], tokenizer: Any) -> list[int]:
    """Union of the tokenizer's EOS id and every model's ``generation_config.eos_token_id`` (int or list)."""
    ids: list[int] = []
    for cand in [getattr(tokenizer, "eos_token_id", None)] + [
        getattr(getattr(m, "generation_config", None), "eos_token_id", None) for m in models
    ]:
        for i in _as_id_list(cand):
            if i not in ids:
                ids.append(i)
    return ids


def _pad_id(tokenizer: Any, eos_ids: Sequence[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    return int(eos_ids[0]) if eos_ids else 0


def _encode(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt with the tokenizer's default special tokens (BOS where it adds one)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string")
    encoded = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} ({prompts[i]!r}) tokenises to no tokens; nothing to condition on")
    return encoded


# --------------------------------------------------------------------------------------------------------------
# the decoder
# --------------------------------------------------------------------------------------------------------------


def _new_cache(config, capacity: int | None = None, pool: dict | None = None):
    """A DynamicCache whose full-attention layers reserve ``capacity`` positions (prompt width + new tokens) at
    their first update: each new token is written in place instead of ``torch.cat`` copying the whole cache
    (per token, per layer) and leaving the allocator a trail of freed, ever larger blocks. ``pool``: buffers
    kept from an earlier (larger: longest prompts first) batch of the same call, reused as views."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=config)
    except TypeError:  # older transformers
        return DynamicCache()
    if capacity:
        layers = getattr(cache, "layers", None) or []
        for i, layer in enumerate(layers):
            if type(layer) is DynamicLayer:  # sliding-window and other layer kinds keep their own logic
                layers[i] = _reserved_layer_cls()(capacity, pool, i)
        if pool is not None:
            pool["layers"] = tuple(i for i, layer in enumerate(layers) if type(layer) is _reserved_layer_cls())
    return cache


_RESERVED = None


def _reserved_layer_cls():
    global _RESERVED
    if _RESERVED is None:
        from transformers.cache_utils import DynamicLayer

        class ReservedLayer(DynamicLayer):
            """A DynamicLayer over a buffer of ``capacity`` positions; ``keys``/``values`` are views of its
            filled part (grown by reallocation only if a call outruns the capacity)."""

            def __init__(self, capacity: int, pool: dict | None = None, index: int = 0):
                super().__init__()
                self.capacity = int(capacity)
                self._k = self._v = None
                self._n = 0
                self._pool, self._index = pool, index

            def _fits(self, got, rows: int, key_states, value_states) -> bool:
                return (got is not None and got[0].shape[0] >= rows and got[0].shape[2] >= self.capacity
                        and got[0].shape[1] == key_states.shape[1] and got[0].shape[3] == key_states.shape[-1]
                        and got[1].shape[3] == value_states.shape[-1] and got[0].dtype == key_states.dtype
                        and got[0].device == key_states.device)

            def _buffers(self, rows: int, key_states, value_states):
                """Zero-copy views of pooled buffers when they are large enough, else new (pooled) ones.

                With a pool, the first layer to need buffers allocates them for EVERY reserved layer of the
                cache in one slab for the keys and one for the values: allocations that large are mmapped by
                glibc, so the caches never sit in the heap between transient activations, whose freed pages
                then stay resident (the stacked decoder's peak memory: docs/performance.md §1)."""
                h, d, dv = key_states.shape[1], key_states.shape[-1], value_states.shape[-1]
                got = self._pool.get(self._index) if self._pool is not None else None
                if not self._fits(got, rows, key_states, value_states):
                    slab = self._pool.get("layers", ()) if self._pool is not None else ()
                    if slab and self._index == slab[0]:  # a new batch's first layer; the others follow
                        keys = key_states.new_empty((len(slab), rows, h, self.capacity, d))
                        values = value_states.new_empty((len(slab), rows, h, self.capacity, dv))
                        for j, i in enumerate(slab):
                            self._pool[i] = (keys[j], values[j])
                        got = self._pool[self._index]
                    else:
                        got = (key_states.new_empty((rows, h, self.capacity, d)),
                               value_states.new_empty((rows, h, self.capacity, dv)))
                        if self._pool is not None:
                            self._pool[self._index] = got
                return got[0][:rows, :, : self.capacity], got[1][:rows, :, : self.capacity]

            def _views(self):
                self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

            def reserve(self, rows: int, key_states, value_states) -> None:
                """Allocate the buffers for ``rows`` batch rows (shapes and dtypes from ``key_states``)."""
                if self._k is None:
                    self.lazy_initialization(key_states, value_states)
                    self._k, self._v = self._buffers(rows, key_states, value_states)

            def block(self, start: int, stop: int, rows: int) -> ReservedLayer:
                """A layer writing into batch rows ``start:stop`` of this one's buffers (``rows`` in all): the
                prefill of one block of a stacked batch, straight into the stacked cache."""
                parent, child = self, ReservedLayer(self.capacity)

                def update(key_states, value_states, *args, **kwargs):
                    parent.reserve(rows, key_states, value_states)
                    if child._k is None:
                        child.lazy_initialization(key_states, value_states)
                        child._k, child._v = parent._k[start:stop], parent._v[start:stop]
                    return ReservedLayer.update(child, key_states, value_states)

                child.update = update
                return child

            def filled(self, n: int) -> None:
                """``n`` positions of every row were written through :meth:`block` layers."""
                self._n = n
                self._views()

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                n = key_states.shape[-2]
                if self._k is None and self._n + n <= self.capacity:
                    self._k, self._v = self._buffers(key_states.shape[0], key_states, value_states)
                elif self._k is None or self._n + n > self._k.shape[-2]:
                    size = (*key_states.shape[:2], max(self.capacity, self._n + n), key_states.shape[-1])
                    k, v = key_states.new_empty(size), value_states.new_empty(size[:3] + value_states.shape[-1:])
                    if self._n:
                        k[:, :, : self._n], v[:, :, : self._n] = self._k[:, :, : self._n], self._v[:, :, : self._n]
                    self._k, self._v = k, v
                self._k[:, :, self._n: self._n + n] = key_states
                self._v[:, :, self._n: self._n + n] = value_states
                self._n += n
                self._views()
                return self.keys, self.values

            def crop(self, tokens_to_remove: int) -> None:
                super().crop(tokens_to_remove)
                if self._k is not None:
                    self._n = self.keys.shape[-2]

            def batch_repeat_interleave(self, repeats: int) -> None:
                if self._n:
                    self._k = self._k.repeat_interleave(repeats, dim=0)
                    self._v = self._v.repeat_interleave(repeats, dim=0)
                    self._views()

            def batch_select_indices(self, indices) -> None:
                if self._n:
                    self._k, self._v = self._k[indices, ...], self._v[indices, ...]
                    self._views()

            def reset(self) -> None:
                self._k = self._v = None
                self._n = 0
                super().reset()

        _RESERVED = ReservedLayer
    return _RESERVED


class _Expert:
    """One expert, one forward: a model to call, optionally the peft adapter to activate first."""

    k = 1

    def __init__(self, model: torch.nn.Module, adapter: str | None = None):
        self.model = model
        self.adapter = adapter
        self.device = _input_device(model)
        self.cache_kw = cache_keyword(model)
        self.has_logits_to_keep = accepts(unwrap_peft(model).forward, "logits_to_keep")
        self.config = unwrap_peft(model).config
        self._set_adapter_inference_mode = adapter is not None and accepts(
            model.set_adapter, "inference_mode"
        )

    def new_cache(self, capacity: int | None = None, pool: dict | None = None):
        return _new_cache(self.config, capacity, pool)

    def select(self, cache, keep: torch.Tensor, n: int) -> None:
        cache.batch_select_indices(keep.to(_cache_device(cache, self.device)))

    def prefill(self, input_ids, attention_mask, position_ids, cache) -> list[torch.Tensor]:
        return self.last_logits(input_ids, attention_mask, position_ids, cache)

    def last_logits(self, input_ids, attention_mask, position_ids, cache) -> list[torch.Tensor]:
        if self.adapter is not None:
            if self._set_adapter_inference_mode:
                self.model.set_adapter(self.adapter, inference_mode=True)  # keep requires_grad off
            else:
                self.model.set_adapter(self.adapter)
        out = self.model(**self._forward_kwargs(input_ids, attention_mask, position_ids, cache))
        return [out.logits[:, -1, :]]

    def _forward_kwargs(self, input_ids, attention_mask, position_ids, cache, repeat: int = 1) -> dict[str, Any]:
        """The keywords of one cached forward that keeps only the last position's logits; the batch repeated
        ``repeat`` times (one block per stacked expert)."""
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.repeat(repeat, 1).to(self.device),
            "attention_mask": attention_mask.repeat(repeat, 1).to(self.device),
            "position_ids": position_ids.repeat(repeat, 1).to(self.device),
            "use_cache": True,
            self.cache_kw: cache,
        }
        if self.has_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return kwargs


class _StackedExperts(_Expert):
    """K LoRA experts of one base in ONE forward: the batch repeated K times, block k through adapter k, one KV
    cache of K x rows (:class:`~ensemw2s.modeling.MultiAdapter`)."""

    def __init__(self, peft_model: torch.nn.Module, names: Sequence[str], impl: str = "grouped"):
        super().__init__(peft_model)
        self.multi = MultiAdapter(peft_model, names, impl)
        self.base = unwrap_peft(peft_model)  # the LoRA layers inside are routed by self.multi
        self.k = len(self.multi)

    def select(self, cache, keep: torch.Tensor, n: int) -> None:
        idx = MultiAdapter.block_rows(keep, n, self.k)
        cache.batch_select_indices(idx.to(_cache_device(cache, self.device)))

    def prefill(self, input_ids, attention_mask, position_ids, cache) -> list[torch.Tensor]:
        """The prompts, one expert (block) at a time, written straight into the stacked cache: the prefill is
        compute-bound, so stacking gains nothing there, and one block at a time keeps its activations those of a
        single model (peak memory). Falls back to one stacked forward for caches with other layer kinds."""
        layers = getattr(cache, "layers", None) or []
        reserved = _reserved_layer_cls()
        if self.k == 1 or not layers or not all(type(layer) is reserved for layer in layers):
            return self.last_logits(input_ids, attention_mask, position_ids, cache)
        import copy

        n = input_ids.shape[0]
        out = []
        for b in range(self.k):
            sub = copy.copy(cache)
            sub.layers = [layer.block(b * n, (b + 1) * n, self.k * n) for layer in layers]
            with self.multi.active(n, block=b):
                out.append(self.base(**self._forward_kwargs(input_ids, attention_mask, position_ids, sub))
                           .logits[:, -1, :])
        for layer in layers:
            layer.filled(input_ids.shape[1])
        return out

    def last_logits(self, input_ids, attention_mask, position_ids, cache) -> list[torch.Tensor]:
        n = input_ids.shape[0]
        with self.multi.active(n):
            out = self.base(**self._forward_kwargs(input_ids, attention_mask, position_ids, cache, self.k))
        return list(out.logits[:, -1, :].view(self.k, n, -1).unbind(0))


class EnsembleDecoder:
    """Greedy token-level weighted ensemble of K causal LMs sharing one tokenizer.

    ``models``: K causal LMs (put in ``eval()``); ``alphas``: K positive expert weights (normalised here);
    ``combine``: ``"prob"`` (weighted probability mixture) or ``"vote"`` (weighted hard vote, ties broken by
    the mixture); ``batch_size``: prompts decoded together (left-padded); ``device``: if given, the models
    are moved there (unless dispatched with a device map) and the mixture is computed there; by default the
    first expert's input device. ``progress``: show a tqdm bar over batches.
    """

    def __init__(self, models: Sequence[torch.nn.Module], alphas: Sequence[float], tokenizer: Any,
                 combine: str = "prob", *, batch_size: int = 16, device: str | torch.device | None = None,
                 progress: bool = False, _adapter_names: Sequence[str] | None = None,
                 _stacked_impl: str | None = None):
        models = list(models)
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.weights = normalise_alphas(alphas, expected=len(models))
        self.combine = check_combine(combine)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size = int(batch_size)
        self.tokenizer = tokenizer
        self.progress = progress
        self.vocab_size = check_same_vocab(models)

        for m in {id(m): m for m in models}.values():
            if device is not None and not getattr(unwrap_peft(m), "hf_device_map", None):
                m.to(device)
            m.eval()
        adapters = list(_adapter_names) if _adapter_names is not None else [None] * len(models)
        # one entry per forward: an expert, or K LoRA experts stacked in one forward
        if _stacked_impl is not None:
            self._experts: list[_Expert] = [_StackedExperts(models[0], adapters, _stacked_impl)]
        else:
            self._experts = [_Expert(m, a) for m, a in zip(models, adapters)]
        self.adapter_names = adapters
        self.mode = "stacked" if _stacked_impl is not None else ("switch" if _adapter_names else "models")
        self.device = torch.device(device) if device is not None else self._experts[0].device
        self.eos_ids = eos_token_ids(models, tokenizer)
        self.pad_id = _pad_id(tokenizer, self.eos_ids)
        self.models = models

    @property
    def num_experts(self) -> int:
        return sum(e.k for e in self._experts)

    # -- LoRA experts sharing one base ------------------------------------------------------------------------

    @classmethod
    def from_lora_adapters(cls, base_model: torch.nn.Module, adapter_dirs: Sequence[str | os.PathLike],
                           alphas: Sequence[float], tokenizer: Any, combine: str = "prob", *, batch_size: int = 16,
                           device: str | torch.device | None = None, progress: bool = False,
                           adapter_names: Sequence[str] | None = None, mode: str = "auto",
                           lora_impl: str = "grouped") -> EnsembleDecoder:
        """K LoRA experts of one base model: one ``PeftModel`` with K named adapters, base weights once.

        ``base_model`` is wrapped in place (peft injects the LoRA layers into it); do not reuse it as a plain
        model afterwards. ``mode``:

        * ``"stacked"``: all K experts in one forward per token, one KV cache for the K x rows batch;
          ``lora_impl`` picks the LoRA arithmetic of that forward (``"grouped"``: ours, ``"peft"``: peft's
          mixed-adapter batches; :class:`~ensemw2s.modeling.MultiAdapter`);
        * ``"merged"`` (K = 1 only): the adapter merged into the base weights, a plain model: no LoRA matmuls
          at all, same memory (K merged experts would need K copies of the base);
        * ``"switch"``: one forward per expert with its adapter switched on, one KV cache each (the path
          before ``stacked``; slower, kept as the reference the stacked path is tested against);
        * ``"auto"`` (default): ``merged`` for one expert, ``stacked`` for more (docs/performance.md §1).
        """
        if mode not in LORA_MODES:
            raise ValueError(f"mode must be one of {', '.join(LORA_MODES)}; got {mode!r}")

        dirs = [os.fspath(d) for d in adapter_dirs]
        if not dirs:
            raise ValueError("adapter_dirs is empty: an ensemble needs at least one expert")
        names = (
            list(adapter_names) if adapter_names is not None else [f"expert_{i}" for i in range(len(dirs))]
        )
        if len(names) != len(dirs) or len(set(names)) != len(names):
            raise ValueError("adapter_names must be unique and one per adapter dir")
        normalise_alphas(alphas, expected=len(dirs))  # fail before loading anything
        if mode == "auto":
            mode = "merged" if len(dirs) == 1 else "stacked"
        if mode == "merged" and len(dirs) != 1:
            raise ValueError(f"mode='merged' merges ONE adapter into the base; {len(dirs)} merged experts would "
                             "need as many copies of the base: use mode='stacked'")
        peft_model = load_lora_adapters(base_model, dirs, names)
        if mode == "merged":
            return cls([peft_model.merge_and_unload()], alphas, tokenizer, combine, batch_size=batch_size,
                       device=device, progress=progress)
        return cls(
            [peft_model] * len(dirs),
            alphas,
            tokenizer,
            combine,
            batch_size=batch_size,
            device=device,
            progress=progress,
            _adapter_names=names,
            _stacked_impl=lora_impl if mode == "stacked" else None,
        )

    # -- decoding ---------------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Decoded continuations (special tokens skipped, whitespace stripped), one per prompt."""
        return [
            self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            for ids in self.generate_ids(prompts, max_new_tokens)
        ]

    def generate_ids(
        self, prompts: Sequence[str], max_new_tokens: int, *, prune: bool = True
    ) -> list[list[int]]:
        """New token ids per prompt (EOS excluded), in the order of ``prompts``.

        ``prune``: drop finished sequences from the batch and the caches (default); with ``prune=False`` they
        stay in the batch and are fed the pad token (same results, kept for caches that cannot be sliced).
        """
        if int(max_new_tokens) < 0:
            raise ValueError(f"max_new_tokens must be >= 0; got {max_new_tokens}")
        encoded = _encode(self.tokenizer, prompts)
        results: list[list[int]] = [[] for _ in encoded]
        if not encoded or int(max_new_tokens) == 0:
            return results
        # longest first: batches of similar length waste less compute on padding
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(encoded), desc="ensemble decoding", unit="prompt")
        try:
            pools: list[dict] = [{} for _ in self._experts]  # KV buffers of the first (longest) batch, reused
            with torch.inference_mode():
                for batch in batches:
                    outs = self._decode_batch([encoded[i] for i in batch], int(max_new_tokens), prune, pools)
                    for i, ids in zip(batch, outs):
                        results[i] = ids
                    if bar is not None:
                        bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return results

    def _decode_batch(self, batch: list[list[int]], max_new_tokens: int, prune: bool,
                      pools: list[dict] | None = None) -> list[list[int]]:
        n = len(batch)
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for row, ids in enumerate(batch):  # left padding
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

        pools = pools or [{} for _ in self._experts]
        caches = [e.new_cache(width + max_new_tokens, pool) for e, pool in zip(self._experts, pools)]
        if prune and not all(callable(getattr(c, "batch_select_indices", None)) for c in caches):
            prune = False
        logits = [
            lg
            for e, c in zip(self._experts, caches)
            for lg in e.prefill(input_ids, attention_mask, position_ids, c)
        ]
        eos = torch.tensor(self.eos_ids if self.eos_ids else [-1], dtype=torch.long, device=self.device)
        out: list[list[int]] = [[] for _ in range(n)]
        rows = torch.arange(n)  # original row of each live batch entry
        finished = torch.zeros(n, dtype=torch.bool)  # rows fed pad (only when not pruning)

        for step in range(max_new_tokens):
            scores = mixture_next_token_scores(
                [lg.to(self.device) for lg in logits], self.weights, self.combine
            )
            next_tok = scores.argmax(dim=-1)
            is_eos = torch.isin(next_tok, eos).cpu()
            next_cpu = next_tok.cpu()
            for j in range(next_cpu.shape[0]):
                if not finished[j] and not is_eos[j]:
                    out[int(rows[j])].append(int(next_cpu[j]))
            done = is_eos | finished
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            if prune:
                if bool(done.any()):
                    keep = (~done).nonzero(as_tuple=True)[0]
                    for e, c in zip(self._experts, caches):
                        e.select(c, keep, done.shape[0])
                    rows, attention_mask, next_cpu = rows[keep], attention_mask[keep], next_cpu[keep]
                    finished = finished[keep]  # all False: the live rows
            else:
                finished = done
                next_cpu = torch.where(finished, torch.full_like(next_cpu, self.pad_id), next_cpu)
            attention_mask = torch.cat(
                [attention_mask, torch.ones((attention_mask.shape[0], 1), dtype=torch.long)], dim=-1
            )
            position_ids = attention_mask.sum(-1, keepdim=True) - 1
            step_ids = next_cpu.unsqueeze(-1)
            logits = [
                lg
                for e, c in zip(self._experts, caches)
                for lg in e.last_logits(step_ids, attention_mask, position_ids, c)
            ]
        return out


def _cache_device(cache: Any, default: torch.device) -> torch.device:
    layers = getattr(cache, "layers", None)
    keys = getattr(layers[0], "keys", None) if layers else None
    return keys.device if isinstance(keys, torch.Tensor) else default


# --------------------------------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------------------------------


def reference_generate_ids(
    models: Sequence[torch.nn.Module],
    alphas: Sequence[float],
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    combine: str = "prob",
) -> list[list[int]]:
    """The obviously-correct ensemble decoder: one prompt at a time, no KV cache, no padding; every expert
    recomputes the whole prefix for every new token. Returns the new token ids (EOS excluded)."""
    models = list(models)
    weights = normalise_alphas(alphas, expected=len(models))
    check_combine(combine)
    check_same_vocab(models)
    eos = set(eos_token_ids(models, tokenizer))
    for m in models:
        m.eval()
    mix_device = _input_device(models[0])
    results: list[list[int]] = []
    with torch.inference_mode():
        for ids in _encode(tokenizer, prompts):
            new: list[int] = []
            for _ in range(int(max_new_tokens)):
                logits = []
                for m in models:
                    x = torch.tensor([ids + new], dtype=torch.long, device=_input_device(m))
                    logits.append(m(input_ids=x, use_cache=False).logits[:, -1, :].float().to(mix_device))
                tok = int(mixture_next_token_scores(logits, weights, combine).argmax(dim=-1)[0])
                if tok in eos:
                    break
                new.append(tok)
            results.append(new)
    return results


__all__ = [
    "COMBINE_MODES",
    "LORA_MODES",
    "EnsembleDecoder",
    "check_combine",
    "check_same_vocab",
    "eos_token_ids",
    "mixture_next_token_scores",
    "reference_generate_ids",
]
