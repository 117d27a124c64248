"""Made-up stored runs in the layout a real run leaves (used by tests/ui/conftest.py and by the test that the
suite leaves a user's run store untouched): the stored config, the run summary and status, every step's
timing.json and step.log, and a complete report artifact (metrics.json from the real ``build_metrics`` of made-up
per-question predictions, predictions.jsonl, report.md, report.html). Made-up numbers, real formats."""
from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path

import numpy as np

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


def _id_time(run_id: str):
    """The epoch seconds of the ``YYYYMMDD-HHMMSS`` stamp in a run id (UTC), or None if it has none."""
    m = re.search(r"(20\d{6})-(\d{6})", run_id)
    if not m:
        return None
    return dt.datetime.strptime("".join(m.groups()), "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc).timestamp()


def store_run(store, run_id: str, *, seed: int = 0, shift: float = 0.0, overrides=(), tmp: Path,
              complete: bool = True) -> dict:
    """One stored run; returns its predictions (the test's own record of the truth)."""
    from ensemw2s import provenance, site
    from ensemw2s.config import load_config
    from ensemw2s.evaluation import build_metrics, render_report
    from ensemw2s.plots import plot_by_round
    from ensemw2s.steps import keys
    from ensemw2s.steps.report import BY_ROUND_PLOT

    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs/tiny.yaml"),
                      [f"seed={seed}", f"boosting.rounds={ROUNDS}", *overrides])
    provenance.store_config(store, run_id, cfg)
    table = keys.run_steps(ROUNDS)
    steps = list(table)
    if not complete:
        steps = steps[:3]
    # a run's steps start when its id says it was made (runs list sorts on that time): made-up runs whose ids
    # carry a date must not look newer than they are as the calendar moves on
    t = _id_time(run_id) if _id_time(run_id) is not None else time.time() - 3600
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
    (rd / "report.md").write_text(render_report(metrics, BY_ROUND_PLOT))
    plot_by_round([metrics], rd / BY_ROUND_PLOT)
    (rd / "report.html").write_text(site.run_page({"run_id": run_id, "metrics": metrics}))
    store.put_dir(rd, run_id, keys.REPORT, "report", producer=keys.REPORT, config_hash="test")
    store.put_json(run_id, keys.RUN_SUMMARY, "summary.json", {
        "run_id": run_id, "wall_seconds": 123.4, "commit": "abc1234", "timings": timings,
        "machine": {"cpu_count": 2, "gpu": None}})
    store.put_json(run_id, keys.RUN_SUMMARY, "status.json", {"status": "succeeded"})
    return {"predictions": preds, "metrics": metrics}
