"""Stored runs for the run-browsing and page tests, written to a real S3 server (the SeaweedFS of the test
fixtures) in the layout a run leaves: the stored config, the run summary and status, every step's timing.json
and step.log, and a complete report artifact (metrics.json from the real ``build_metrics`` of made-up
per-question predictions, predictions.jsonl, report.md, report.html). Made-up numbers, real formats, so the
tests need no pipeline run (tests/pipeline/test_local_run.py covers the real run end to end)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

MODELS = ("weak_single", "ensemble", "ensemble_uniform", "student_single", "student_ensemble", "ceiling")
# accuracy of each model in the made-up runs (the ensemble of rounds 1..t climbs with t)
BASE_ACC = {"weak_single": 0.45, "ensemble": 0.55, "ensemble_uniform": 0.5, "student_single": 0.5,
            "student_ensemble": 0.6, "ceiling": 0.75}
N_Q = 60
ROUNDS = 3


def make_predictions(seed: int, shift: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    preds = []
    for split, tag in (("easy_test", "e"), ("hard_test", "h")):
        for model in MODELS + tuple(f"ensemble_r{t}" for t in range(1, ROUNDS + 1)):
            if model.startswith("ensemble_r"):  # the ensemble of rounds 1..t
                acc = 0.45 + 0.05 * int(model[len("ensemble_r"):])
            else:
                acc = BASE_ACC[model]
            if model.startswith("ensemble"):
                acc += shift
            for q in range(N_Q):
                ok = bool(rng.random() < acc)
                preds.append({"id": f"{tag}{q:03d}", "model": model, "split": split, "method": "loglik",
                              "output": "A", "chosen": 0 if ok else 1, "correct": ok})
    return preds


def store_run(store, run_id: str, *, seed: int = 0, shift: float = 0.0, overrides=(), tmp: Path,
              complete: bool = True) -> dict:
    """One stored run; returns its predictions (the test's own record of the truth)."""
    from ensemw2s import provenance, site
    from ensemw2s.config import load_config
    from ensemw2s.evaluation import build_metrics, render_report
    from ensemw2s.plots import plot_by_round
    from ensemw2s.steps import keys

    cfg = load_config(str(Path(__file__).resolve().parents[2] / "configs/tiny.yaml"),
                      [f"seed={seed}", f"boosting.rounds={ROUNDS}", *overrides])
    provenance.store_config(store, run_id, cfg)
    table = keys.run_steps(ROUNDS)
    steps = list(table)
    if not complete:
        steps = steps[:3]
    t = time.time() - 3600
    timings = {}
    for i, key in enumerate(steps):
        if not complete and i == len(steps) - 1:  # the step that failed: its log, no outputs, no timing
            log = tmp / f"{run_id}-{key}.log"
            log.write_text(f"[{key}] starting\nerror: something broke in {key}\n")
            store.put_file(log, run_id, key, "step.log")
            break
        rec = {"start": t, "end": t + 5 + i, "work_seconds": 5.0 + i, "restored": key == keys.SPLIT_DATA,
               "commit": "abc1234"}
        if rec["restored"]:
            rec["produced"] = {**rec, "restored": False, "work_seconds": 42.0}
        for _flag, output, summary in table[key].outputs:
            if key == keys.REPORT:
                continue  # the report artifact is made below
            art = tmp / f"{run_id}-{key}-{output}"
            art.mkdir()
            (art / summary).write_text(json.dumps({"step": key}))
            store.put_dir(art, run_id, key, output, producer=key, config_hash="test")
        store.put_json(run_id, key, "timing.json", rec)
        timings[key] = rec
        log = tmp / f"{run_id}-{key}.log"
        log.write_text(f"[{key}] the log of step {key} of run {run_id}\ndone in {5 + i}.0 s\n")
        store.put_file(log, run_id, key, "step.log")
        t += 6 + i
    preds = make_predictions(seed, shift)
    if not complete:
        store.put_json(run_id, keys.RUN_SUMMARY, "status.json", {"status": "failed", "step": steps[-1]})
        return {"predictions": preds}
    metrics = build_metrics(preds, primary="loglik", extra={
        "seed": seed, "rounds": ROUNDS, "primary": "loglik", "run_id": run_id, "alphas": [1.2, 0.8, 0.5],
        "weak_model": "tiny weak", "strong_model": "tiny strong",
        "student_ensemble_labels_accuracy_vs_gold": 0.61 + shift, "student_single_labels_accuracy_vs_gold": 0.52,
        "student_gold_labels_accuracy_vs_gold": 1.0})
    rd = tmp / f"report-{run_id}"
    rd.mkdir()
    (rd / "metrics.json").write_text(json.dumps(metrics))
    (rd / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (rd / "report.md").write_text(render_report(metrics, "accuracy_by_round.png"))
    plot_by_round([metrics], rd / "accuracy_by_round.png")
    (rd / "report.html").write_text(site.run_page({"run_id": run_id, "metrics": metrics}))
    store.put_dir(rd, run_id, keys.REPORT, "report", producer=keys.REPORT, config_hash="test")
    store.put_json(run_id, keys.RUN_SUMMARY, "summary.json", {
        "run_id": run_id, "wall_seconds": 123.4, "commit": "abc1234", "timings": timings,
        "machine": {"cpu_count": 2, "gpu": None}})
    store.put_json(run_id, keys.RUN_SUMMARY, "status.json", {"status": "succeeded"})
    return {"predictions": preds, "metrics": metrics}


@pytest.fixture(scope="module")
def stored_runs(s3_server, tmp_path_factory):
    """``(store, {run_id: record}, ablation)``: two seeds of one config, a results-page run (``sci-*``) with more
    ensemble accuracy, an ablation (base id with plan.json and the compare step's table, two (point, seed) runs
    of which one is stored) and a run that failed at its third step. Made once per test module; the S3
    environment stays set while its tests run."""
    import dataclasses

    from s3_fixtures import unique_bucket

    from ensemw2s import ablation
    from ensemw2s.config import StorageConfig
    from ensemw2s.steps import compare
    from ensemw2s.storage import Store

    tmp_path = tmp_path_factory.mktemp("stored-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("S3_ENDPOINT_URL", s3_server.endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        store = Store.from_config(dataclasses.replace(StorageConfig(), bucket=unique_bucket()))
        store.check()
        runs = {
            "20261201-101500-aaaaaa": store_run(store, "20261201-101500-aaaaaa", seed=0, tmp=tmp_path),
            "20261201-111500-bbbbbb": store_run(store, "20261201-111500-bbbbbb", seed=1, tmp=tmp_path),
            "sci-t-s0-cccccc": store_run(store, "sci-t-s0-cccccc", seed=0, shift=0.15,
                                         overrides=["boosting.alpha_rule=samme"], tmp=tmp_path),
            "20261201-121500-failed": store_run(store, "20261201-121500-failed", seed=0, tmp=tmp_path,
                                                complete=False),
        }
        ab = ablation.ablation_from_dict({"base": {"seed": 0, "boosting": {"rounds": ROUNDS}},
                                          "grid": {"boosting.alpha_rule": ["prior", "uniform"]}, "seeds": [0]})
        plan = ab.plan()
        children = ablation.write_plan(plan, "ablation-nightly1", None, store.cfg)
        stored_child = children[0]["run_id"]
        runs[stored_child] = store_run(store, stored_child, seed=0, shift=0.05, tmp=tmp_path)
        compare.run(plan, base_run_id="ablation-nightly1", out_dir=tmp_path / "compare", storage=store.cfg)
        yield store, runs, {"base": "ablation-nightly1", "children": [c["run_id"] for c in children]}
        for rid in store.list_runs():
            store.delete_run(rid)
