"""The pre-study (``python -m benchmarks.science settings``): which easy -> hard settings can show a
weak-to-strong effect with these models?

For each setting: the weak expert and the gold-trained strong ceiling on the setting's OOD test (plus both
base models zero-shot, for reference), with standard errors. The weak expert is the single-expert baseline of
the pipeline (step train_single: the weak model fine-tuned on all of easy_train); entries recorded before it
existed hold the round-1 boosting expert (``weak_r1``). A setting *qualifies* when ceiling - weak >= 3 standard
errors of the paired difference and >= :data:`MIN_GAP` (8 accuracy points), and weak - chance >= 3 standard
errors of the weak accuracy (:func:`qualifies`). Steps run in this process, on local folders (no object store): it is a sizing study, not a
pipeline run. Results accumulate in ``docs/results/prestudy.json`` (one entry per setting and sizing variant,
with its full config, the commit and the machine; a finished entry is not redone).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ensemw2s.config import config_hash, load_config, to_dict
from ensemw2s.errors import ConfigError
from ensemw2s.provenance import code_commit, machine_info
from ensemw2s.stats import paired_se, se

from . import RESULTS_DIR

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
PRESTUDY_FILE = RESULTS_DIR / "prestudy.json"
# the smallest gap (accuracy points) worth a main run: below it a weak-to-strong effect is hard to see in a few
# hundred OOD questions even when the gap itself is significant
MIN_GAP = 0.08


def _overrides(d: dict) -> list[str]:
    return [f"{k}={v}" for k, v in d.items()]


def check_settings(settings: list[str]) -> None:
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise ConfigError(f"--settings: unknown setting(s) {', '.join(bad)}; allowed values: "
                          f"{', '.join(SETTINGS)}")


def qualifies(weak: list, ceiling: list, chance: float, min_gap: float = MIN_GAP) -> dict:
    """The pre-study's rule: ceiling - weak >= 3 SE (paired) and >= ``min_gap``, and weak >= chance + 3 SE."""
    n = len(weak)
    w, c = float(np.mean(weak)), float(np.mean(ceiling))
    gap, gap_se, w_se = c - w, paired_se(ceiling, weak), se(w, n)
    return {"gap": gap, "gap_se": gap_se, "gap_in_se": gap / gap_se if gap_se > 0 else float("nan"),
            "above_chance": w - chance, "weak_se": w_se,
            "above_chance_in_se": (w - chance) / w_se if w_se > 0 else float("nan"),
            "min_gap": min_gap,
            "qualifies": bool(0 < gap and 3 * gap_se <= gap and min_gap <= gap and 0 < w - chance
                              and 3 * w_se <= w - chance)}


def _score(model_dir_or_name: str, rows: list[dict], batch_size: int, *, saved: bool, dtype: str) -> list[bool]:
    from ensemw2s.evaluation import loglik_predictions, option_logprobs
    from ensemw2s.modeling import load_causal_lm, load_saved

    model, tok = (load_saved(model_dir_or_name, dtype=dtype) if saved
                  else load_causal_lm(model_dir_or_name, dtype=dtype))
    lp = option_logprobs(model, tok, rows, batch_size=batch_size)
    del model
    return [p["correct"] for p in loglik_predictions(rows, [lp], [1.0], "m", "hard_test")]


def prestudy_one(name: str, cfg, work: Path, *, log=print) -> dict:
    """Weak expert (the single-expert baseline), strong ceiling (gold hard_pool), both base models zero-shot, on
    hard_test; every model step in ``resources.dtype``."""
    from ensemw2s.assets import DATASETS
    from ensemw2s.data import read_jsonl
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
    dt = cfg.resources.dtype
    timed("train weak", train_expert.run, cfg.experts, cfg.boosting, round_=1, seed=cfg.seed,
          splits_dir=d / "splits", state_dir=d / "state0", expert_dir=d / "single", single=True, dtype=dt)
    timed("gold labels", pseudo_label.run, cfg.ensemble, source="gold", splits_dir=d / "splits", state_dir=None,
          labels_dir=d / "labels-gold")
    timed("train ceiling", train_student.run, cfg.student, source="gold", seed=cfg.seed,
          labels_dir=d / "labels-gold", student_dir=d / "student-gold", dtype=dt)
    rows = read_jsonl(d / "splits" / "hard_test.jsonl")
    sizes = json.loads((d / "splits" / "split.json").read_text())["sizes"]
    bs = cfg.eval.batch_size
    correct = {
        "weak_zeroshot": timed("score weak zero-shot", _score, cfg.experts.model, rows, bs, saved=False, dtype=dt),
        "weak": timed("score weak", _score, str(d / "single" / "model"), rows, bs, saved=True, dtype=dt),
        "strong_zeroshot": timed("score strong zero-shot", _score, cfg.student.model, rows, bs, saved=False,
                                 dtype=dt),
        "ceiling": timed("score ceiling", _score, str(d / "student-gold" / "model"), rows, bs, saved=True, dtype=dt),
    }
    chance = float(np.mean([1.0 / len(r["choices"]) for r in rows]))
    n = len(rows)
    acc = {k: float(np.mean(v)) for k, v in correct.items()}
    res = {"setting": name, "description": SETTINGS.get(name, ("", {}))[0], "n_ood": n, "sizes": sizes,
           "chance": chance, "dataset_chance": DATASETS[cfg.data.hard]["chance"], "acc": acc,
           "se": {k: se(a, n) for k, a in acc.items()}, **qualifies(correct["weak"], correct["ceiling"], chance),
           "weak_definition": "single (all easy_train rows, equal weights)",
           "strong_zeroshot_minus_weak_se": paired_se(correct["strong_zeroshot"], correct["weak"]),
           "correct": {k: [bool(x) for x in v] for k, v in correct.items()}, "ids": [r["id"] for r in rows],
           "seconds": times, "total_seconds": round(sum(times.values()), 1)}
    shutil.rmtree(d, ignore_errors=True)
    return res


def prestudy(base_config: str, settings: list[str], *, overrides: list[str], variant: str,
             out: Path = PRESTUDY_FILE, work: Optional[Path] = None, redo: bool = False) -> dict:
    """Run the pre-study of ``settings`` (each: ``base_config`` + the setting's overrides + ``overrides``) and
    record each in ``out``; returns the whole results file."""
    check_settings(settings)
    cfgs = {s: load_config(base_config, _overrides(SETTINGS[s][1]) + list(overrides)) for s in settings}
    from ensemw2s import assets

    work = Path(work or assets.home() / "prestudy")
    out = Path(out)
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
                   commit=code_commit(), machine=machine_info(),
                   date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        book = _record(out, key, res)  # after each setting: an interrupted pre-study keeps what it finished
        a, se_ = res["acc"], res["se"]
        print(f"{key}: weak {a['weak']:.3f}±{se_['weak']:.3f}, ceiling {a['ceiling']:.3f}±"
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
