"""Alpha rules on a clone of the previous expert, and the boosting study's controls (issue 23 §2).

A clone makes the same token errors as the expert before it. After our update D_{t+1} ∝ D_t·exp(alpha_t·wrong),
SAMME's clone has weighted error exactly (V-1)/V and gets alpha 0: a copy adds no vote. ``binary`` uses half
SAMME's step (0.5·logit) in the same update, so it only halves the clone's alpha (textbook binary AdaBoost
reaches 1/2 with exp(±alpha), a ratio of exp(2·alpha)). ``prior`` compares with the base model's error under
D_{t+1}, and a clone keeps a positive alpha: the reason near-copies share the vote in our runs.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ensemw2s import boosting
from ensemw2s.config import BoostingConfig, ConfigError, config_hash, load_config
from ensemw2s.steps import keys

V = 49152  # SmolLM2's vocabulary size


def _round(rule: str, weights, wrong, base_wrong):
    eps = boosting.token_error(weights, wrong)
    eps_p = boosting.token_error(weights, base_wrong)
    return boosting.expert_alpha(eps, rule, vocab_size=V, eps_prior=eps_p)


@pytest.fixture
def tokens():
    rng = np.random.default_rng(7)
    n = 400
    wrong = (rng.random(n) < 0.3).astype(float)  # the round-t expert: 30 % of tokens wrong
    base_wrong = np.maximum(wrong, rng.random(n) < 0.5).astype(float)  # the base is wrong wherever it is, and more
    return boosting.uniform_weights(n), wrong, base_wrong


def test_a_clone_of_the_previous_expert_gets_alpha_zero_under_samme(tokens):
    d1, wrong, base_wrong = tokens
    alpha1 = _round("samme", d1, wrong, base_wrong)
    assert alpha1 > 0
    d2 = boosting.update_weights(d1, wrong, alpha1)
    assert boosting.token_error(d2, wrong) == pytest.approx((V - 1) / V, abs=1e-9)
    assert _round("samme", d2, wrong, base_wrong) == pytest.approx(0.0, abs=1e-6)


def test_binary_halves_a_clones_alpha_in_our_update(tokens):
    d1, wrong, base_wrong = tokens
    alpha1 = _round("binary", d1, wrong, base_wrong)
    d2 = boosting.update_weights(d1, wrong, alpha1)
    # eps' = eps·e^a / (eps·e^a + 1 - eps) with e^a = sqrt((1-eps)/eps)  =>  logit(eps') = logit(eps) / 2
    assert _round("binary", d2, wrong, base_wrong) == pytest.approx(alpha1 / 2, rel=1e-9)


def test_the_prior_rule_gives_a_clone_a_positive_alpha(tokens):
    d1, wrong, base_wrong = tokens
    alpha1 = _round("prior", d1, wrong, base_wrong)
    d2 = boosting.update_weights(d1, wrong, alpha1)
    clone = _round("prior", d2, wrong, base_wrong)
    assert 0 < clone < alpha1  # less than the original, but a real share of the vote


def test_bagging_keeps_the_weights_uniform(tokens):
    d1, wrong, _ = tokens
    assert np.array_equal(boosting.next_weights(d1, wrong, 3.0, "bagging"), d1)
    assert np.allclose(boosting.next_weights(d1, wrong, 3.0, "adaboost"), boosting.update_weights(d1, wrong, 3.0))
    with pytest.raises(ValueError, match="allowed values: adaboost, bagging"):
        boosting.next_weights(d1, wrong, 3.0, "boost")


def test_answer_level_error_marks_every_token_of_a_wrong_question():
    got = boosting.answer_level_wrong([True, False, True], [2, 3, 1])
    assert got.tolist() == [1, 1, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="2 option choices for 3 questions"):
        boosting.answer_level_wrong([True, False], [2, 3, 1])


def test_new_boosting_settings_are_checked():
    with pytest.raises(ConfigError, match=r"boosting.method: .*allowed values: adaboost, bagging"):
        load_config("configs/tiny.yaml", ["boosting.method=bag"])
    with pytest.raises(ConfigError, match=r"boosting.error: .*allowed values: token, answer|answer, token"):
        load_config("configs/tiny.yaml", ["boosting.error=question"])
    with pytest.raises(ConfigError, match="'bagging' needs boosting.sampling 'resample'"):
        load_config("configs/tiny.yaml", ["boosting.method=bagging", "boosting.sampling=weighted"])


def test_settings_at_their_default_leave_old_hashes_unchanged():
    """Runs stored before method/error/student.enabled existed stay reusable (resume, --from-run)."""
    b = BoostingConfig()
    old = {k: v for k, v in dataclasses.asdict(b).items() if k not in ("method", "error")}
    assert config_hash({"boosting": b}) == config_hash({"boosting": old})
    assert config_hash({"boosting": dataclasses.replace(b, method="bagging")}) != config_hash({"boosting": b})
    cfg = load_config("configs/tiny.yaml")
    student = {k: v for k, v in dataclasses.asdict(cfg.student).items() if k != "enabled"}
    assert config_hash({"student": cfg.student}) == config_hash({"student": student})


def test_a_run_without_the_student_stage_has_only_the_expert_steps():
    full, experts_only = keys.run_steps(2), keys.run_steps(2, students=False)
    assert len(full) == 17 and len(experts_only) == 8
    assert not [k for k in experts_only if k.startswith(("pseudo_label", "train_student", "evaluate-student"))]
    assert [flag for flag, _, _ in experts_only[keys.REPORT].inputs] == ["--eval-experts"]
    cfg = load_config("configs/tiny.yaml", ["student.enabled=false"])
    assert keys.students_enabled(cfg) is False and keys.students_enabled({"student": {"enabled": False}}) is False
    assert keys.students_enabled({}) is True  # a run stored before the setting existed
