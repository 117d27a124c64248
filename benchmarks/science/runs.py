"""The runs behind the results page: plan them, run them (real local pipeline runs, ``ensemw2s run`` in child
processes, ``jobs`` at a time), and read each one's records back from object storage.

A plan is ``{label, run_id, overrides, seed, from_run?, point?}``. Run ids are derived from the config
(:func:`run_id_for`), so running the same command again resumes the runs instead of starting over; a run that
already finished is restored step by step from storage (nothing recomputed).

What the page needs of a run (:func:`collect_run`): its ``metrics.json``, its run summary (with each step's
timing record and, for runs since it was recorded, the machine), its stored config, and a compact table of the
per-question correctness of the models the page compares (:func:`correct_table`). The same record is kept in
``docs/results/science.json``, so the page can be rebuilt from that file where the object store no longer holds
the runs (:func:`recorded_runs`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Optional

from ensemw2s.config import config_hash, to_dict

from . import REPO

# the models the page compares (main table, paired differences, ablations); their per-question correctness
# is what science.json keeps of each run
PAGE_MODELS = ("weak_single", "ensemble", "ensemble_uniform", "ceiling", "student_single", "student_ensemble")
SPLITS = ("easy_test", "hard_test")


def run_id_for(tag: str, cfg) -> str:
    """Deterministic, so running the same command again resumes instead of starting over."""
    return f"sci-{tag}-s{cfg.seed}-{config_hash(cfg)[:6]}"


def ensemw2s_command() -> list[str]:
    """The ``ensemw2s`` command of this interpreter's environment (a console script beside it, else ``-m``)."""
    exe = Path(sys.executable).with_name("ensemw2s")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "ensemw2s.cli"]


def _run_one(plan: dict, config: str, log_dir: Path, *, threads: int, jobs: int, cwd: Path) -> dict:
    logf = log_dir / f"{plan['run_id']}.log"
    cmd = ensemw2s_command() + ["run", "--config", config, "--run-id", plan["run_id"]]
    if plan.get("from_run"):
        cmd += ["--from-run", plan["from_run"]]
    for o in plan["overrides"]:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "ENSEMW2S_PROGRESS": "0", "ENSEMW2S_PARALLEL_JOBS": str(jobs)}
    print(f"start {plan['label']}: run {plan['run_id']} ({threads} threads), log {logf}", flush=True)
    t0 = time.perf_counter()
    with open(logf, "ab") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False).returncode
    res = {**plan, "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "log": str(logf), "threads": threads,
           "parallel_jobs": jobs}
    print(f"finished {plan['label']}: run {plan['run_id']} exit {rc} in {res['seconds']:.0f} s"
          + ("" if rc == 0 else f" (see {logf})"), flush=True)
    return res


def run_plans(config: str, plans: list[dict], *, jobs: int = 1, log_dir: Path, cwd: Path = REPO) -> list[dict]:
    """Real local pipeline runs, at most ``jobs`` at a time (a thread pool, each worker waiting on its child
    process), each with ``cores / jobs`` torch threads; every run's output goes to ``log_dir/<run id>.log``.

    A plan with ``from_run`` (a fork) is started once the run it copies has finished, if that run is in
    ``plans`` (whatever its exit status: the fork then copies what is stored); plans are started in order.
    Returns the plans with ``rc``, ``seconds``, ``log``, ``threads`` and ``parallel_jobs``, in finishing order.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    config = str(Path(config).resolve())
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    parallel = min(jobs, len(plans))
    in_batch = {p["run_id"] for p in plans}
    pending, finished, done = list(plans), set(), []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        running: dict = {}
        while pending or running:
            ready = [p for p in pending
                     if not p.get("from_run") or p["from_run"] not in in_batch or p["from_run"] in finished]
            for p in ready:  # queued in order; the pool runs `jobs` of them at a time
                pending.remove(p)
                running[pool.submit(_run_one, p, config, log_dir, threads=threads, jobs=parallel, cwd=cwd)] = p
            if not running:  # cannot happen (a fork only waits for a run of this batch), but never spin
                raise RuntimeError(f"runs waiting for runs that never start: {[p['run_id'] for p in pending]}")
            completed, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in completed:
                p = running.pop(fut)
                done.append(fut.result())
                finished.add(p["run_id"])
    return done


# --------------------------------------------------------------------------- reading runs back


def correct_table(preds: list[dict]) -> dict:
    """Per-question correctness (option log-likelihood) of :data:`PAGE_MODELS` on each test split, compactly:
    ``{"ids": {split: [question ids]}, "models": {model: {split: "1", "0" or "-" (not scored) per id}}}``."""
    ll = [p for p in preds if p["method"] == "loglik" and p["model"] in PAGE_MODELS and p["split"] in SPLITS]
    ids = {s: sorted({p["id"] for p in ll if p["split"] == s}) for s in SPLITS}
    got = {(p["model"], p["split"], p["id"]): bool(p["correct"]) for p in ll}
    models: dict = {}
    for m in PAGE_MODELS:
        for s in SPLITS:
            if any((m, s, i) in got for i in ids[s]):
                models.setdefault(m, {})[s] = "".join(
                    "-" if (m, s, i) not in got else ("1" if got[(m, s, i)] else "0") for i in ids[s])
    return {"ids": ids, "models": models}


def correct_of(run: dict, model: str, split: str) -> dict:
    """``{question id: correct}`` of ``model`` on ``split`` in a run record (empty when not scored)."""
    table = run.get("correct") or {}
    bits = (table.get("models") or {}).get(model, {}).get(split)
    if not bits:
        return {}
    return {i: b == "1" for i, b in zip(table["ids"][split], bits) if b != "-"}


def collect_run(store, run_id: str, table=None) -> dict:
    """What the page needs of one finished run, from object storage (MissingObjectError when it has no report
    or no run summary): ``run_id``, ``metrics``, ``summary`` (with the steps' timing records as they are now),
    ``config`` (the stored config, None if absent) and ``correct`` (``table(predictions)``, by default
    :func:`correct_table`)."""
    import tempfile

    from ensemw2s import provenance
    from ensemw2s.data import read_jsonl
    from ensemw2s.errors import MissingObjectError
    from ensemw2s.steps.keys import REPORT, RUN_SUMMARY

    with tempfile.TemporaryDirectory() as tmp:
        store.get_dir(run_id, REPORT, "report", Path(tmp) / "report")
        metrics = json.loads((Path(tmp) / "report" / "metrics.json").read_text())
        preds = read_jsonl(Path(tmp) / "report" / "predictions.jsonl", validate=False)
    summary = store.get_json(run_id, RUN_SUMMARY, "summary.json")
    # the steps' timing records as they are now (a restored step carries the record of the execution that
    # computed it; the run summary holds the latest invocation's view only)
    summary["timings"] = provenance.step_timings(store, run_id)
    try:
        config = to_dict(provenance.stored_config(store, run_id))
    except MissingObjectError:
        config = None
    return {"run_id": run_id, "metrics": metrics, "summary": summary, "config": config,
            "correct": (table or correct_table)(preds)}


def recorded_runs(path: Path) -> dict[str, dict]:
    """The run records kept in a ``science.json`` that can stand in for the stored runs (those with their
    per-question table), by run id; empty when the file is absent."""
    if not Path(path).is_file():
        return {}
    data = json.loads(Path(path).read_text())
    recs = list(data.get("runs") or []) + [a for a in data.get("ablations") or [] if a.get("run_id")]
    return {r["run_id"]: r for r in recs if r.get("correct") and r.get("metrics") and r.get("summary")}


def find_run(store, run_id: str, recorded: dict) -> tuple[Optional[dict], str]:
    """A run record from ``store`` (if any), else from ``recorded``; with where it came from or why not."""
    from ensemw2s.errors import MissingObjectError

    if store is not None:
        try:
            return collect_run(store, run_id), "store"
        except MissingObjectError:
            pass
    if run_id in recorded:
        return dict(recorded[run_id]), "science.json"
    return None, "no report in the object store and no per-question record in science.json"
