"""The boosting study's controls as real steps on configs/tiny.yaml (local folders, no storage): the bagging
control keeps D uniform, the answer-level error is the option choice spread over the answer tokens, and a run
without the student stage reports the experts alone."""
import json

import numpy as np
import pytest

from ensemw2s.steps import evaluate, report, split_data, train_expert, update_weights

SETTINGS = ["--set", "boosting.method=bagging", "--set", "boosting.error=answer", "--set", "student.enabled=false"]


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run_dir(repo_root, tiny_assets, tmp_path_factory):
    cfg = ["--config", str(repo_root / "configs/tiny.yaml")] + SETTINGS
    d = tmp_path_factory.mktemp("controls")
    assert split_data.main(cfg + ["--splits", str(d / "splits"), "--state", str(d / "state0")]) == 0
    assert train_expert.main(cfg + ["--single", "--splits", str(d / "splits"), "--state", str(d / "state0"),
                                    "--expert", str(d / "single")]) == 0
    for t in (1, 2):
        assert train_expert.main(cfg + ["--round", str(t), "--splits", str(d / "splits"), "--state",
                                        str(d / f"state{t - 1}"), "--expert", str(d / f"expert{t}")]) == 0
        assert update_weights.main(cfg + ["--round", str(t), "--state", str(d / f"state{t - 1}"), "--expert",
                                          str(d / f"expert{t}"), "--out-state", str(d / f"state{t}")]) == 0
    assert evaluate.main(cfg + ["--target", "experts", "--splits", str(d / "splits"), "--state", str(d / "state2"),
                                "--single-expert", str(d / "single"), "--out", str(d / "eval-experts")]) == 0
    return d, cfg


def test_bagging_keeps_d_uniform_and_each_round_resamples_it(run_dir):
    d, _ = run_dir
    w = [[r["weights"] for r in _jsonl(d / f"state{t}" / "weights.jsonl")] for t in (0, 1, 2)]
    assert w[0] == w[1] == w[2]  # every expert had an alpha > 0 here, and still nothing moved
    metas = [json.loads((d / f"expert{t}" / "expert.json").read_text()) for t in (1, 2)]
    assert all(m["alpha"] > 0 and m["weights_ess"] == pytest.approx(1.0) for m in metas)
    assert metas[0]["seed"] != metas[1]["seed"]  # an independent resample each round


def test_the_answer_level_error_is_the_option_choice_on_every_answer_token(run_dir):
    from ensemw2s.data import read_jsonl
    from ensemw2s.evaluation import loglik_predictions, option_logprobs
    from ensemw2s.modeling import load_saved

    d, _ = run_dir
    rows = read_jsonl(d / "splits" / "easy_train.jsonl")
    meta = json.loads((d / "expert1" / "expert.json").read_text())
    model, tok = load_saved(d / "expert1" / "model")
    chose = {p["id"]: not p["correct"] for p in loglik_predictions(
        rows, [option_logprobs(model, tok, rows, batch_size=8)], [1.0], "x", "easy_train")}
    wrong = {r["id"]: r["wrong"] for r in _jsonl(d / "expert1" / "wrong.jsonl")}
    for i, w in wrong.items():
        assert set(w) == {1.0 if chose[i] else 0.0}, i
    assert meta["error"] == "answer"
    assert meta["train_option_accuracy"] == pytest.approx(1 - np.mean(list(chose.values())))
    # under the uniform D_1, eps = the share of answer tokens that belong to wrongly answered questions
    flat = np.concatenate([np.asarray(w) for w in wrong.values()])
    assert meta["eps"] == pytest.approx(flat.mean())


def test_a_run_without_students_reports_the_experts_alone(run_dir):
    d, cfg = run_dir
    # the report refuses the student inputs' absence only when the student stage is on
    assert report.main(["--config", cfg[1], "--out", str(d / "bad"), "--eval-experts", str(d / "eval-experts")]) == 2
    assert report.main(cfg + ["--out", str(d / "report"), "--eval-experts", str(d / "eval-experts")]) == 0
    md = (d / "report" / "report.md").read_text()
    assert "No student stage in this run (student.enabled: false)" in md
    assert "strong student: none" in md and "## Expert diagnostics" in md
    metrics = json.loads((d / "report" / "metrics.json").read_text())
    assert metrics["students"] is False and metrics.get("ceiling_acc_ood") is None
    assert metrics["diag_rounds"] == [1, 2]


def test_each_expert_alone_keeps_its_option_scores(run_dir):
    d, _ = run_dir
    preds = [p for p in _jsonl(d / "eval-experts" / "predictions.jsonl") if p["model"].startswith("expert_r")]
    assert {p["model"] for p in preds} == {"expert_r1", "expert_r2"} and preds
    for p in preds:
        assert len(p["scores"]) >= 2 and int(np.argmax(p["scores"])) == p["chosen"], p["id"]
