"""The boosting study's page section (benchmarks/science/study_page.py): hand-computed disagreement and oracle,
the gate's four verdicts, and the section rendered from a small record book."""
from __future__ import annotations

import pytest
from benchmarks.science import study_page as sp
from benchmarks.science.study import plan_study, study_table

IDS = ["q1", "q2", "q3", "q4", "q5"]
GOLD = [0, 0, 0, 0, 0]
# chosen options of three experts on five questions (gold: option 0 everywhere)
CHOSEN = {"expert_r1": [0, 0, 1, 2, 0], "expert_r2": [0, 1, 1, 2, 0], "expert_r3": [0, 0, 2, 0, 1]}
# by hand: r1-r2 differ on q2 (1/5); r1-r3 on q3, q4, q5 (3/5); r2-r3 on q2..q5 (4/5) -> mean 1.6/3
# oracle: q1 (all), q2 (r1, r3), q3 (none), q4 (r3), q5 (r1, r2) -> 4/5


def _preds(model: str, chosen: list[int], split: str) -> list[dict]:
    return [{"id": i, "model": model, "split": split, "method": "loglik", "chosen": k, "correct": k == g,
             "output": ""} for i, k, g in zip(IDS, chosen, GOLD)]


def _run(arm: str, seed: int = 0, *, experts=CHOSEN, ensemble=(0, 0, 1, 0, 0), single=(0, 1, 1, 2, 0)) -> dict:
    preds = []
    for split in ("easy_test", "hard_test"):
        for m, ch in experts.items():
            preds += _preds(m, ch, split)
        preds += _preds(f"ensemble_r{len(experts)}", list(ensemble), split)
        preds += _preds("ensemble", list(ensemble), split)
        preds += _preds("weak_single", list(single), split)
    preds += _preds("ensemble", list(ensemble), "easy_val")  # the split T is chosen on
    metrics = {"n_id": 5, "n_ood": 5, "rounds": len(experts), "eps": [0.4, 0.45, 0.47], "alphas": [1.0, 0.8, 0.7],
               "weights_ess": [1.0, 0.9, 0.8]}
    return {"arm": arm, "seed": seed, "run_id": f"sci-study-{arm}-s{seed}", "overrides": [], "label": arm,
            "metrics": metrics, "work_seconds": {"split_data": 1.0}, "table": study_table(preds)}


def test_disagreement_and_oracle_match_the_hand_computed_case():
    run = _run("ensemw2s")
    assert sp.disagreement(run, "expert_r1", "expert_r2", "hard_test") == pytest.approx(0.2)
    assert sp.disagreement(run, "expert_r1", "expert_r3", "hard_test") == pytest.approx(0.6)
    assert sp.disagreement(run, "expert_r2", "expert_r3", "hard_test") == pytest.approx(0.8)
    assert sp.mean_disagreement(run, "hard_test") == pytest.approx(1.6 / 3)
    assert sp.oracle(run, "hard_test") == pytest.approx(0.8)
    assert sp.accuracy(run, "expert_r3", "easy_test") == pytest.approx(0.6)


def _d(diff, lo, hi):
    return {"diff": diff, "ci_low": lo, "ci_high": hi}


@pytest.mark.parametrize("single, bag, single_id, verdict", [
    (_d(0.03, 0.01, 0.05), _d(0.02, 0.005, 0.04), _d(0.0, -0.02, 0.02), "effect present"),
    (_d(0.03, 0.01, 0.05), _d(0.01, -0.01, 0.03), _d(0.0, -0.02, 0.02), "averaging only"),
    (_d(0.005, -0.01, 0.019), _d(0.0, -0.01, 0.01), _d(0.0, -0.015, 0.015), "absent at this scale"),
    (_d(0.01, -0.01, 0.03), _d(0.0, -0.01, 0.01), _d(0.0, -0.015, 0.015), "inconclusive"),
    (_d(0.019, 0.001, 0.04), _d(0.02, 0.01, 0.03), _d(0.0, -0.015, 0.015), "inconclusive"),  # below +2.0
    (None, _d(0.0, -0.01, 0.01), _d(0.0, -0.015, 0.015), "not decided"),
])
def test_the_gate(single, bag, single_id, verdict):
    assert sp.gate(single, bag, single_id)[0] == verdict


def test_the_section_from_a_small_book():
    bag = _run("bagging", experts={"expert_r1": CHOSEN["expert_r1"], "expert_r2": CHOSEN["expert_r1"],
                                   "expert_r3": CHOSEN["expert_r2"]})
    book = {"runs": {r["run_id"]: r for r in (_run("ensemw2s"), bag)}, "command": "python -m benchmarks.science study",
            "missing": ["answer seed 0 (`x`)"]}
    text = "\n".join(sp.render_study_section(book))
    assert "| ensemw2s | 0.533 | 0.533 | 0.800 | 0.800 |" in text
    # bagging: r1 = r2 (0), r1-r3 and r2-r3 differ on q2 (0.2 each) -> mean 0.133; boosted / bagged = 4.00x
    assert "| bagging | 0.133 | 0.133 |" in text
    assert "ID 4.00×, OOD 4.00×" in text and "Boosting makes its experts differ" in text
    assert "(ID n = 5, OOD n = 5, easy_val n = 5)" in text
    assert "Not finished: answer seed 0" in text
    assert "### The gate (OOD primary)" in text and "Not measured: the expert gate's verdict" in text
    assert sp.render_study_section({"runs": {}})[-2].startswith("No run of the study has finished")


def test_by_round_rows_cover_a_round_skipped_in_the_first_seed():
    skipped = {m: c for m, c in CHOSEN.items() if m != "expert_r2"}  # seed 0's round 2 had alpha <= 0
    book = {"runs": {r["run_id"]: r for r in (_run("ensemw2s", 0, experts=skipped), _run("ensemw2s", 1))},
            "command": "python -m benchmarks.science study"}
    rows = [ln for ln in sp.render_study_section(book) if ln.startswith("| ensemw2s | ")]
    by_round = [ln.split(" | ")[1] for ln in rows if ln.split(" | ")[1].isdigit()]
    assert by_round == ["1", "2", "3"]
    assert "| ensemw2s | 2 |" in "\n".join(rows) and "(1 of 2 seeds)" in next(r for r in rows if "| 2 |" in r)


def test_plans_fork_each_seed_from_its_ensemw2s_run():
    plans = plan_study("configs/boosting_study.yaml", [], 2)
    assert [(p["arm"], p["seed"]) for p in plans] == [("ensemw2s", 0), ("bagging", 0), ("ensemw2s", 1),
                                                     ("bagging", 1), ("answer", 0), ("answer", 1)]
    for p in plans:
        main = next(q for q in plans if q["seed"] == p["seed"] and q["arm"] == "ensemw2s")
        assert p.get("from_run") == (None if p is main else main["run_id"])
    assert len({p["run_id"] for p in plans}) == 6
