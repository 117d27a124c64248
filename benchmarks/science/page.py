"""``python -m benchmarks.science science``: seeds (and ablations) through the real pipeline, pooled into
``docs/results.md``.

Every number and every fact on the page is read from the runs' records (object storage: ``runs/<run_id>/``
report, run summary, stored config, step timings; or their copy in ``docs/results/science.json``) and from
``docs/results/prestudy.json``; hand-written prose comes only from ``docs/results/notes.md`` and is included
as it is. Statistics (:mod:`ensemw2s.stats`):

- accuracies: mean ± sample std over seeds (n questions per split per seed);
- paired differences (A - B on the same questions): the mean over seeds of the per-seed mean difference, with
  a 95 % bootstrap interval that resamples questions within each seed (seeds kept as strata), and an exact
  McNemar p-value on the discordant pairs pooled over seeds;
- PGR per seed, then mean ± std over the seeds where it is defined (ceiling above the weak model).
"""
from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ensemw2s.config import Config, from_dict, load_config, to_dict
from ensemw2s.errors import ConfigError
from ensemw2s.provenance import code_commit, produced_record, produced_seconds
from ensemw2s.stats import mcnemar_p, mean_std, paired_test, stratified_bootstrap, stratified_paired_se

from . import REPO, RESULTS_DIR
from .runs import correct_of, find_run, recorded_runs, run_id_for, run_plans

ROWS = [("weak_single", "weak single expert (the baseline)"),
        ("weak_round1", "round-1 boosting expert alone (the baseline's old definition)"),
        ("weak_full", "weak expert on all easy data (train_single)"),
        ("ensemble", "EnsemW2S ensemble (T chosen on easy_val)"),
        ("ensemble_uniform", "same experts, uniform weights"), ("ceiling", "strong ceiling (gold labels)"),
        ("student_single", "student ← single expert"), ("student_ensemble", "student ← ensemble")]
PAIRS = [("ensemble", "weak_single", "ensemble − single expert"),
         ("student_ensemble", "student_single", "student←ensemble − student←single"),
         ("ensemble", "ensemble_uniform", "alpha weights − uniform weights"),
         ("ceiling", "weak_single", "ceiling − single expert (the gap to recover)")]
PAPER = [  # EnsemW2S (arXiv 2505.21959), headline numbers as stated in its abstract
    ("ensemble vs single weak expert, ID", "+4 %", "ensemble − single expert", "id"),
    ("ensemble vs single weak expert, OOD", "up to +6 %", "ensemble − single expert", "ood"),
    ("student ← ensemble vs student ← single, ID", "+3.2 %", "student←ensemble − student←single", "id"),
    ("student ← ensemble vs student ← single, OOD", "+2.28 %", "student←ensemble − student←single", "ood"),
]
TOOL = "python -m benchmarks.science"


# --------------------------------------------------------------------------- statistics over seeds


def pooled_paired(runs: list[dict], a: str, b: str, split: str, *, n_boot: int = 4000, seed: int = 0) -> Optional[dict]:
    """A - B over the same questions, seeds as strata (see the module docstring); None when a run lacks them."""
    return pool_over_seeds([(correct_of(r, a, split), correct_of(r, b, split)) for r in runs], n_boot=n_boot,
                           seed=seed)


def pool_over_seeds(pairs: list[tuple[dict, dict]], *, n_boot: int = 4000, seed: int = 0) -> Optional[dict]:
    """A - B, one ``({id: correct of A}, {id: correct of B})`` per seed, paired on the ids both have and pooled
    with the seeds as strata: ``diff``, ``ci_low``, ``ci_high``, ``per_seed``, ``n_pairs``, ``mcnemar_p``,
    ``se``; None when a seed has no question in common (or there is none)."""
    diffs, xa, xb = [], [], []
    for ca, cb in pairs:
        ids = sorted(set(ca) & set(cb))
        if not ids:
            return None
        va, vb = [ca[i] for i in ids], [cb[i] for i in ids]
        diffs.append(np.asarray(va, float) - np.asarray(vb, float))
        xa += va
        xb += vb
    if not diffs:
        return None
    boot = stratified_bootstrap(diffs, n_boot=n_boot, seed=seed)
    return {"diff": boot["diff"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"],
            "per_seed": boot["per_stratum"], "n_pairs": boot["n"], "mcnemar_p": mcnemar_p(xa, xb),
            "se": stratified_paired_se(diffs)}


def cross_paired(run_a: dict, run_b: dict, model: str, split: str) -> Optional[dict]:
    """``model`` of run A - the same model of run B, on the questions both scored."""
    ca, cb = correct_of(run_a, model, split), correct_of(run_b, model, split)
    ids = sorted(set(ca) & set(cb))
    if not ids:
        return None
    return paired_test([ca[i] for i in ids], [cb[i] for i in ids])


def _pm(xs: list, digits: int = 3) -> str:
    m, s, k = mean_std(xs)
    if m is None:
        return "—"
    return f"{m:.{digits}f} ± {s:.{digits}f}" + (f" ({k} of {len(xs)} seeds)" if k != len(xs) else "")


def _ci(d: Optional[dict]) -> str:
    if not d:
        return "—"
    se = d.get("se")
    z = f" ({d['diff'] / se:+.1f} SE)" if se and math.isfinite(se) else ""
    return (f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]{z} | p = {d['mcnemar_p']:.3f} | "
            + ", ".join(f"{x:+.3f}" for x in d["per_seed"]) + f" | {d['n_pairs']}")


def _f(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


# --------------------------------------------------------------------------- facts from the records


def run_commits(runs: list[dict]) -> str:
    """The source commits recorded by the executions that computed the runs' steps, for the page header."""
    seen: dict[str, int] = {}
    unknown = 0
    for r in runs:
        for t in r["summary"]["timings"].values():
            rec = produced_record(t) or {}
            if rec.get("commit"):
                seen[rec["commit"]] = seen.get(rec["commit"], 0) + 1
            else:
                unknown += 1
    parts = [f"`{c}` ({n} steps)" for c, n in seen.items()]
    if unknown:
        parts.append(f"not recorded ({unknown} steps, run before steps recorded their commit)")
    return ", ".join(parts) if parts else "none"


def describe_machine(m: dict) -> str:
    """One line of a ``provenance.machine_info()`` record."""
    gpu = f"{m.get('gpu_count') or 1} × {m['gpu']}" if m.get("gpu") else "no GPU"
    return f"{m.get('cpu_count', '?')} CPU cores, {gpu}"


def machines(records: list[dict], what: str = "runs") -> str:
    """The machines recorded by the runs' summaries (or the pre-study's entries), with how many each."""
    seen: dict[str, int] = {}
    unknown = 0
    for r in records:
        m = (r.get("summary") or {}).get("machine") if "summary" in r else r.get("machine")
        if m:
            d = describe_machine(m)
            seen[d] = seen.get(d, 0) + 1
        else:
            unknown += 1
    parts = [d if len(seen) == 1 and not unknown else f"{d} ({n} {what})" for d, n in seen.items()]
    if unknown:
        parts.append(f"not recorded ({unknown} {what}, made before the machine was recorded)")
    return ", ".join(parts) if parts else "none"


def _model(name: str) -> str:
    from ensemw2s.assets import model_display_name

    return model_display_name(name)


def _dataset(name: str) -> dict:
    from ensemw2s.assets import DATASETS

    return DATASETS.get(name) or {"license": "unknown licence", "display_name": name}


def _trained(section: dict) -> str:
    lora = section.get("lora") or {}
    return _model(section["model"]) + (f" + LoRA r={lora['r']}" if lora.get("enabled") else " (full fine-tuning)")


def _layers(section: dict) -> str:
    n = (section.get("lora") or {}).get("layers") or 0
    return f", LoRA top {n} layers" if n else ""


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def page_config(runs: list[dict], fallback: Config) -> tuple[Config, str]:
    """The config the page describes: the first run's stored config (seed aside, all seeds share it), else
    ``fallback`` (records that did not keep it), with a note saying so."""
    for r in runs:
        if r.get("config"):
            return from_dict(Config, r["config"]), ""
    return fallback, "the --config file: the run records hold no stored config"


# --------------------------------------------------------------------------- the page


def _prestudy_section(book: dict, book_path: Path) -> list[str]:
    if not book.get("entries"):
        return [f"No pre-study results yet (`{TOOL} settings`)."]
    out = ["| setting | variant | weak → strong | prompt | weak training | ceiling training | n OOD | chance "
           "| weak zero-shot | weak | strong zero-shot | ceiling (gold) | ceiling − weak (SE) | weak − chance (SE) "
           "| qualifies | time |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    entries = sorted(book["entries"].values(), key=lambda e: (e["setting"], e["date"]))
    for e in entries:
        a, s, c = e["acc"], e["se"], e["config"]
        sizes = e["sizes"]

        def budget(section, rows, c=c):
            t = c[section]["train"]
            return f"{rows} rows × {t['epochs']:g} ep, lr {t['lr']:g}"

        weak = "weak" if "weak" in a else "weak_r1"  # entries before train_single: the round-1 expert
        out.append(f"| {e['description'] or e['setting']} | {e['variant']} | {_model(c['experts']['model'])} → "
                   f"{_model(c['student']['model'])} | {c['data'].get('prompt', 'mc')} | "
                   f"{budget('experts', sizes['easy_train'])}{' (r1)' if weak == 'weak_r1' else ' (all)'} | "
                   f"{budget('student', sizes['hard_pool'])}{_layers(c['student'])} | "
                   f"{e['n_ood']} | {e['chance']:.3f} | "
                   f"{a['weak_zeroshot']:.3f} | {a[weak]:.3f} ± {s[weak]:.3f} | "
                   f"{a['strong_zeroshot']:.3f} | {a['ceiling']:.3f} ± {s['ceiling']:.3f} | "
                   f"{e['gap']:+.3f} ({e['gap_in_se']:.1f}) | {e['above_chance']:+.3f} ({e['above_chance_in_se']:.1f}) "
                   f"| {'**yes**' if e['qualifies'] else 'no'} | {e['total_seconds'] / 60:.1f} min |")
    kinds: dict[str, int] = {}
    for e in entries:
        c = e["config"]
        k = f"experts {_trained(c['experts'])}, ceiling {_trained(c['student'])}, seed {c.get('seed')}"
        kinds[k] = kinds.get(k, 0) + 1
    models = "; ".join(k if len(kinds) == 1 else f"{k} ({n} entries)" for k, n in kinds.items())
    out += ["", f"Every entry is one seed: {models}; machine: {machines(entries, 'entries')}. The full config of "
            f"each is in {_rel(book_path)}."]
    return out


def render(cfg: Config, runs: list[dict], missing: list[str], ablations: list[dict], book: dict, *,
           command: str, plot_name: str, notes: str, ablation_info: Optional[dict] = None,
           book_path: Path = RESULTS_DIR / "prestudy.json", cfg_source: str = "", sources: str = "",
           reference: Optional[dict] = None, study: Optional[dict] = None) -> str:
    """The page. ``runs``: the main runs' records (:func:`benchmarks.science.runs.collect_run`); ``ablations``:
    ``{name, seed, overrides, run (record or None), why}``; ``ablation_info``: ``{seeds, fork_from}``."""
    from ensemw2s.plots import caption

    m0 = runs[0]["metrics"] if runs else {}
    easy, hard = _dataset(cfg.data.easy), _dataset(cfg.data.hard)
    weak, strong = _model(cfg.experts.model), _model(cfg.student.model)
    scored = "option log-likelihood" if cfg.eval.primary == "loglik" else cfg.eval.primary
    accuracy = f"{scored} (length-normalised)" if cfg.eval.primary == "loglik" else scored
    records = runs + [a["run"] for a in ablations if a.get("run")]
    L = [f"# Does EnsemW2S work here? Results on {time.strftime('%Y-%m-%d', time.gmtime())}", "",
         f"Generated by `{TOOL} science` (benchmarks/science/page.py) from the stored per-question "
         "predictions of the runs below; prose in *Choices and reading* comes from docs/results/notes.md.", "",
         f"- Command: `{command}`",
         f"- Page built at commit `{code_commit() or 'unknown'}` from {sources or 'the runs stored in S3'}; commits "
         f"the steps ran at: {run_commits(records)}; machine: {machines(records)}; every run is a real local "
         "pipeline run (kfp.local + SeaweedFS), artifacts under `s3://<bucket>/runs/<run id>/`.",
         f"- Weak experts: {weak}; strong student: {strong}" + (f" (from {cfg_source})" if cfg_source else "")
         + ".",
         f"- Data: easy = {cfg.data.easy} ({easy['license']}), hard = {cfg.data.hard} "
         f"({hard['license']}); sizes easy_train {cfg.data.easy_train}, easy_val "
         f"{cfg.data.easy_val}, easy_test (ID) {m0.get('n_id', cfg.data.easy_test)}, hard_pool {cfg.data.hard_pool}, "
         f"hard_test (OOD) {m0.get('n_ood', cfg.data.hard_test)} per seed.",
         f"- Seeds: {', '.join(str(r['metrics'].get('seed')) for r in runs) or 'none finished'}"
         + (f"; **missing: {', '.join(missing)}**" if missing else "") + ".",
         f"- Boosting: up to T = {cfg.boosting.rounds} rounds, alpha rule `{cfg.boosting.alpha_rule}`, "
         f"`{cfg.boosting.sampling}`; T used per seed (chosen on easy_val): "
         f"{', '.join(str(r['metrics'].get('chosen_rounds')) for r in runs)}; pseudo-labels by "
         f"`{cfg.ensemble.pseudo_label_mode}`; accuracy = {accuracy}.", ""]
    L += ["## Pre-study: which settings can show a weak-to-strong effect", "",
          "The weak expert and the gold-trained strong ceiling on each setting's OOD test (one seed; both base "
          "models zero-shot for reference). The weak expert is the single baseline: fine-tuned on all easy_train "
          "rows (*weak training* ends in “(all)”), or, in entries made before that baseline existed, the round-1 "
          "boosting expert (“(r1)”). A setting qualifies when ceiling − weak ≥ 3 standard errors of the paired "
          "difference and ≥ 8 points (entries made before the 8-point rule: 3 SE only), and weak − chance ≥ 3 "
          f"standard errors of the weak accuracy. Command: `{TOOL} settings [--set ...] --variant NAME`.", ""]
    L += _prestudy_section(book, book_path)
    L += ["", f"## Main results (mean ± std over {len(runs)} seeds)", "",
          f"| model | ID (n={m0.get('n_id')}) | OOD (n={m0.get('n_ood')}) |", "|---|---|---|"]
    for key, label in ROWS:
        if not any(r["metrics"].get(f"{key}_acc_ood") is not None for r in runs):
            continue
        if key == "weak_single":
            label += f" = {_single_definition(cfg)}"
        L.append(f"| {label} | {_pm([r['metrics'].get(f'{key}_acc_id') for r in runs])} | "
                 f"{_pm([r['metrics'].get(f'{key}_acc_ood') for r in runs])} |")
    L += [f"| PGR_single = (student←single − weak) / (ceiling − weak), OOD | | "
          f"{_pm([r['metrics'].get('pgr_single') for r in runs], 2)} |",
          f"| PGR_ens = (student←ensemble − ensemble) / (ceiling − ensemble), OOD | | "
          f"{_pm([r['metrics'].get('pgr_ens') for r in runs], 2)} |", ""]
    labels_acc = {k: [r["metrics"].get(f"student_{k}_labels_accuracy_vs_gold") for r in runs]
                  for k in ("single", "ensemble", "gold")}
    L += [f"Pseudo-labels that match the gold answer (hard_pool, the students' training labels): single expert "
          f"{_pm(labels_acc['single'])}, ensemble {_pm(labels_acc['ensemble'])}, gold {_pm(labels_acc['gold'])}.",
          ""]
    pairs = {}
    L += ["## Paired differences (same questions)", "",
          "95 % bootstrap interval over questions within seeds; McNemar exact p on the pooled discordant pairs.",
          "", "| difference | split | mean [95 % CI] | McNemar p | per seed | pairs |", "|---|---|---|---|---|---|"]
    for a, b, name in PAIRS:
        for split, tag in (("easy_test", "ID"), ("hard_test", "OOD")):
            d = pooled_paired(runs, a, b, split) if runs else None
            pairs[(name, tag.lower())] = d
            L.append(f"| {name} | {tag} | " + _ci(d) + " |")
    L += ["", f"![ensemble accuracy by round]({plot_name})", "", caption(len(runs)), ""]
    L += ["## The paper's headline claims beside ours", "",
          "The paper's numbers are the paper's (EnsemW2S, arXiv 2505.21959, abstract), measured in its own setting: "
          f"its models, datasets and easy/hard splits, which differ from ours (here {weak} experts, a {strong} "
          f"student, {easy['display_name']} → {hard['display_name']}, {scored} accuracy). Ours are the paired "
          "means above, in accuracy points.", "",
          "| claim | paper | ours (mean [95 % CI]) |", "|---|---|---|"]
    for claim, paper, name, tag in PAPER:
        d = pairs.get((name, tag))
        ours = f"{100 * d['diff']:+.1f} points [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]" if d else "—"
        L.append(f"| {claim} | {paper} | {ours} |")
    if study is not None:  # the boosting study (benchmarks/science/study.py): the experts alone, 3 arms
        from .study_page import render_study_section

        L += [""] + render_study_section(study)
    if ablations:
        L += _ablation_section(runs, ablations, ablation_info or {})
    if reference:
        L += _reference_section(reference)
    L += ["", "## Wall time", "", "| step | " + " | ".join(f"seed {r['metrics'].get('seed')}" for r in runs) + " |",
          "|---|" + "---|" * len(runs)]
    work = [{s: produced_seconds(t) for s, t in r["summary"]["timings"].items()} for r in runs]
    first = {}  # step -> earliest start of the execution that computed it, to list steps in pipeline order
    for r in runs:
        for s, t in r["summary"]["timings"].items():
            start = (produced_record(t) or {}).get("start", float("inf"))
            first[s] = min(first.get(s, start), start)
    steps = sorted(first, key=lambda s: first[s])
    for s in steps:
        L.append(f"| {s} | " + " | ".join(_f(w.get(s), 1) for w in work) + " |")
    L.append("| **total of the steps' work (s)** | " + " | ".join(
        _f(sum(w.values()), 1) if all(v is not None for v in w.values()) else "—" for w in work) + " |")
    jobs = max([(r["summary"].get("parallel_jobs") or 1) for r in runs] or [1])
    L += ["", "Seconds of work inside each step, from the execution that computed it (a step restored by a later "
          f"resume keeps its first timing; — = not recorded); runs executed {jobs} at a time"
          + (f" (each with 1/{jobs} of the cores, so a step takes longer than on an idle machine)" if jobs > 1
             else "") + ". Run ids: " + ", ".join(f"`{r['run_id']}`" for r in runs) + ".", ""]
    if notes:
        L += ["## Choices and reading", "", notes.strip(), ""]
    return "\n".join(L) + "\n"


def _single_definition(cfg: Config) -> str:
    if cfg.ensemble.single == "full":
        return f"{_model(cfg.experts.model)} fine-tuned on all {cfg.data.easy_train} easy_train rows"
    return "the round-1 boosting expert"


REFERENCE_ROWS = (("weak_single", "weak single expert (round 1)"), ("ensemble", "EnsemW2S ensemble"),
                  ("ceiling", "strong ceiling (gold labels)"), ("student_single", "student ← single expert"),
                  ("student_ensemble", "student ← ensemble"))


def _reference_section(reference: dict) -> list[str]:
    """A setting kept for reference, from its records (``science.json`` of its own page): mean ± std."""
    runs = reference["runs"]
    m0 = runs[0]["metrics"] if runs else {}
    cfg = (runs[0].get("config") if runs else None) or {}
    models = (f"{_model(m0['weak_model'])} experts, {_model(m0['strong_model'])} student"
              if m0.get("weak_model") and m0.get("strong_model") else "see its page")
    out = ["", f"## Reference: the small-gap setting ({models})", "",
           f"The setting of the first results page, kept for reference: its full page (generated by its own "
           f"command, with its pre-study, ablations and prose) is [{reference['page']}]({reference['page']}); the "
           f"numbers below are read from its run records ({reference['path']}). There the single baseline was "
           "the round-1 boosting expert." + (f" Config: {cfg.get('data', {}).get('easy')} → "
                                            f"{cfg.get('data', {}).get('hard')}." if cfg else ""), "",
           f"| model ({len(runs)} seeds) | ID (n={m0.get('n_id')}) | OOD (n={m0.get('n_ood')}) |", "|---|---|---|"]
    for key, label in REFERENCE_ROWS:
        out.append(f"| {label} | {_pm([r['metrics'].get(f'{key}_acc_id') for r in runs])} | "
                   f"{_pm([r['metrics'].get(f'{key}_acc_ood') for r in runs])} |")
    gap = [r["metrics"]["ceiling_acc_ood"] - r["metrics"]["weak_single_acc_ood"] for r in runs]
    out += ["", f"The gap to recover there (ceiling − weak, OOD): {_pm(gap)} over its seeds (the "
            "main setting's gap is in the paired table above).", ""]
    return out


def load_reference(path: Path) -> dict:
    """The records of a reference setting: its ``science.json`` and the page beside it (``results_<x>.md``)."""
    data = json.loads(Path(path).read_text())
    page = Path(path).parent.parent / (Path(path).stem.replace("science_", "results_") + ".md")
    return {"runs": data["runs"], "path": _rel(Path(path)), "page": _rel(page).replace("docs/", "", 1)}


def _ablation_section(runs: list[dict], ablations: list[dict], info: dict) -> list[str]:
    seeds = sorted({a["seed"] for a in ablations})
    fork = info.get("fork_from") == "base"
    one = len(seeds) == 1
    where = f"seed {seeds[0]}" if one else "seeds " + ", ".join(map(str, seeds))
    against = f"the seed-{seeds[0]} main run" if one else "the main run of the same seed"
    L = ["", f"## Ablations ({where}, {'forked from' if fork else 'each beside'} {against})", ""]
    if fork:
        L.append(f"Each ablation is a real run started from a copy of the artifacts of {against} (`ensemw2s run "
                 "--from-run`): only the steps whose config or inputs changed were recomputed. Paired differences "
                 f"are against {against} on the same questions.")
    else:
        L.append(f"Each ablation is a real run from scratch. Paired differences are against {against} on the "
                 "same questions.")
    header = ["variant", "overrides", "T used", "ensemble ID", "ensemble OOD", "student←ens OOD",
              "ensemble OOD − main [95 % CI]", "student←ens OOD − main [95 % CI]", "single OOD", "student←single OOD",
              "PGR_single", "single OOD − main [95 % CI]", "student←single OOD − main [95 % CI]"]
    L += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    main = {r["metrics"].get("seed"): r for r in runs}
    for ab in ablations:
        name = ab["name"] if one else f"{ab['name']} (seed {ab['seed']})"
        shown = " ".join(ab["overrides"]) or "(none: same as the main config)"
        if ab.get("run") is None:
            L.append(f"| {name} | `{shown}` | **missing** ({ab.get('why', '')}) |" + " |" * (len(header) - 3))
            continue
        m = ab["run"]["metrics"]
        base = main.get(ab["seed"])
        cells = []
        for model in ("ensemble", "student_ensemble", "weak_single", "student_single"):
            d = cross_paired(ab["run"], base, model, "hard_test") if base else None
            cells.append(f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d else "—")
        L.append(f"| {name} | `{shown}` | {m.get('chosen_rounds')} | "
                 f"{_f(m.get('ensemble_acc_id'))} | {_f(m.get('ensemble_acc_ood'))} | "
                 f"{_f(m.get('student_ensemble_acc_ood'))} | {cells[0]} | {cells[1]} | "
                 f"{_f(m.get('weak_single_acc_ood'))} | {_f(m.get('student_single_acc_ood'))} | "
                 f"{_f(m.get('pgr_single'))} | {cells[2]} | {cells[3]} |")
    L += ["", "The uniform-weight ensemble (plain average of the same experts) is in every run: see the main "
          "table and the *alpha weights − uniform weights* paired difference."]
    return L


# --------------------------------------------------------------------------- the command


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_ablation(ab, path: str, config: str, seeds: int) -> None:
    """The ablations vary keys on top of the main runs: the file's ``base:`` must be the ``--config`` config
    (seed aside), and with ``fork_from: base`` each ablation seed must be one of the main runs' seeds."""
    main, base = _flat(to_dict(load_config(config))), _flat(to_dict(ab.base))
    diff = sorted(k for k in set(main) | set(base) if k != "seed" and main.get(k) != base.get(k))
    if diff:
        raise ConfigError(f"{path}: its base is not the --config config ({config}); they differ at "
                          f"{', '.join(diff[:8])}{' …' if len(diff) > 8 else ''}. The ablations vary keys on top of "
                          "the main runs: set `base:` to the same config file (a path relative to the ablation file)")
    if ab.fork_from == "base":
        bad = [s for s in ab.seeds if s >= seeds]
        if bad:
            raise ConfigError(f"{path}: seeds {bad}: with fork_from: base each ablation run forks the main run of "
                              f"its seed, but --seeds {seeds} runs seeds 0..{seeds - 1}")


def science(config: str, overrides: list[str], *, seeds: int, jobs: int, tag: str, ablations: Optional[str],
            run: bool, out: Path, log_dir: Optional[Path] = None,
            prestudy: Path = RESULTS_DIR / "prestudy.json", notes: Path = RESULTS_DIR / "notes.md",
            reference: Optional[Path] = None) -> int:
    """Run (unless ``run`` is False) the seeds and ablations, then write the page ``out``, its plot and
    ``science.json`` beside it (in ``<out folder>/results/``). Returns the exit code (1 when a run is missing)."""
    from ensemw2s import storage
    from ensemw2s.ablation import load_ablation
    from ensemw2s.errors import StorageError
    from ensemw2s.plots import plot_by_round

    if seeds < 1:
        raise ConfigError(f"--seeds: {seeds!r} is out of range; it must be >= 1")
    if jobs < 1:
        raise ConfigError(f"--jobs: {jobs!r} is out of range; it must be >= 1")
    cfg = load_config(config, overrides)
    ab = load_ablation(ablations) if ablations else None
    if ab is not None:
        check_ablation(ab, ablations, config, seeds)
    plans = []
    for s in range(seeds):
        items = list(overrides) + [f"seed={s}"]
        plans.append({"label": f"seed {s}", "seed": s, "overrides": items,
                      "run_id": run_id_for(tag, load_config(config, items))})
    main_of = {p["seed"]: p["run_id"] for p in plans}
    abl_plans = []
    for point in ab.points if ab else []:
        for s in ab.seeds:
            items = list(overrides) + point.overrides() + [f"seed={s}"]
            plan = {"label": f"{point.name} seed {s}", "name": point.name, "seed": s, "overrides": items,
                    "shown": point.overrides(cfg), "run_id": run_id_for(f"{tag}-{point.name}",
                                                                       load_config(config, items))}
            if ab.fork_from == "base":
                plan["from_run"] = main_of[s]
            abl_plans.append(plan)

    out = Path(out)
    plots = out.parent / "results"
    json_path = plots / "science.json"
    study_path = plots / "study.json"  # the boosting study's records (python -m benchmarks.science study)
    recorded = recorded_runs(json_path)
    store = None
    try:
        storage.storage_env(cfg.storage)
        store = storage.Store.from_config(cfg.storage)
        store.check()
    except StorageError as exc:
        if run:
            raise
        print(f"note: object storage unavailable ({exc}); using the run records in {json_path}", flush=True)
        store = None
    if run:
        # one queue, seeds first; an ablation that forks starts once the main run it copies has finished
        run_plans(config, plans + abl_plans, jobs=jobs, log_dir=Path(log_dir or REPO / "build" / "science"))
    runs, missing, used = [], [], set()
    for p in plans:
        rec, where = find_run(store, p["run_id"], recorded)
        if rec is None:
            missing.append(f"{p['label']} (`{p['run_id']}`)")
            continue
        used.add(where)
        runs.append(rec)
    abl_out = []
    for p in abl_plans:
        rec, where = find_run(store, p["run_id"], recorded)
        if rec:
            used.add(where)
        abl_out.append({"name": p["name"], "seed": p["seed"], "overrides": p["shown"], "run": rec,
                        "why": None if rec else f"run {p['run_id']}: {where}"})
    if not runs:
        print(f"error: no finished run to report (missing: {', '.join(missing)})", file=sys.stderr)
        return 1
    plots.mkdir(parents=True, exist_ok=True)
    plot_path = plots / "ensemble_by_round.png"
    plot_by_round([r["metrics"] for r in runs], plot_path)
    book = json.loads(Path(prestudy).read_text()) if Path(prestudy).is_file() else {}
    command = f"{TOOL} science --config " + shlex.quote(config) + f" --seeds {seeds}" + (
        f" --jobs {jobs}" if jobs > 1 else "") + (f" --ablations {ablations}" if ablations else "") + "".join(
        f" --set {shlex.quote(o)}" for o in overrides) + (f" --reference {_rel(Path(reference))}" if reference
                                                           else "")
    sources = {"store": "the runs stored in S3",
               "science.json": f"the run records kept in {_rel(json_path)} (not in this object store)"}
    page_cfg, cfg_source = page_config(runs, cfg)
    page = render(page_cfg, runs, missing, abl_out, book, command=command,
                  plot_name=f"{plots.name}/{plot_path.name}",
                  notes=Path(notes).read_text() if Path(notes).is_file() else "",
                  ablation_info={"seeds": ab.seeds, "fork_from": ab.fork_from} if ab else None,
                  book_path=Path(prestudy), cfg_source=cfg_source,
                  sources=" and ".join(sources[w] for w in sorted(used, reverse=True)),
                  reference=load_reference(Path(reference)) if reference else None,
                  study=json.loads(study_path.read_text()) if study_path.is_file() else None)
    out.write_text(page)
    summary = {"runs": runs,
               "ablations": [{"name": a["name"], "seed": a["seed"], "overrides": a["overrides"],
                              **(a["run"] or {"metrics": None})} for a in abl_out],
               "missing": missing, "command": command}
    json_path.write_text(json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    print(page)
    print(f"wrote {out}, {plot_path} and {json_path}")
    return 0 if not missing else 1
