"""The results page's own logic (benchmarks/science): the pre-study rule, T chosen on easy_val, pooled paired
differences over seeds, the per-question records that let the page be rebuilt, and the facts it prints."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is not installed: the checkout's

from benchmarks.science.page import check_ablation, machines, pooled_paired, render, run_commits  # noqa: E402
from benchmarks.science.prestudy import qualifies  # noqa: E402
from benchmarks.science.runs import correct_of, correct_table, recorded_runs  # noqa: E402

from ensemw2s.config import ConfigError, load_config  # noqa: E402
from ensemw2s.evaluation import select_rounds  # noqa: E402


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
    # a significant gap below 8 points does not qualify: 1200 questions, ceiling 5 points above the weak model
    n = 1200
    weak = [i % 2 == 0 for i in range(n)]
    ceiling = [w or i % 20 == 1 for i, w in enumerate(weak)]
    small = qualifies(weak, ceiling, chance=0.25)
    assert small["gap"] == pytest.approx(0.05) and small["gap"] > 3 * small["gap_se"] and not small["qualifies"]
    assert qualifies(weak, ceiling, chance=0.25, min_gap=0.04)["qualifies"]


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


def _preds(a_correct, b_correct, split="hard_test"):
    return [{"id": f"q{i}", "model": m, "split": split, "method": "loglik", "correct": bool(c)}
            for m, cs in (("ensemble", a_correct), ("weak_single", b_correct)) for i, c in enumerate(cs)]


def _run(seed, a_correct, b_correct):
    return {"run_id": f"r{seed}", "correct": correct_table(_preds(a_correct, b_correct)), "metrics": {"seed": seed}}


def test_correct_table_round_trips_the_page_models_only():
    preds = _preds([1, 0, 1], [0, 0, 1]) + [
        {"id": "q0", "model": "ensemble", "split": "hard_test", "method": "generation", "correct": False},
        {"id": "q0", "model": "ensemble_r1", "split": "hard_test", "method": "loglik", "correct": True},
        {"id": "x9", "model": "ceiling", "split": "hard_test", "method": "loglik", "correct": True}]
    table = correct_table(preds)
    assert set(table["models"]) == {"ensemble", "weak_single", "ceiling"}
    assert table["ids"]["hard_test"] == ["q0", "q1", "q2", "x9"] and table["ids"]["easy_test"] == []
    assert table["models"]["ensemble"]["hard_test"] == "101-"
    run = {"correct": json.loads(json.dumps(table))}
    assert correct_of(run, "ensemble", "hard_test") == {"q0": True, "q1": False, "q2": True}
    assert correct_of(run, "ceiling", "hard_test") == {"x9": True}
    assert correct_of(run, "ensemble", "easy_test") == {} and correct_of({}, "ensemble", "hard_test") == {}


def test_pooled_paired_means_per_seed_and_interval():
    runs = [_run(0, [1, 1, 1, 0] * 25, [1, 0, 1, 0] * 25), _run(1, [1, 1, 0, 0] * 25, [1, 1, 0, 0] * 25)]
    d = pooled_paired(runs, "ensemble", "weak_single", "hard_test")
    assert d["per_seed"] == [0.25, 0.0] and d["diff"] == pytest.approx(0.125)
    assert d["ci_low"] <= 0.125 <= d["ci_high"] and d["ci_low"] > 0  # all discordant pairs favour A
    assert d["n_pairs"] == 200 and d["mcnemar_p"] < 0.001
    assert d["se"] == pytest.approx(np.sqrt(np.var([1, 0, 0, 0] * 25, ddof=1) / 100) / 2)
    assert pooled_paired(runs, "ensemble", "ceiling", "hard_test") is None


def test_recorded_runs_keep_only_records_the_page_can_use(tmp_path):
    f = tmp_path / "science.json"
    assert recorded_runs(f) == {}
    full = {"run_id": "a", "metrics": {"seed": 0}, "summary": {"timings": {}}, "correct": {"ids": {}, "models": {}}}
    f.write_text(json.dumps({"runs": [full, {"run_id": "old", "metrics": {}, "summary": {}}],
                             "ablations": [{**full, "run_id": "b", "name": "g00"}, {"name": "x", "metrics": None}]}))
    assert set(recorded_runs(f)) == {"a", "b"}  # "old": a record of the older format, without per-question data


def test_wall_time_comes_from_the_execution_that_computed_the_step():
    from ensemw2s.provenance import produced_seconds

    assert produced_seconds({"work_seconds": 12.5, "restored": False}) == 12.5
    assert produced_seconds({"work_seconds": 0.2, "restored": True,
                             "produced": {"work_seconds": 300.0, "restored": False}}) == 300.0
    assert produced_seconds({"work_seconds": 0.2, "restored": True, "produced": None}) is None
    assert produced_seconds({"work_seconds": 0.2, "restored": True}) is None


def test_run_commits_counts_the_producing_executions():
    runs = [{"summary": {"timings": {
        "a": {"restored": False, "commit": "abc1234"},
        "b": {"restored": True, "commit": "def5678", "produced": {"restored": False, "commit": "abc1234"}},
        "c": {"restored": True, "produced": {"restored": False}},
    }}}]
    assert run_commits(runs) == "`abc1234` (2 steps), not recorded (1 steps, run before steps recorded their commit)"


def test_the_machine_comes_from_the_run_summaries():
    cpu = {"cpu_count": 2, "gpu": None}
    gpu = {"cpu_count": 16, "gpu": "NVIDIA H200", "gpu_count": 1}
    assert machines([{"summary": {"machine": cpu}}] * 2) == "2 CPU cores, no GPU"
    assert machines([{"summary": {"machine": cpu}}, {"summary": {"machine": gpu}}, {"summary": {}}]) == (
        "2 CPU cores, no GPU (1 runs), 16 CPU cores, 1 × NVIDIA H200 (1 runs), not recorded (1 runs, made before "
        "the machine was recorded)")
    assert machines([{"machine": gpu}, {}], "entries").startswith("16 CPU cores, 1 × NVIDIA H200 (1 entries)")


def test_the_page_states_what_the_records_say(repo_root):
    cfg = load_config(str(repo_root / "configs" / "tiny.yaml"))
    run = {**_run(0, [1, 0, 1, 1], [1, 0, 0, 1]), "summary": {"timings": {}, "machine": {"cpu_count": 7}}}
    run["metrics"].update(n_id=4, n_ood=4, chosen_rounds=2)
    page = render(cfg, [run], [], [], {}, command="cmd", plot_name="p.png", notes="")
    assert "machine: 7 CPU cores, no GPU" in page and "2 CPU cores" not in page and "135M" not in page
    from ensemw2s.assets import model_display_name

    assert f"Weak experts: {model_display_name(cfg.experts.model)}; strong student: " in page
    assert f"here {model_display_name(cfg.experts.model)} experts" in page
    assert "| ensemble − single expert | OOD | +0.250 [" in page
    assert "95 % Wilson intervals" in page  # one run: the plot's caption says what its error bars are


def test_ablations_must_share_the_main_config(repo_root, tmp_path):
    from ensemw2s.ablation import load_ablation

    science = str(repo_root / "configs" / "science.yaml")
    ab = load_ablation(repo_root / "configs" / "science_ablations.yaml")
    check_ablation(ab, "configs/science_ablations.yaml", science, seeds=3)
    with pytest.raises(ConfigError, match=r"its base is not the --config config .*differ at .*data\.easy_train"):
        check_ablation(ab, "abl.yaml", str(repo_root / "configs" / "tiny.yaml"), seeds=3)
    f = tmp_path / "abl.yaml"
    f.write_text(f"base: {science}\ngrid: {{boosting.rounds: [2]}}\nseeds: [0, 4]\nfork_from: base\n")
    with pytest.raises(ConfigError, match=r"seeds \[4\]: with fork_from: base .* --seeds 3 runs seeds 0..2"):
        check_ablation(load_ablation(f), str(f), science, seeds=3)
