"""Expert diagnostics (ensemw2s.diagnostics) against a small case computed by hand."""
import pytest

from ensemw2s.diagnostics import (
    diagnostics_metrics,
    disagreement,
    expert_rounds,
    oracle_accuracy,
    render_diagnostics,
    weight_stats,
)

# 4 OOD questions, 3 experts: (chosen option of r1, r2, r3) and the gold option
CASE = {"q1": ((0, 0, 1), 0), "q2": ((0, 1, 1), 1), "q3": ((0, 0, 0), 2), "q4": ((1, 0, 2), 0)}


def _preds(split="hard_test"):
    out = []
    for qid, (chosen, gold) in CASE.items():
        for t, k in enumerate(chosen, start=1):
            out.append({"id": qid, "model": f"expert_r{t}", "split": split, "method": "loglik", "output": str(k),
                        "chosen": k, "correct": k == gold})
    return out


def test_disagreement_and_oracle_by_hand():
    p = _preds()
    # r1 vs r2 differ on q2, q4; r1 vs r3 on q1, q2, q4; r2 vs r3 on q1, q4
    assert disagreement(p, "expert_r1", "expert_r2", "hard_test") == 0.5
    assert disagreement(p, "expert_r1", "expert_r3", "hard_test") == 0.75
    assert disagreement(p, "expert_r2", "expert_r3", "hard_test") == 0.5
    # someone is right on q1 (r1, r2), q2 (r2, r3), q4 (r2); nobody on q3
    assert oracle_accuracy(p, ["expert_r1", "expert_r2", "expert_r3"], "hard_test") == 0.75
    assert oracle_accuracy(p, ["expert_r1"], "hard_test") == 0.25  # one expert: its own accuracy
    assert disagreement(p, "expert_r1", "expert_r2", "easy_test") is None  # nothing on that split


def test_metrics_keys_and_clones():
    p = _preds() + _preds("easy_test")
    # a clone of r1 as round 4: disagrees with r1 on nothing and adds nothing to the oracle
    p += [{**x, "model": "expert_r4"} for x in p if x["model"] == "expert_r1"]
    m = diagnostics_metrics(p)
    assert expert_rounds(p) == [1, 2, 3, 4] and m["diag_rounds"] == [1, 2, 3, 4]
    assert m["disagree_r1_r4_ood"] == 0.0 and m["disagree_r1_r3_id"] == 0.75
    assert m["oracle_acc_ood"] == 0.75 and m["oracle_acc_id"] == 0.75
    # pairs: r1r2 .5, r1r3 .75, r1r4 0, r2r3 .5, r2r4 .5, r3r4 .75
    assert m["mean_disagreement_ood"] == pytest.approx((0.5 + 0.75 + 0 + 0.5 + 0.5 + 0.75) / 6)
    assert diagnostics_metrics([{"id": "a", "model": "ensemble", "split": "hard_test", "method": "loglik",
                                 "chosen": 0, "correct": True}]) == {}


def test_weight_stats_by_hand():
    # D = (.25, .25, .5): sum D^2 = .375, ESS = 8/3 of n = 3 tokens; two of three tokens drawn
    s = weight_stats([1.0, 1.0, 2.0], [0, 2, 1])
    assert s["weights_ess"] == pytest.approx(8 / 9) and s["drawn_fraction"] == pytest.approx(2 / 3)
    assert weight_stats([0.2] * 5) == {"weights_ess": pytest.approx(1.0), "drawn_fraction": 1.0}
    with pytest.raises(ValueError, match="non-negative"):
        weight_stats([1.0, -1.0])


def test_report_section():
    p = _preds() + _preds("easy_test")
    m = {**diagnostics_metrics(p), "alphas": [1.2, 0.8, 0.5], "eps": [0.1, 0.2, 0.3], "eps_prior": [0.4, 0.4, 0.5],
         "weights_ess": [1.0, 0.9, 0.7], "drawn_fraction": [0.63, 0.6, 0.55], "expert_r2_acc_ood": 0.75}
    text = "\n".join(render_diagnostics(m))
    assert "| 2 | 0.200 | 0.400 | 0.800 | 0.900 | 0.600 | — | 0.750 |" in text
    assert "Oracle accuracy (any expert right), OOD: 0.750; mean pairwise disagreement: 0.583" in text
    assert "| r1 | · | 0.500 | 0.750 |" in text  # OOD above the diagonal
    assert "not recorded" in "\n".join(render_diagnostics({})).lower()


# 3 experts x 5 questions per split, written out: (chosen option of r1, r2, r3) and the gold option; None = the
# expert did not answer that question (disagreement is over the questions both answered, the oracle over the
# questions every expert answered)
HAND_ID = {"i1": ((0, 0, 0), 0), "i2": ((1, 0, 1), 0), "i3": ((2, 2, 1), 3), "i4": ((0, 1, 2), 2),
           "i5": ((3, 3, 3), 1)}
HAND_OOD = {"o1": ((0, 1, 1), 1), "o2": ((2, 2, 2), 2), "o3": ((0, 0, 3), 3), "o4": ((1, 1, 1), 0),
            "o5": ((0, 2, None), 0)}


def hand_predictions() -> list[dict]:
    out = []
    for split, case in (("easy_test", HAND_ID), ("hard_test", HAND_OOD)):
        for qid, (chosen, gold) in case.items():
            for t, k in enumerate(chosen, start=1):
                if k is not None:
                    out.append({"id": qid, "model": f"expert_r{t}", "split": split, "method": "loglik",
                                "output": str(k), "chosen": k, "correct": k == gold})
    return out


def test_three_experts_five_questions_by_hand():
    m = diagnostics_metrics(hand_predictions())
    # ID: r1/r2 differ on i2, i4 (2/5); r1/r3 on i3, i4 (2/5); r2/r3 on i2, i3, i4 (3/5)
    assert m["disagree_r1_r2_id"] == pytest.approx(2 / 5)
    assert m["disagree_r1_r3_id"] == pytest.approx(2 / 5)
    assert m["disagree_r2_r3_id"] == pytest.approx(3 / 5)
    assert m["mean_disagreement_id"] == pytest.approx((0.4 + 0.4 + 0.6) / 3)
    # someone right on i1 (all), i2 (r2), i4 (r3); nobody on i3, i5
    assert m["oracle_acc_id"] == pytest.approx(3 / 5)
    # OOD: r3 skipped o5. r1/r2 differ on o1, o5 (2/5); r1/r3 on o1, o3 of o1..o4 (2/4); r2/r3 on o3 (1/4)
    assert m["disagree_r1_r2_ood"] == pytest.approx(2 / 5)
    assert m["disagree_r1_r3_ood"] == pytest.approx(2 / 4)
    assert m["disagree_r2_r3_ood"] == pytest.approx(1 / 4)
    assert m["mean_disagreement_ood"] == pytest.approx((0.4 + 0.5 + 0.25) / 3)
    # over o1..o4 (all three answered): right on o1 (r2, r3), o2 (all), o3 (r3); nobody on o4; o5 left out
    assert m["oracle_acc_ood"] == pytest.approx(3 / 4)
    # the oracle of one expert is its own accuracy: r1 alone is right on i1 only
    assert oracle_accuracy(hand_predictions(), ["expert_r1"], "easy_test") == pytest.approx(1 / 5)
