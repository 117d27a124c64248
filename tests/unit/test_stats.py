"""ensemw2s.stats: the one implementation of each statistic (SE, paired SE, bootstrap, McNemar, mean ± std)."""
import math

import numpy as np
import pytest

from ensemw2s import stats


def test_se_of_an_accuracy_is_the_binomial_plug_in_with_a_floor_of_zero():
    assert stats.se(0.5, 100) == pytest.approx(0.05)
    assert stats.se(0.9, 400) == pytest.approx(math.sqrt(0.09 / 400))
    assert stats.se(1.0, 50) == 0.0 and stats.se(0.0, 50) == 0.0  # no epsilon floor
    with pytest.raises(ValueError, match="n must be >= 1"):
        stats.se(0.5, 0)


def test_paired_se_is_the_sample_std_of_the_differences_over_sqrt_n():
    a, b = [1, 1, 0, 1, 0, 1], [1, 0, 0, 0, 1, 1]
    d = np.asarray(a, float) - np.asarray(b, float)
    assert stats.paired_se(a, b) == pytest.approx(d.std(ddof=1) / math.sqrt(d.size))
    assert stats.paired_se([1, 0, 1, 0], [1, 0, 1, 0]) == 0.0
    assert math.isnan(stats.paired_se([1], [0]))
    with pytest.raises(ValueError, match="one length"):
        stats.paired_se([1, 0], [1])


def test_stratified_paired_se_is_the_se_of_the_mean_of_the_stratum_means():
    d1, d2 = np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0, -1.0, 1.0])
    want = math.sqrt(d1.var(ddof=1) / 4 + d2.var(ddof=1) / 5) / 2
    assert stats.stratified_paired_se([d1, d2]) == pytest.approx(want)
    assert stats.stratified_paired_se([d1]) == pytest.approx(stats.paired_se([1, 0, 1, 0], [0, 0, 0, 0]))
    assert math.isnan(stats.stratified_paired_se([d1, np.array([1.0])]))  # a stratum of one pair
    assert math.isnan(stats.stratified_paired_se([]))


def test_paired_bootstrap_and_mcnemar():
    a = [True] * 60 + [False] * 40
    b = [True] * 50 + [False] * 50
    res = stats.paired_bootstrap(a, b, seed=0)
    assert set(res) == {"diff", "ci_low", "ci_high", "n"} and res["n"] == 100
    assert res["diff"] == pytest.approx(0.10)
    assert res["ci_low"] <= 0.10 <= res["ci_high"] and res["ci_low"] >= 0.0  # every discordant pair favours a
    assert stats.paired_bootstrap(a, b, seed=0) == res  # seeded: reproducible
    # 10 discordant pairs all in one direction: p = 2 * 0.5^10
    assert stats.mcnemar_p(a, b) == pytest.approx(2 * 0.5 ** 10)
    assert stats.mcnemar_p(b, a) == stats.mcnemar_p(a, b)
    assert stats.mcnemar_p(a, a) == 1.0
    # 5 against 5: as balanced as it gets
    assert stats.mcnemar_p([1] * 5 + [0] * 5, [0] * 5 + [1] * 5) == 1.0
    with pytest.raises(ValueError, match="no paired questions"):
        stats.paired_bootstrap([], [])
    t = stats.paired_test(a, b, seed=0)
    assert t == {**res, "mcnemar_p": stats.mcnemar_p(a, b)}


def test_one_stratum_bootstrap_is_the_paired_bootstrap():
    rng = np.random.default_rng(3)
    a, b = rng.random(80) < 0.6, rng.random(80) < 0.5
    one = stats.stratified_bootstrap([a.astype(float) - b.astype(float)], n_boot=500, seed=7)
    plain = stats.paired_bootstrap(a, b, n_boot=500, seed=7)
    assert {k: one[k] for k in plain} == plain and one["per_stratum"] == [plain["diff"]]


def test_stratified_bootstrap_keeps_seeds_apart():
    d0, d1 = np.ones(50), np.zeros(50)  # seed 0: A always better; seed 1: no difference
    res = stats.stratified_bootstrap([d0, d1], n_boot=300)
    assert res["per_stratum"] == [1.0, 0.0] and res["diff"] == 0.5 and res["n"] == 100
    assert res["ci_low"] == res["ci_high"] == 0.5  # no within-seed variance: mixing seeds would invent some


def test_mean_std_uses_the_sample_std_and_skips_undefined_values():
    assert stats.mean_std([0.5, None, 0.7]) == (pytest.approx(0.6), pytest.approx(0.1414, abs=1e-3), 2)
    assert stats.mean_std([None]) == (None, None, 0)
    assert stats.mean_std([]) == (None, None, 0)
    assert stats.mean_std([0.4]) == (0.4, 0.0, 1)
    m, s, k = stats.mean_std([1, 2, 3, 4])
    assert (m, k) == (2.5, 4) and s == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    # NaN, inf, booleans and strings are not measurements
    assert stats.mean_std([0.2, float("nan"), float("inf"), True, "0.9", np.float32(0.4)])[::2] == (
        pytest.approx(0.3), 2)
