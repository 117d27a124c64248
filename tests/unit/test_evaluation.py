"""Scoring: shared-prefix option scoring == plain scoring; mixture; PGR; metrics (statistics: test_stats.py)."""
import math

import numpy as np
import pytest

from ensemw2s import evaluation as ev


def _rows():
    from ensemw2s import assets
    from ensemw2s.data import read_jsonl

    return read_jsonl(assets.dataset_file("arc_easy", "test"), strict_choices=False)[:6]


@pytest.mark.parametrize("model_name", ["tiny-weak", pytest.param("gemma3-270m", marks=pytest.mark.slow)])
def test_shared_prefix_option_scoring_equals_plain(tiny_assets, model_name):
    from ensemw2s.modeling import load_causal_lm

    model, tok = load_causal_lm(model_name)
    rows = _rows()
    fast = ev.option_logprobs(model, tok, rows, batch_size=4)
    slow = ev.option_logprobs_reference(model, tok, rows, batch_size=3)
    for r in rows:
        for a, b in zip(fast[r["id"]], slow[r["id"]]):
            assert len(a) == len(b)
            np.testing.assert_allclose(a, b, atol=2e-4)


def test_mixture_of_one_expert_is_its_length_normalised_choice():
    lp = [[[-1.0, -1.0], [-0.5], [-3.0, -0.1, -0.1]]]
    # means: -1.0, -0.5, -1.066 -> option 1
    assert ev.mixture_choice(lp, [1.0]) == 1


def test_mixture_hand_case_two_experts():
    # expert A likes option 0, expert B likes option 1; the alpha-weighted token mixture decides
    a = [[math.log(0.9)], [math.log(0.1)]]
    b = [[math.log(0.2)], [math.log(0.8)]]
    assert ev.mixture_choice([a, b], [0.7, 0.3]) == 0  # 0.69 vs 0.31
    assert ev.mixture_choice([a, b], [0.2, 0.8]) == 1  # 0.34 vs 0.66


def test_pgr():
    assert ev.pgr(0.6, 0.5, 0.7) == pytest.approx(0.5)
    assert ev.pgr(0.6, 0.5, 0.5) is None


def test_build_metrics_keys():
    preds = []
    for model in ("weak_single", "ensemble", "ensemble_r1", "student_single", "student_ensemble", "ceiling"):
        for split in ("easy_test", "hard_test"):
            for i in range(4):
                preds.append({"id": str(i), "model": model, "split": split, "method": "loglik",
                              "correct": i < (3 if model == "ceiling" else 2)})
    m = ev.build_metrics(preds, primary="loglik", extra={"rounds": 1, "alphas": [1.0]})
    assert m["ceiling_acc_ood"] == 0.75 and m["weak_single_acc_id"] == 0.5
    assert m["ensemble_acc_ood_by_round"] == [0.5]
    assert m["pgr_single"] == pytest.approx(0.0)
    assert "paired_ensemble_minus_single_ood_diff" in m
    # same answers: no difference, no discordant pair (ensemw2s.stats.paired_test)
    assert m["paired_ensemble_minus_single_ood_diff"] == 0.0 and m["paired_ensemble_minus_single_ood_n"] == 4
    assert m["paired_ensemble_minus_single_ood_mcnemar_p"] == 1.0
