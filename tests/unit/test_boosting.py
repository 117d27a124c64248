"""AdaBoost math on hand-computed cases."""
import math

import numpy as np
import pytest
import torch

from ensemw2s import boosting


def test_token_error_hand_case():
    w = np.array([0.1, 0.2, 0.3, 0.4])
    wrong = np.array([1, 0, 1, 0])
    assert boosting.token_error(w, wrong) == pytest.approx(0.4)


def test_token_error_clipped():
    w = np.full(4, 0.25)
    assert boosting.token_error(w, np.zeros(4)) == pytest.approx(1e-6)
    assert boosting.token_error(w, np.ones(4)) == pytest.approx(1 - 1e-6)


def test_token_error_torch_matches_numpy():
    w = np.random.default_rng(0).dirichlet(np.ones(50))
    wrong = (np.random.default_rng(1).random(50) < 0.3).astype(float)
    assert boosting.token_error(torch.tensor(w), torch.tensor(wrong)) == pytest.approx(boosting.token_error(w, wrong))


def test_alpha_rules_hand_values():
    eps = 0.2
    assert boosting.expert_alpha(eps, "binary") == pytest.approx(0.5 * math.log(4))
    assert boosting.expert_alpha(eps, "samme", vocab_size=11) == pytest.approx(math.log(4) + math.log(10))
    # prior: ln(0.8/0.2) - ln(0.6/0.4)
    assert boosting.expert_alpha(eps, "prior", eps_prior=0.4) == pytest.approx(math.log(4) - math.log(1.5))
    assert boosting.expert_alpha(eps, "uniform") == 1.0


def test_alpha_sign():
    # an expert worse than its own base gets a negative prior alpha; better than chance -> positive binary
    assert boosting.expert_alpha(0.5, "prior", eps_prior=0.3) < 0
    assert boosting.expert_alpha(0.3, "prior", eps_prior=0.5) > 0
    assert boosting.expert_alpha(0.6, "binary") < 0
    assert boosting.expert_alpha(0.5, "binary") == pytest.approx(0.0)


def test_alpha_rule_errors():
    with pytest.raises(ValueError, match="allowed values: binary, prior, samme, uniform"):
        boosting.expert_alpha(0.2, "nope")
    with pytest.raises(ValueError, match="eps_prior"):
        boosting.expert_alpha(0.2, "prior")
    with pytest.raises(ValueError, match="vocab_size"):
        boosting.expert_alpha(0.2, "samme")


def test_update_weights_hand_case():
    w = np.array([0.25, 0.25, 0.25, 0.25])
    wrong = np.array([1, 0, 0, 0])
    alpha = math.log(3)
    new = boosting.update_weights(w, wrong, alpha)
    # 0.25*3 : 0.25 : 0.25 : 0.25 -> 3/6, 1/6, 1/6, 1/6
    assert new == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])
    assert new.sum() == pytest.approx(1.0)


def test_update_weights_torch_and_large_alpha():
    w = torch.full((1000,), 1e-3, dtype=torch.float64)
    wrong = torch.zeros(1000, dtype=torch.float64)
    wrong[:10] = 1
    new = boosting.update_weights(w, wrong, 800.0)  # exp(800) overflows a float64 without log space
    assert torch.isfinite(new).all()
    assert float(new.sum()) == pytest.approx(1.0)
    assert float(new[:10].sum()) == pytest.approx(1.0)


def test_update_weights_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        boosting.update_weights(np.ones(3) / 3, np.ones(4), 1.0)


def test_resample_counts_deterministic_and_sum():
    w = np.random.default_rng(0).dirichlet(np.ones(100))
    a = boosting.resample_counts(w, 100, seed=3)
    b = boosting.resample_counts(w, 100, seed=3)
    assert (a == b).all() and a.sum() == 100


def test_loss_weights_modes_have_mean_one():
    w = np.random.default_rng(0).dirichlet(np.ones(64))
    for mode in ("resample", "weighted"):
        lw = boosting.loss_weights(w, mode, seed=0)
        assert lw.mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="resample, weighted"):
        boosting.loss_weights(w, "bogus", seed=0)
