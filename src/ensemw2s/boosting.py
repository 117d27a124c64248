"""Token-level AdaBoost math (DESIGN.md §4.2), as pure functions.

All functions accept numpy arrays or torch tensors and return the same kind. ``weights`` is the distribution
D_t over the n answer tokens of the weak training set (flattened, sums to 1); ``wrong`` is the indicator
1[argmax h_t(. | x_i, y_i<j) != y_ij] for the same tokens.

Alpha rules (registry :data:`ALPHA_RULES`, extended with :func:`register_alpha_rule`):

- ``prior`` (default): ``ln((1-eps)/eps) - ln((1-eps_p)/eps_p)``; eps_p is the weighted token error of the
  un-fine-tuned base model under the same D_t. A fine-tuned expert only earns weight for beating its own base.
- ``samme``: ``ln((1-eps)/eps) + ln(V-1)`` (multi-class AdaBoost, Zhu et al. 2009) with V = vocabulary size.
- ``binary``: ``0.5 ln((1-eps)/eps)`` (Freund & Schapire), the classification variant of the paper.
- ``uniform``: 1.0 for every expert, i.e. plain averaging — an ablation, not a boosting rule.

On a clone of the previous expert (same errors), SAMME gives alpha 0: after :func:`update_weights` the clone's
weighted error is exactly (V-1)/V. ``binary`` (half SAMME's step in the same update) halves it; ``prior`` keeps it
positive (it compares with the base model's error under the new weights), which lets near-copies keep a share
of the vote (tests/unit/test_boosting_clone.py).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np

EPS_CLIP = 1e-6


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _as_float(x) -> float:
    return float(x.item()) if hasattr(x, "item") else float(x)


def _check_pair(weights, wrong) -> None:
    if tuple(weights.shape) != tuple(wrong.shape):
        raise ValueError(f"weights and wrong must have the same shape, got {tuple(weights.shape)} "
                         f"and {tuple(wrong.shape)}")
    if weights.shape[0] == 0:
        raise ValueError("weights is empty: the weak training set has no answer tokens")


def uniform_weights(n: int) -> np.ndarray:
    """D_1: 1/n on each of the n answer tokens."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    return np.full(n, 1.0 / n, dtype=np.float64)


def clip_eps(eps: float) -> float:
    return min(max(float(eps), EPS_CLIP), 1.0 - EPS_CLIP)


def token_error(weights, wrong) -> float:
    """Weighted token error ``eps = sum_ij D(i,j) * wrong(i,j)``, clipped to [1e-6, 1 - 1e-6]."""
    _check_pair(weights, wrong)
    if _is_torch(weights):
        total = (weights.double() * wrong.double()).sum()
    else:
        total = np.sum(np.asarray(weights, dtype=np.float64) * np.asarray(wrong, dtype=np.float64))
    return clip_eps(_as_float(total))


def _logit(eps: float) -> float:
    eps = clip_eps(eps)
    return math.log((1.0 - eps) / eps)


def _alpha_prior(eps: float, *, vocab_size=None, eps_prior=None) -> float:
    if eps_prior is None:
        raise ValueError("alpha rule 'prior' needs eps_prior (the base model's weighted token error)")
    return _logit(eps) - _logit(eps_prior)


def _alpha_samme(eps: float, *, vocab_size=None, eps_prior=None) -> float:
    if vocab_size is None or vocab_size < 2:
        raise ValueError(f"alpha rule 'samme' needs vocab_size >= 2, got {vocab_size!r}")
    return _logit(eps) + math.log(vocab_size - 1)


def _alpha_binary(eps: float, *, vocab_size=None, eps_prior=None) -> float:
    return 0.5 * _logit(eps)


def _alpha_uniform(eps: float, *, vocab_size=None, eps_prior=None) -> float:
    return 1.0


ALPHA_RULES: dict[str, Callable[..., float]] = {}


def register_alpha_rule(name: str, fn: Callable[..., float]) -> None:
    """Add an alpha rule ``fn(eps, *, vocab_size, eps_prior) -> float``."""
    ALPHA_RULES[name] = fn


register_alpha_rule("prior", _alpha_prior)
register_alpha_rule("samme", _alpha_samme)
register_alpha_rule("binary", _alpha_binary)
register_alpha_rule("uniform", _alpha_uniform)


def expert_alpha(eps: float, rule: str = "prior", *, vocab_size: Optional[int] = None,
                 eps_prior: Optional[float] = None) -> float:
    """Weight of an expert with weighted token error ``eps`` under ``rule`` (see module docstring)."""
    if rule not in ALPHA_RULES:
        raise ValueError(f"unknown alpha rule {rule!r}; allowed values: {', '.join(sorted(ALPHA_RULES))}")
    return float(ALPHA_RULES[rule](float(eps), vocab_size=vocab_size, eps_prior=eps_prior))


def update_weights(weights, wrong, alpha: float):
    """``D_{t+1}(i,j) ∝ D_t(i,j) * exp(alpha * wrong(i,j))``, normalised to sum 1.

    Computed in log space so a large alpha (SAMME gives ~12) cannot overflow.
    """
    _check_pair(weights, wrong)
    if _is_torch(weights):
        import torch

        logw = torch.log(weights.double().clamp_min(1e-300)) + float(alpha) * wrong.double()
        out = torch.softmax(logw, dim=0)
        return out.to(weights.dtype) if weights.dtype.is_floating_point else out
    w = np.asarray(weights, dtype=np.float64)
    logw = np.log(np.clip(w, 1e-300, None)) + float(alpha) * np.asarray(wrong, dtype=np.float64)
    logw -= logw.max()
    out = np.exp(logw)
    return out / out.sum()


def resample_counts(weights, n_draws: int, seed: int) -> np.ndarray:
    """Draw ``n_draws`` token positions with replacement by D_t; return how often each was drawn.

    The counts become per-token loss weights in ``resample`` mode (undrawn tokens are masked out).
    """
    w = np.asarray(weights.detach().cpu().numpy() if _is_torch(weights) else weights, dtype=np.float64)
    if n_draws <= 0:
        raise ValueError(f"n_draws must be > 0, got {n_draws}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_draws, w / w.sum()).astype(np.float64)


def loss_weights(weights, mode: str, seed: int) -> np.ndarray:
    """Per-token loss weights for training an expert on D_t (mean 1 over the n tokens).

    ``resample``: draw n positions by D_t, weight = draw count. ``weighted``: weight = n * D_t.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    if mode == "resample":
        return resample_counts(w, n, seed)
    if mode == "weighted":
        return w * n / w.sum()
    raise ValueError(f"unknown sampling mode {mode!r}; allowed values: resample, weighted")


def answer_level_wrong(chose_wrong: Sequence[bool], n_tokens: Sequence[int]) -> np.ndarray:
    """``boosting.error: answer``: the flat token ``wrong`` vector when a question counts as one answer: every
    one of its ``n_tokens[i]`` answer tokens is wrong (1.0) when the model chose a wrong option on it
    (``chose_wrong[i]``), right (0.0) otherwise."""
    if len(chose_wrong) != len(n_tokens):
        raise ValueError(f"{len(chose_wrong)} option choices for {len(n_tokens)} questions")
    return np.concatenate([np.full(int(n), 1.0 if bad else 0.0) for bad, n in zip(chose_wrong, n_tokens)]
                          or [np.zeros(0)])


def next_weights(weights, wrong, alpha: float, method: str = "adaboost"):
    """D_{t+1} under ``boosting.method``: ``adaboost`` = :func:`update_weights`; ``bagging`` (the control) =
    ``weights`` unchanged, so every round resamples the same uniform D_1."""
    if method == "adaboost":
        return update_weights(weights, wrong, alpha)
    if method == "bagging":
        _check_pair(weights, wrong)
        return weights
    raise ValueError(f"unknown boosting method {method!r}; allowed values: adaboost, bagging")


def normalise_alphas(alphas: Sequence[float], expected: int | None = None) -> list[float]:
    """``a_t = alpha_t / sum(alpha)``.

    Raises ValueError when ``alphas`` is empty, when an alpha is not a finite number > 0, or when
    ``expected`` (the number of experts) is given and differs from ``len(alphas)``.
    """
    values = list(alphas)
    if not values:
        raise ValueError("alphas is empty: an ensemble needs at least one expert weight")
    if expected is not None and len(values) != expected:
        raise ValueError(
            f"got {len(values)} alphas for {expected} experts; need exactly one alpha per expert"
        )
    out: list[float] = []
    for i, a in enumerate(values):
        try:
            f = float(a)
        except (TypeError, ValueError):
            raise ValueError(f"alpha[{i}] = {a!r} is not a number") from None
        if not math.isfinite(f) or f <= 0.0:
            raise ValueError(
                f"alpha[{i}] = {a!r}: every expert weight must be a finite number > 0 "
                "(AdaBoost rounds with alpha <= 0 must be dropped before decoding)"
            )
        out.append(f)
    total = math.fsum(out)
    return [f / total for f in out]
