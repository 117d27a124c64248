"""CPU smoke test: every step's main() in order on configs/tiny.yaml, on local folders (no storage)."""
import json

import pytest

from ensemw2s.steps import (
    evaluate,
    keys,
    pseudo_label,
    report,
    split_data,
    train_expert,
    train_student,
    update_weights,
)

METRIC_KEYS = ("weak_single_acc_id", "weak_single_acc_ood", "ensemble_acc_id", "ensemble_acc_ood",
               "ensemble_acc_ood_by_round", "student_single_acc_ood", "student_ensemble_acc_ood",
               "ceiling_acc_ood", "pgr_single", "pgr_ens", "alphas", "rounds", "seed")


def test_steps_in_order(repo_root, tiny_assets, tmp_path):
    cfg = ["--config", str(repo_root / "configs/tiny.yaml")]
    d = tmp_path
    assert split_data.main(cfg + ["--splits", str(d / "splits"), "--state", str(d / "state0")]) == 0
    single = ["--single-expert", str(d / "single")]
    assert train_expert.main(cfg + ["--single", "--splits", str(d / "splits"), "--state", str(d / "state0"),
                                    "--expert", str(d / "single")]) == 0
    _check_single_expert(cfg, d)
    rounds = 2
    for t in range(1, rounds + 1):
        assert train_expert.main(cfg + ["--round", str(t), "--splits", str(d / "splits"), "--state",
                                        str(d / f"state{t - 1}"), "--expert", str(d / f"expert{t}")]) == 0
        meta = json.loads((d / f"expert{t}" / "expert.json").read_text())
        assert set(meta) >= {"round", "eps", "eps_prior", "alpha", "seed"}
        assert update_weights.main(cfg + ["--round", str(t), "--state", str(d / f"state{t - 1}"), "--expert",
                                          str(d / f"expert{t}"), "--out-state", str(d / f"state{t}")]) == 0
    state = json.loads((d / f"state{rounds}" / "state.json").read_text())
    assert [e["round"] for e in state["experts"]] == [1, 2]
    for source in ("ensemble", "single", "gold"):
        assert pseudo_label.main(cfg + ["--source", source, "--splits", str(d / "splits"), "--state",
                                        str(d / f"state{rounds}"), "--labels", str(d / f"labels-{source}")]
                                 + (single if source == "single" else [])) == 0
        assert train_student.main(cfg + ["--source", source, "--labels", str(d / f"labels-{source}"),
                                         "--student", str(d / f"student-{source}")]) == 0
        assert evaluate.main(cfg + ["--target", f"student-{source}", "--splits", str(d / "splits"),
                                    "--student", str(d / f"student-{source}"), "--out",
                                    str(d / f"eval-student-{source}")]) == 0
    _check_options_val_labels(cfg, d, rounds)
    gold = [json.loads(x) for x in (d / "labels-gold" / "labels.jsonl").read_text().splitlines()]
    assert all(r["correct"] for r in gold)
    assert json.loads((d / "labels-single" / "labels.json").read_text())["producer"].startswith("single:full:")
    assert evaluate.main(cfg + ["--target", "experts", "--splits", str(d / "splits"), "--state",
                                str(d / f"state{rounds}"), "--out", str(d / "eval-experts")] + single) == 0
    args = cfg + ["--out", str(d / "report")]
    for t in keys.EVAL_TARGETS:
        args += [f"--eval-{t}", str(d / f"eval-{t}")]
    assert report.main(args) == 0
    metrics = json.loads((d / "report" / "metrics.json").read_text())
    for k in METRIC_KEYS:
        assert k in metrics, k
    assert len(metrics["ensemble_acc_ood_by_round"]) == rounds
    assert len(metrics["alphas"]) == rounds
    assert (d / "report" / "accuracy_by_round.png").stat().st_size > 1000
    assert "EnsemW2S ensemble" in (d / "report" / "report.md").read_text()
    preds = [json.loads(x) for x in (d / "report" / "predictions.jsonl").read_text().splitlines()]
    assert {p["model"] for p in preds} >= {"weak_single", "weak_round1", "ensemble", "student_single",
                                           "student_ensemble", "ceiling", "ensemble_r1", "ensemble_r2"}
    # weak_single is the train_single expert, not the round-1 expert: recompute both here
    _check_weak_single(d, preds)
    _check_diagnostics(d, metrics, preds, rounds)
    assert all(set(p) >= {"id", "model", "output", "chosen", "correct"} for p in preds)


def _check_single_expert(cfg, d):
    """The single expert learns from every easy_train row and every answer token (weight 1), unlike a
    resampled round-1 expert; round 1 under boosting.reuse_single is a copy of it."""
    from ensemw2s.data import read_jsonl

    meta = json.loads((d / "single" / "expert.json").read_text())
    n_train = len(read_jsonl(d / "splits" / "easy_train.jsonl"))
    assert meta["single"] is True and meta["rows"] == n_train and meta["sampling"].startswith("none")
    assert len(read_jsonl(d / "single" / "wrong.jsonl", validate=False)) == n_train
    assert train_expert.main(cfg + ["--set", "boosting.reuse_single=true", "--round", "1", "--splits",
                                    str(d / "splits"), "--state", str(d / "state0"), "--expert", str(d / "reused"),
                                    "--single-expert", str(d / "single")]) == 0
    reused = json.loads((d / "reused" / "expert.json").read_text())
    assert reused["reused_from"] == keys.TRAIN_SINGLE and reused["round"] == 1
    assert reused["alpha"] == meta["alpha"] and reused["eps"] == meta["eps"]
    assert (d / "reused" / "model" / "adapter_model.safetensors").read_bytes() == \
        (d / "single" / "model" / "adapter_model.safetensors").read_bytes()
    # exactly one of --round and --single
    assert train_expert.main(cfg + ["--single", "--round", "1", "--splits", str(d / "splits"), "--state",
                                    str(d / "state0"), "--expert", str(d / "bad")]) == 2


def _check_diagnostics(d, metrics, preds, rounds):
    """Each expert alone is stored (round 1's equals the weak_round1 baseline: the same expert) and the report
    has the diagnostics: disagreement from those predictions, D_1 uniform (ESS 1), resample draws a share."""
    from ensemw2s.diagnostics import disagreement

    def chosen(model):
        return {p["id"]: p["chosen"] for p in preds if p["model"] == model and p["split"] == "hard_test"}

    assert chosen("expert_r1") == chosen("weak_round1")
    assert metrics["diag_rounds"] == list(range(1, rounds + 1))
    assert metrics["disagree_r1_r2_ood"] == disagreement(preds, "expert_r1", "expert_r2", "hard_test")
    assert metrics["weights_ess"][0] == pytest.approx(1.0) and 0 < metrics["weights_ess"][-1] <= 1
    assert all(0 < f < 1 for f in metrics["drawn_fraction"])  # resample mode: some tokens are never drawn
    assert "## Expert diagnostics" in (d / "report" / "report.md").read_text()


def _check_weak_single(d, preds):
    from ensemw2s.data import read_jsonl
    from ensemw2s.evaluation import loglik_predictions, option_logprobs
    from ensemw2s.modeling import load_saved

    rows = read_jsonl(d / "splits" / "hard_test.jsonl")
    for name, folder in (("weak_single", d / "single"), ("weak_round1", d / "expert1")):
        model, tok = load_saved(folder / "model", dtype="auto")  # as the step loads it (resources.dtype)
        want = {p["id"]: p["chosen"] for p in loglik_predictions(
            rows, [option_logprobs(model, tok, rows, batch_size=8)], [1.0], name, "hard_test")}
        got = {p["id"]: p["chosen"] for p in preds if p["model"] == name and p["split"] == "hard_test"
               and p["method"] == "loglik"}
        assert got == want, name


def _check_options_val_labels(cfg, d, rounds):
    """Option-scored ensemble labels with T chosen on easy_val (each expert loaded once for both) equal the
    labels recomputed here the plain way: every expert scored on easy_val, T chosen, then the alpha-mixture."""
    from ensemw2s.boosting import normalise_alphas
    from ensemw2s.data import read_jsonl
    from ensemw2s.evaluation import mixture_choice, option_logprobs, select_rounds
    from ensemw2s.modeling import load_saved

    out = d / "labels-ensemble-val"
    assert pseudo_label.main(cfg + ["--set", "ensemble.pseudo_label_mode=options", "--set",
                                    "ensemble.select_rounds=val", "--source", "ensemble", "--splits",
                                    str(d / "splits"), "--state", str(d / f"state{rounds}"), "--labels",
                                    str(out)]) == 0
    got = read_jsonl(out / "labels.jsonl", validate=False)
    state = json.loads((d / f"state{rounds}" / "state.json").read_text())
    active = [e for e in state["experts"] if not e["skipped"] and e["alpha"] > 0]
    val, pool = read_jsonl(d / "splits" / "easy_val.jsonl"), read_jsonl(d / "splits" / "hard_pool.jsonl")
    lp_val, lp_pool = {}, {}
    for e in active:
        model, tok = load_saved(d / f"expert{e['round']}" / "model")
        lp_val[e["round"]] = option_logprobs(model, tok, val, batch_size=4)
        lp_pool[e["round"]] = option_logprobs(model, tok, pool, batch_size=4)
    t, _ = select_rounds(val, lp_val, active)
    chosen = [e for e in active if e["round"] <= t]
    w = normalise_alphas([e["alpha"] for e in chosen])
    want = [r["choices"][mixture_choice([lp_pool[e["round"]][r["id"]] for e in chosen], w)] for r in pool]
    assert [g["id"] for g in got] == [r["id"] for r in pool]
    assert [g["pseudo_answer"] for g in got] == want
    assert f"rounds={[e['round'] for e in chosen]}" in got[0]["producer"]
