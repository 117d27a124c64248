"""The statistics of the project, one implementation each: standard errors, paired tests, mean ± std.

Used by the evaluation (per-run paired differences in ``metrics.json``), the compare step (mean ± std over
seeds of a grid point), the plot by round and the results page (``benchmarks/science``). Conventions:

- **accuracy SE** (:func:`se`): the binomial plug-in ``sqrt(p (1 - p) / n)``, floored at exactly 0 (an accuracy
  of 0 or 1 has SE 0; no artificial epsilon, callers that divide by it check for 0);
- **paired SE** (:func:`paired_se`, :func:`stratified_paired_se`): sample std (``ddof=1``) of the per-question
  differences / sqrt(n); over strata (seeds), the SE of the mean of the per-stratum means;
- **bootstrap** (:func:`paired_bootstrap`, :func:`stratified_bootstrap`): 95 % percentile interval, questions
  resampled with replacement within each stratum (seeds are never mixed), fixed ``seed`` for the RNG;
- **McNemar** (:func:`mcnemar_p`): exact two-sided binomial test on the discordant pairs;
- **accuracy interval** (:func:`wilson_interval`): the 95 % Wilson score interval of a binomial proportion (it
  stays inside [0, 1] and is not degenerate at 0 or 1 correct, unlike ``acc ± 1.96 se``);
- **mean ± std over seeds** (:func:`mean_std`): sample std (``ddof=1``), 0.0 for a single value; undefined values
  (None, NaN, inf, booleans, non-numbers) are left out and the count of those kept is returned.

Imports numpy and math only.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Sequence

import numpy as np


def se(acc: float, n: int) -> float:
    """Standard error of an accuracy ``acc`` measured on ``n`` questions (binomial plug-in, floor 0)."""
    if n < 1:
        raise ValueError(f"se: n must be >= 1 questions, got {n}")
    return math.sqrt(max(acc * (1.0 - acc), 0.0) / n)


Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(acc: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval ``(low, high)`` of an accuracy ``acc`` measured on ``n`` questions."""
    if n < 1:
        raise ValueError(f"wilson_interval: n must be >= 1 questions, got {n}")
    if not 0.0 <= acc <= 1.0:
        raise ValueError(f"wilson_interval: an accuracy is in [0, 1], got {acc}")
    z2 = z * z
    centre = (acc + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(acc * (1 - acc) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _diffs(a: Sequence, b: Sequence) -> np.ndarray:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be two flat sequences of one length, got {x.shape} and {y.shape}")
    return x - y


def stratified_paired_se(diffs: Sequence[Sequence[float]]) -> float:
    """SE of the mean over strata of the per-stratum mean differences (each stratum: sample std / sqrt(n)).

    NaN when there is no stratum or a stratum has fewer than 2 pairs (its variance cannot be estimated)."""
    ds = [np.asarray(d, dtype=np.float64) for d in diffs]
    if not ds or any(d.size < 2 for d in ds):
        return float("nan")
    return math.sqrt(sum(d.var(ddof=1) / d.size for d in ds)) / len(ds)


def paired_se(a: Sequence, b: Sequence) -> float:
    """Standard error of mean(a - b) over the same questions (NaN for fewer than 2 pairs)."""
    return stratified_paired_se([_diffs(a, b)])


def stratified_bootstrap(diffs: Sequence[Sequence[float]], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over strata of the per-stratum mean difference, with a 95 % percentile bootstrap interval that
    resamples the pairs within each stratum. Returns ``diff``, ``ci_low``, ``ci_high``, ``n`` (pairs) and
    ``per_stratum`` (each stratum's mean)."""
    ds = [np.asarray(d, dtype=np.float64) for d in diffs]
    if not ds or any(d.size == 0 for d in ds):
        raise ValueError("bootstrap: no paired questions")
    rng = np.random.default_rng(seed)
    boots = np.zeros(n_boot)
    for d in ds:
        boots += d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    boots /= len(ds)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    per = [float(d.mean()) for d in ds]
    return {"diff": float(np.mean(per)), "ci_low": float(lo), "ci_high": float(hi),
            "n": int(sum(d.size for d in ds)), "per_stratum": per}


def paired_bootstrap(a: Sequence, b: Sequence, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of a - b over the same questions with a 95 % percentile bootstrap interval (``diff``, ``ci_low``,
    ``ci_high``, ``n``)."""
    res = stratified_bootstrap([_diffs(a, b)], n_boot=n_boot, seed=seed)
    del res["per_stratum"]
    return res


def mcnemar_p(a: Sequence, b: Sequence) -> float:
    """Exact two-sided McNemar p-value (binomial on the discordant pairs); 1.0 without discordant pairs."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n01, n10 = int(np.sum(~a & b)), int(np.sum(a & ~b))
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(min(1.0, 2 * p))


def paired_test(a: Sequence, b: Sequence, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """:func:`paired_bootstrap` of ``a - b`` plus ``mcnemar_p``: the paired comparison of two models' per-question
    correctness on the same questions."""
    return {**paired_bootstrap(a, b, n_boot=n_boot, seed=seed), "mcnemar_p": mcnemar_p(a, b)}


def _defined(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def mean_std(xs: Sequence) -> tuple[Optional[float], Optional[float], int]:
    """``(mean, sample std, k)`` of the defined values of ``xs`` (see the module docstring); ``(None, None, 0)``
    when none is defined."""
    v = [float(x) for x in xs if _defined(x)]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0), len(v)
