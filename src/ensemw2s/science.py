"""Does EnsemW2S work with the models we have? ``ensemw2s bench settings`` and ``ensemw2s bench science``.

- :func:`prestudy` (``bench settings``): for each candidate easy -> hard setting, the round-1 weak expert and
  the gold-trained strong ceiling on the setting's OOD test (plus both base models zero-shot, for reference),
  with standard errors. A setting *qualifies* when ceiling - weak >= 3 standard errors of the paired
  difference and weak - chance >= 3 standard errors of the weak accuracy. Steps run in this process, on
  local folders (no object store): it is a sizing study, not a pipeline run. Results accumulate in
  ``docs/results/prestudy.json`` (one entry per setting and sizing variant; a finished entry is not redone).
- :func:`science` (``bench science``): each seed is a real local pipeline run (``ensemw2s run``: kfp.local,
  artifacts in the embedded SeaweedFS), then the per-question predictions of all seeds are pooled into
  mean +- std tables, paired differences with 95 % intervals and a plot by round, written to
  ``docs/results.md`` by :mod:`ensemw2s.results`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ensemw2s.config import ConfigError, config_hash, load_config, to_dict
from ensemw2s.steps._io import code_commit

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "docs" / "results"

# name -> (description, config overrides). Sizes come from the base config.
SETTINGS: dict[str, tuple[str, dict]] = {
    "arc_easy-arc_challenge": ("ARC-Easy -> ARC-Challenge (paper-like easy -> hard)",
                               {"data.easy": "arc_easy", "data.hard": "arc_challenge", "data.difficulty": "native"}),
    "arc_easy-sciq": ("ARC-Easy -> SciQ (cross-dataset)",
                      {"data.easy": "arc_easy", "data.hard": "sciq", "data.difficulty": "native"}),
    "sciq-model_loss": ("SciQ split by model-scored difficulty (weak base zero-shot loss)",
                        {"data.easy": "sciq", "data.hard": "sciq", "data.difficulty": "model_loss"}),
    "arc_easy-grade": ("ARC-Easy split by school grade (ids with a grade only)",
                       {"data.easy": "arc_easy", "data.hard": "arc_easy", "data.difficulty": "grade"}),
    "mmlu-level": ("MMLU split by level (elementary/high school -> college/professional)",
                   {"data.easy": "mmlu", "data.hard": "mmlu", "data.difficulty": "level"}),
}


def _overrides(d: dict) -> list[str]:
    return [f"{k}={v}" for k, v in d.items()]


# --------------------------------------------------------------------------- statistics


def se(acc: float, n: int) -> float:
    return math.sqrt(max(acc * (1 - acc), 0.0) / max(n, 1))


def paired_se(a, b) -> float:
    """Standard error of mean(a - b) over the same questions."""
    x = np.asarray(a, float) - np.asarray(b, float)
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")


def qualifies(weak: list, ceiling: list, chance: float) -> dict:
    """The pre-study's rule: ceiling - weak >= 3 SE (paired) and weak >= chance + 3 SE."""
    n = len(weak)
    w, c = float(np.mean(weak)), float(np.mean(ceiling))
    gap, gap_se, w_se = c - w, paired_se(ceiling, weak), se(w, n)
    return {"gap": gap, "gap_se": gap_se, "gap_in_se": gap / gap_se if gap_se > 0 else float("nan"),
            "above_chance": w - chance, "weak_se": w_se,
            "above_chance_in_se": (w - chance) / w_se if w_se > 0 else float("nan"),
            "qualifies": bool(0 < gap and 3 * gap_se <= gap and 0 < w - chance and 3 * w_se <= w - chance)}


# --------------------------------------------------------------------------- pre-study


def _score(model_dir_or_name: str, rows: list[dict], batch_size: int, *, saved: bool) -> list[bool]:
    from ensemw2s.evaluation import loglik_predictions, option_logprobs
    from ensemw2s.training import load_causal_lm, load_saved

    model, tok = load_saved(model_dir_or_name) if saved else load_causal_lm(model_dir_or_name)
    lp = option_logprobs(model, tok, rows, batch_size=batch_size)
    del model
    return [p["correct"] for p in loglik_predictions(rows, [lp], [1.0], "m", "hard_test")]


def prestudy_one(name: str, cfg, work: Path, *, log=print) -> dict:
    """Weak expert (round 1), strong ceiling (gold hard_pool), both base models zero-shot, on hard_test."""
    from ensemw2s.data import DATASETS, read_jsonl
    from ensemw2s.steps import pseudo_label, split_data, train_expert, train_student

    d = work / name
    if d.exists():
        shutil.rmtree(d)
    times: dict[str, float] = {}

    def timed(label, fn, *a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        times[label] = round(time.perf_counter() - t0, 1)
        log(f"  [{name}] {label}: {times[label]:.0f} s")
        return out

    timed("split", split_data.run, cfg.data, cfg.experts, seed=cfg.seed, splits_dir=d / "splits",
          state_dir=d / "state0")
    timed("train weak r1", train_expert.run, cfg.experts, cfg.boosting, round_=1, seed=cfg.seed,
          splits_dir=d / "splits", state_dir=d / "state0", expert_dir=d / "expert1")
    timed("gold labels", pseudo_label.run, cfg.ensemble, source="gold", splits_dir=d / "splits", state_dir=None,
          labels_dir=d / "labels-gold")
    timed("train ceiling", train_student.run, cfg.student, source="gold", seed=cfg.seed,
          labels_dir=d / "labels-gold", student_dir=d / "student-gold")
    rows = read_jsonl(d / "splits" / "hard_test.jsonl")
    sizes = json.loads((d / "splits" / "split.json").read_text())["sizes"]
    bs = cfg.eval.batch_size
    correct = {
        "weak_zeroshot": timed("score weak zero-shot", _score, cfg.experts.model, rows, bs, saved=False),
        "weak_r1": timed("score weak r1", _score, str(d / "expert1" / "model"), rows, bs, saved=True),
        "strong_zeroshot": timed("score strong zero-shot", _score, cfg.student.model, rows, bs, saved=False),
        "ceiling": timed("score ceiling", _score, str(d / "student-gold" / "model"), rows, bs, saved=True),
    }
    chance = float(np.mean([1.0 / len(r["choices"]) for r in rows]))
    n = len(rows)
    acc = {k: float(np.mean(v)) for k, v in correct.items()}
    res = {"setting": name, "description": SETTINGS.get(name, ("", {}))[0], "n_ood": n, "sizes": sizes,
           "chance": chance, "dataset_chance": DATASETS[cfg.data.hard]["chance"], "acc": acc,
           "se": {k: se(a, n) for k, a in acc.items()}, **qualifies(correct["weak_r1"], correct["ceiling"], chance),
           "strong_zeroshot_minus_weak_se": paired_se(correct["strong_zeroshot"], correct["weak_r1"]),
           "correct": {k: [bool(x) for x in v] for k, v in correct.items()}, "ids": [r["id"] for r in rows],
           "seconds": times, "total_seconds": round(sum(times.values()), 1)}
    shutil.rmtree(d, ignore_errors=True)
    return res


def prestudy(base_config: str, settings: list[str], *, overrides: list[str], variant: str,
             out: Path = RESULTS_DIR / "prestudy.json", work: Optional[Path] = None, redo: bool = False) -> dict:
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise ConfigError(f"bench settings --settings: unknown setting(s) {', '.join(bad)}; allowed values: "
                          f"{', '.join(SETTINGS)}")
    cfgs = {s: load_config(base_config, _overrides(SETTINGS[s][1]) + list(overrides)) for s in settings}
    from ensemw2s import assets

    work = Path(work or assets.home() / "prestudy")
    out.parent.mkdir(parents=True, exist_ok=True)
    book = json.loads(out.read_text()) if out.is_file() else {"entries": {}}
    for s, cfg in cfgs.items():
        key = f"{s}|{variant}"
        h = config_hash(cfg)
        old = book["entries"].get(key)
        if old and old.get("config_hash") == h and not redo:
            print(f"{key}: done before (config {h[:8]}), kept", flush=True)
            continue
        print(f"{key}: {SETTINGS[s][0]}", flush=True)
        res = prestudy_one(s, cfg, work)
        res.update(variant=variant, overrides=list(overrides), config_hash=h, config=to_dict(cfg),
                   commit=code_commit(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        book = _record(out, key, res)  # after each setting: an interrupted pre-study keeps what it finished
        a, se_ = res["acc"], res["se"]
        print(f"{key}: weak r1 {a['weak_r1']:.3f}±{se_['weak_r1']:.3f}, ceiling {a['ceiling']:.3f}±"
              f"{se_['ceiling']:.3f}, strong zero-shot {a['strong_zeroshot']:.3f}, chance {res['chance']:.3f}; gap "
              f"{res['gap']:+.3f} = {res['gap_in_se']:.1f} SE, weak-chance {res['above_chance_in_se']:.1f} SE -> "
              f"{'QUALIFIES' if res['qualifies'] else 'does not qualify'} ({res['total_seconds']:.0f} s)",
              flush=True)
    return book


def _record(path: Path, key: str, entry: dict) -> dict:
    """Add one entry to the results file under a lock (pre-studies of different settings may run at once)."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        book = json.loads(path.read_text()) if path.is_file() else {"entries": {}}
        book["entries"][key] = entry
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(book, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    return book


# --------------------------------------------------------------------------- main runs


def run_id_for(tag: str, cfg) -> str:
    """Deterministic, so running the same command again resumes instead of starting over."""
    return f"sci-{tag}-s{cfg.seed}-{config_hash(cfg)[:6]}"


def run_plans(config: str, plans: list[dict], *, jobs: int = 1, log_dir: Path) -> list[dict]:
    """Real local pipeline runs (``ensemw2s run`` in child processes), ``jobs`` at a time, each with
    ``cores / jobs`` torch threads. A plan is ``{label, run_id, overrides, from_run?}``; a run id that already
    finished is restored step by step from storage (nothing recomputed). Returns the plans with ``rc``,
    ``seconds``, ``log``, ``threads`` and ``parallel_jobs``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    pending, running, done = list(plans), [], []
    finished: set = set()
    while pending or running:
        while len(running) < jobs:
            # a fork waits for the run it copies
            ready = [p for p in pending if not p.get("from_run") or p["from_run"] in finished]
            if not ready:
                if not running:  # its source is not in this batch (or failed): the fork copies what is stored
                    ready = pending[:1]
                if not ready:
                    break
            p = ready[0]
            pending.remove(p)
            logf = log_dir / f"{p['run_id']}.log"
            cmd = [sys.executable, "-m", "ensemw2s.cli", "run", "--config", config, "--run-id", p["run_id"]]
            if p.get("from_run"):
                cmd += ["--from-run", p["from_run"]]
            for o in p["overrides"]:
                cmd += ["--set", o]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                   "ENSEMW2S_PROGRESS": "0", "ENSEMW2S_PARALLEL_JOBS": str(min(jobs, len(plans)))}
            print(f"start {p['label']}: run {p['run_id']} ({threads} threads), log {logf}", flush=True)
            fh = open(logf, "ab")
            running.append((p, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT),
                            time.perf_counter(), fh, logf))
        time.sleep(2)
        for item in list(running):
            p, proc, t0, fh, logf = item
            if proc.poll() is None:
                continue
            fh.close()
            running.remove(item)
            res = {**p, "rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "log": str(logf),
                   "threads": threads, "parallel_jobs": jobs}
            print(f"finished {p['label']}: run {p['run_id']} exit {proc.returncode} in {res['seconds']:.0f} s"
                  + ("" if proc.returncode == 0 else f" (see {logf})"), flush=True)
            done.append(res)
            finished.add(p["run_id"])
    return done


def collect_run(store, run_id: str) -> dict:
    """metrics, predictions, run summary and eval infos of one finished run, from object storage."""
    import tempfile

    from ensemw2s.data import read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        store.get_dir(run_id, "report", "report", Path(tmp) / "report")
        metrics = json.loads((Path(tmp) / "report" / "metrics.json").read_text())
        preds = read_jsonl(Path(tmp) / "report" / "predictions.jsonl", validate=False)
    summary = store.get_json(run_id, "run-summary", "summary.json")
    # the steps' timing records as they are now (a restored step carries the record of the execution that
    # computed it; the run summary holds the latest invocation's view only)
    from ensemw2s.cli import step_timings

    summary["timings"] = step_timings(store, run_id)
    return {"run_id": run_id, "metrics": metrics, "predictions": preds, "summary": summary}
