"""The statistics behind the results page: the pre-study rule, T chosen on easy_val, pooled paired differences."""
import numpy as np
import pytest

from ensemw2s.config import ConfigError
from ensemw2s.evaluation import select_rounds
from ensemw2s.results import load_ablations, mean_std, pooled_paired
from ensemw2s.science import paired_se, qualifies


def test_qualifies_needs_a_gap_and_a_weak_model_above_chance():
    rng = np.random.default_rng(0)
    n = 300
    weak = list(rng.random(n) < 0.45)
    ceiling = [w or (rng.random() < 0.5) for w in weak]  # ~0.72: a large, paired gap
    ok = qualifies(weak, ceiling, chance=0.25)
    assert ok["qualifies"] and ok["gap"] > 3 * ok["gap_se"] and ok["above_chance_in_se"] > 3
    at_chance = list(rng.random(n) < 0.25)
    assert not qualifies(at_chance, [True] * n, chance=0.25)["qualifies"]  # weak not above chance
    assert not qualifies(weak, weak, chance=0.25)["qualifies"]  # no gap
    assert paired_se([1, 0, 1, 0], [1, 0, 1, 0]) == 0.0


def test_select_rounds_picks_the_best_prefix_on_val_and_the_smaller_t_on_ties():
    rows = [{"id": f"q{i}", "choices": ["a", "b"], "answer_index": 0} for i in range(4)]
    good, bad = [[-0.1], [-3.0]], [[-3.0], [-0.1]]
    # round 1 right on 2 of 4, round 2 right on all with a large weight, round 3 wrong on all
    lp = {1: {"q0": good, "q1": good, "q2": bad, "q3": bad},
          2: {f"q{i}": good for i in range(4)},
          3: {f"q{i}": bad for i in range(4)}}
    members = [{"round": 1, "alpha": 0.1}, {"round": 2, "alpha": 5.0}, {"round": 3, "alpha": 0.2}]
    t, accs = select_rounds(rows, lp, members)
    assert t == 2 and accs[0] == 0.5 and accs[1] == 1.0
    t, accs = select_rounds(rows, {1: lp[2], 2: lp[2]}, [{"round": 1, "alpha": 1}, {"round": 2, "alpha": 1}])
    assert t == 1 and accs == [1.0, 1.0]
    # round 1 skipped (alpha <= 0): t=1 has no ensemble
    t, accs = select_rounds(rows, {1: lp[1], 2: lp[2]}, [{"round": 2, "alpha": 1.0}])
    assert t == 2 and accs == [None, 1.0]


def _run(seed, a_correct, b_correct):
    preds = [{"id": f"q{i}", "model": m, "split": "hard_test", "method": "loglik", "correct": c}
             for m, cs in (("A", a_correct), ("B", b_correct)) for i, c in enumerate(cs)]
    return {"predictions": preds, "metrics": {"seed": seed}}


def test_pooled_paired_means_per_seed_and_interval():
    runs = [_run(0, [1, 1, 1, 0] * 25, [1, 0, 1, 0] * 25), _run(1, [1, 1, 0, 0] * 25, [1, 1, 0, 0] * 25)]
    d = pooled_paired(runs, "A", "B", "hard_test")
    assert d["per_seed"] == [0.25, 0.0] and d["diff"] == pytest.approx(0.125)
    assert d["ci_low"] <= 0.125 <= d["ci_high"] and d["ci_low"] > 0  # all discordant pairs favour A
    assert d["n_pairs"] == 200 and d["mcnemar_p"] < 0.001
    assert pooled_paired(runs, "A", "missing", "hard_test") is None


def test_mean_std_skips_undefined_values():
    assert mean_std([0.5, None, 0.7]) == (pytest.approx(0.6), pytest.approx(0.1414, abs=1e-3), 2)
    assert mean_std([None]) == (None, None, 0)


def test_ablations_file_errors_name_the_allowed_keys(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("ablations:\n  - {name: x, override: [a=1]}\n")
    with pytest.raises(ConfigError, match="allowed keys are name, overrides"):
        load_ablations(str(f))
    f.write_text("nothing: 1\n")
    with pytest.raises(ConfigError, match="non-empty list under 'ablations:'"):
        load_ablations(str(f))
    f.write_text("ablations:\n  - {name: samme, overrides: [boosting.alpha_rule=samme]}\n")
    assert load_ablations(str(f)) == [{"name": "samme", "overrides": ["boosting.alpha_rule=samme"]}]


def test_wall_time_comes_from_the_execution_that_computed_the_step():
    from ensemw2s.results import produced_seconds

    assert produced_seconds({"work_seconds": 12.5, "restored": False}) == 12.5
    assert produced_seconds({"work_seconds": 0.2, "restored": True,
                             "produced": {"work_seconds": 300.0, "restored": False}}) == 300.0
    assert produced_seconds({"work_seconds": 0.2, "restored": True, "produced": None}) is None
    assert produced_seconds({"work_seconds": 0.2, "restored": True}) is None


def test_run_commits_counts_the_producing_executions():
    from ensemw2s.results import run_commits

    runs = [{"summary": {"timings": {
        "a": {"restored": False, "commit": "abc1234"},
        "b": {"restored": True, "commit": "def5678", "produced": {"restored": False, "commit": "abc1234"}},
        "c": {"restored": True, "produced": {"restored": False}},
    }}}]
    assert run_commits(runs) == "`abc1234` (2 steps), not recorded (1 steps, run before steps recorded their commit)"
