"""The boosting study (issue 23 §3, results page v3): do boosted experts differ more than bagged ones, and does
their ensemble beat one expert? The experts alone (no student stage), three arms per seed, each a real local
pipeline run of ``configs/boosting_study.yaml``:

- ``ensemw2s``: AdaBoost token weights, 8 rounds; the ensemble of all 8 (``ensemble_r8``, T fixed) and the one
  with T chosen on easy_val (``ensemble``);
- ``bagging``: ``boosting.method=bagging`` (D stays uniform: each round an independent resample of the same
  token budget), forked from the seed's ensemw2s run (same splits, same round-1 expert);
- ``answer``: ``boosting.error=answer`` (a question's wrong option choice makes all its answer tokens wrong),
  forked likewise;

and the single expert (``weak_single``, fine-tuned on all of easy_train), the same in every arm of a seed.
Runs are resumable: their ids come from the config (:func:`benchmarks.science.runs.run_id_for`), so running the
command again continues where it stopped. :func:`study_table` keeps, per run, what the page needs (each model's
per-question correctness, each expert's chosen option); ``docs/results/study.json`` holds those records, so the
page can be rebuilt without the object store.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ensemw2s.config import load_config

from . import REPO, RESULTS_DIR
from .runs import collect_run, run_id_for, run_plans

DEFAULT_STUDY_CONFIG = REPO / "configs" / "boosting_study.yaml"
# arm -> (label, overrides)
ARMS = {
    "ensemw2s": ("EnsemW2S (AdaBoost token weights)", []),
    "bagging": ("bagging (uniform resamples)", ["boosting.method=bagging"]),
    "answer": ("EnsemW2S, answer-level error", ["boosting.error=answer"]),
}
SPLITS = ("easy_val", "easy_test", "hard_test")


def plan_study(config: str, overrides: list[str], seeds: int, arms: tuple[str, ...] = tuple(ARMS)) -> list[dict]:
    """One plan per (seed, arm): the gate's arms (ensemw2s, bagging) seed by seed, then the answer-level arm of
    every seed (so an interrupted study has whole seeds of the gate first). The other arms fork the seed's
    ``ensemw2s`` run (``--from-run``: its splits, single expert and round 1 are reused where their config is the
    same)."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        from ensemw2s.errors import ConfigError

        raise ConfigError(f"--arms: {', '.join(unknown)} not an arm; allowed values: {', '.join(ARMS)}")
    plans = []
    for seed in range(seeds):
        base_over = list(overrides) + [f"seed={seed}"]
        main_id = run_id_for("study-ensemw2s", load_config(config, base_over))
        for arm in ("ensemw2s",) + tuple(a for a in arms if a != "ensemw2s"):
            over = base_over + ARMS[arm][1]
            plan = {"label": f"{arm} seed {seed}", "arm": arm, "seed": seed, "overrides": over,
                    "run_id": run_id_for(f"study-{arm}", load_config(config, over))}
            if arm != "ensemw2s":
                plan["from_run"] = main_id
            plans.append(plan)
    return sorted(plans, key=lambda p: (p["arm"] == "answer", p["seed"]))  # stable: ensemw2s before bagging


def study_table(preds: list[dict]) -> dict:
    """Per split: the question ids, each model's correctness ("1"/"0" per id, "-" not scored) and each
    expert's chosen option (one digit per id) — option log-likelihood predictions only."""
    ll = [p for p in preds if p["method"] == "loglik" and p["split"] in SPLITS]
    ids = {s: sorted({p["id"] for p in ll if p["split"] == s}) for s in SPLITS}
    got = {(p["model"], p["split"], p["id"]): p for p in ll}
    correct: dict = {}
    chosen: dict = {}
    for m in sorted({p["model"] for p in ll}):
        for s in SPLITS:
            if not any((m, s, i) in got for i in ids[s]):
                continue
            correct.setdefault(m, {})[s] = "".join(
                "-" if (m, s, i) not in got else "1" if got[(m, s, i)]["correct"] else "0" for i in ids[s])
            if m.startswith("expert_r") or m == "weak_single":
                chosen.setdefault(m, {})[s] = "".join(
                    "-" if (m, s, i) not in got else str(int(got[(m, s, i)]["chosen"])) for i in ids[s])
    return {"ids": ids, "correct": correct, "chosen": chosen}


def finished(store, run_id: str) -> bool:
    """The run's own report is complete and its last invocation succeeded (a fork in progress may hold a copy of
    the report of the run it was forked from, made before forks left the report out)."""
    from ensemw2s.errors import MissingObjectError
    from ensemw2s.steps.keys import REPORT, RUN_SUMMARY

    if not store.is_complete(run_id, REPORT, "report"):
        return False
    try:
        status = store.get_json(run_id, RUN_SUMMARY, "status.json")
    except MissingObjectError:
        return True  # a run made before status records existed
    return status.get("status") == "succeeded"


def collect_study_run(store, plan: dict) -> dict:
    """A finished run's record: its plan, metrics, the steps' work seconds and :func:`study_table`."""
    from ensemw2s.provenance import produced_seconds

    rec = collect_run(store, plan["run_id"], table=study_table)
    return {**{k: plan[k] for k in ("arm", "seed", "run_id", "overrides", "label")}, "metrics": rec["metrics"],
            "work_seconds": {k: produced_seconds(t) for k, t in rec["summary"]["timings"].items()},
            "table": rec["correct"]}


def study(config: str, overrides: list[str], *, seeds: int, arms: tuple[str, ...], run: bool, records: Path,
          log_dir: Optional[Path]) -> int:
    """Run (unless ``run`` is False) the study's plans and collect every finished run into ``records``
    (docs/results/study.json; records of runs no longer in the store are kept), then print the v3 section that
    ``python -m benchmarks.science science`` puts on docs/results.md. Returns 0, or 1 when a run failed or is
    missing."""
    from ensemw2s.errors import ConfigError
    from ensemw2s.storage import Store, storage_env

    from .study_page import render_study_section

    if seeds < 1:
        raise ConfigError(f"--seeds: {seeds!r} is out of range; it must be >= 1")
    cfg = load_config(config, overrides)  # a bad key fails before anything runs
    plans = plan_study(config, overrides, seeds, arms)
    if run:
        run_plans(config, plans, jobs=1, log_dir=log_dir or REPO / "build" / "study")
    book = json.loads(records.read_text()) if records.is_file() else {"runs": {}}
    storage_env(cfg.storage)
    store = Store.from_config(cfg.storage)
    store.check(create=False)
    have = set(store.list_runs())
    for p in plans:
        if p["run_id"] not in have:
            continue  # a record kept in the file stands for a run no longer in this store
        if finished(store, p["run_id"]):
            book["runs"][p["run_id"]] = collect_study_run(store, p)
        else:  # running again, or a fork in progress: an earlier record of it is not its result
            book["runs"].pop(p["run_id"], None)
    wanted = {p["run_id"] for p in plans}  # records of other plans (other sizes, older ids) are not this study
    book["runs"] = {k: v for k, v in book["runs"].items() if k in wanted}
    book["command"] = ("python -m benchmarks.science study --config " + str(Path(config)) + f" --seeds {seeds}"
                       + (f" --arms {','.join(arms)}" if tuple(arms) != tuple(ARMS) else "")
                       + "".join(f" --set {o}" for o in overrides))
    book["missing"] = [f"{p['label']} (`{p['run_id']}`)" for p in plans if p["run_id"] not in book["runs"]]
    records.parent.mkdir(parents=True, exist_ok=True)
    records.write_text(json.dumps(book, indent=1, sort_keys=True) + "\n")
    print("\n".join(render_study_section(book)))
    print(f"wrote {records} ({len(plans) - len(book['missing'])} of {len(plans)} runs); the page: "
          "make science-page (python -m benchmarks.science science --no-run ...)")
    return 1 if book["missing"] else 0


DEFAULT_RECORDS = RESULTS_DIR / "study.json"
