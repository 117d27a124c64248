"""``ensemw2s bench science``: seeds (and ablations) through the real pipeline, pooled into ``docs/results.md``.

Every number on the page is computed here from the runs' stored per-question predictions (object storage,
``runs/<run_id>/report/``) and from ``docs/results/prestudy.json``; hand-written prose comes only from
``docs/results/notes.md`` and is included as it is. Statistics:

- accuracies: mean +- sample std over seeds (n questions per split per seed);
- paired differences (A - B on the same questions): the mean over seeds of the per-seed mean difference, with
  a 95 % bootstrap interval that resamples questions within each seed (seeds kept as strata), and an exact
  McNemar p-value on the discordant pairs pooled over seeds;
- PGR per seed, then mean +- std over the seeds where it is defined (ceiling above the weak model).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from ensemw2s.config import ConfigError, load_config
from ensemw2s.science import RESULTS_DIR, ROOT, collect_run, run_id_for
from ensemw2s.steps._io import produced_record

ROWS = [("weak_single", "weak single expert (round 1)"), ("ensemble", "EnsemW2S ensemble (T chosen on easy_val)"),
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


# --------------------------------------------------------------------------- statistics over seeds


def _correct(preds: list[dict], model: str, split: str) -> dict:
    return {p["id"]: bool(p["correct"]) for p in preds
            if p["model"] == model and p["split"] == split and p["method"] == "loglik"}


def pooled_paired(runs: list[dict], a: str, b: str, split: str, *, n_boot: int = 4000, seed: int = 0) -> Optional[dict]:
    """A - B over the same questions, seeds as strata (see the module docstring)."""
    from ensemw2s.evaluation import mcnemar_p

    diffs, xa, xb = [], [], []
    for r in runs:
        ca, cb = _correct(r["predictions"], a, split), _correct(r["predictions"], b, split)
        ids = sorted(set(ca) & set(cb))
        if not ids:
            return None
        va, vb = [ca[i] for i in ids], [cb[i] for i in ids]
        diffs.append(np.asarray(va, float) - np.asarray(vb, float))
        xa += va
        xb += vb
    rng = np.random.default_rng(seed)
    boots = np.zeros(n_boot)
    for d in diffs:
        boots += d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    boots /= len(diffs)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    per_seed = [float(d.mean()) for d in diffs]
    # standard error of the mean over seeds of the per-seed paired means (questions vary, seeds are strata)
    se = math.sqrt(sum(d.var(ddof=1) / d.size for d in diffs if d.size > 1)) / len(diffs)
    return {"diff": float(np.mean(per_seed)), "ci_low": float(lo), "ci_high": float(hi), "per_seed": per_seed,
            "n_pairs": int(sum(d.size for d in diffs)), "mcnemar_p": mcnemar_p(xa, xb), "se": se}


def mean_std(xs: list) -> tuple[Optional[float], Optional[float], int]:
    v = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0), len(v)


def _pm(xs: list, digits: int = 3) -> str:
    m, s, k = mean_std(xs)
    if m is None:
        return "—"
    return f"{m:.{digits}f} ± {s:.{digits}f}" + (f" ({k} of {len(xs)} seeds)" if k != len(xs) else "")


def _ci(d: Optional[dict]) -> str:
    if not d:
        return "—"
    z = f" ({d['diff'] / d['se']:+.1f} SE)" if d.get("se") else ""
    return (f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]{z} | p = {d['mcnemar_p']:.3f} | "
            + ", ".join(f"{x:+.3f}" for x in d["per_seed"]) + f" | {d['n_pairs']}")


# --------------------------------------------------------------------------- the plot


def plot_by_round(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120, sharey=False)
    for ax, tag, title in ((axes[0], "id", "ID (easy_test)"), (axes[1], "ood", "OOD (hard_test)")):
        by = [r["metrics"].get(f"ensemble_acc_{tag}_by_round") or [] for r in runs]
        T = max(len(b) for b in by)
        xs, ms, ss = [], [], []
        for t in range(T):
            m, s, _ = mean_std([b[t] if t < len(b) else None for b in by])
            if m is not None:
                xs.append(t + 1)
                ms.append(m)
                ss.append(s)
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color="tab:blue", label="ensemble of rounds 1..t")
        sm, sd, _ = mean_std([r["metrics"].get(f"weak_single_acc_{tag}_ll") for r in runs])
        if sm is not None:
            ax.axhline(sm, color="tab:red", linestyle="--", linewidth=1, label="single expert (round 1)")
            ax.axhspan(sm - sd, sm + sd, color="tab:red", alpha=0.12)
        ax.set_xticks(range(1, T + 1))
        ax.set_xlabel("rounds in the ensemble (t)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (option log-likelihood)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"EnsemW2S ensemble accuracy by round: mean ± std over {len(runs)} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- the page


def _prestudy_section(book: dict) -> list[str]:
    if not book.get("entries"):
        return ["No pre-study results yet (`ensemw2s bench settings`)."]
    out = ["| setting | variant | prompt | weak r1 training | ceiling training | n OOD | chance | weak zero-shot "
           "| weak r1 | strong zero-shot | ceiling (gold) | ceiling − weak (SE) | weak − chance (SE) | qualifies "
           "| time |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(book["entries"].values(), key=lambda e: (e["setting"], e["date"])):
        a, s, c = e["acc"], e["se"], e["config"]
        sizes = e["sizes"]

        def budget(section, rows, c=c):
            t = c[section]["train"]
            return f"{rows} rows × {t['epochs']:g} ep, lr {t['lr']:g}"

        out.append(f"| {e['description'] or e['setting']} | {e['variant']} | {c['data'].get('prompt', 'mc')} | "
                   f"{budget('experts', sizes['easy_train'])} | {budget('student', sizes['hard_pool'])} | "
                   f"{e['n_ood']} | {e['chance']:.3f} | "
                   f"{a['weak_zeroshot']:.3f} | {a['weak_r1']:.3f} ± {s['weak_r1']:.3f} | "
                   f"{a['strong_zeroshot']:.3f} | {a['ceiling']:.3f} ± {s['ceiling']:.3f} | "
                   f"{e['gap']:+.3f} ({e['gap_in_se']:.1f}) | {e['above_chance']:+.3f} ({e['above_chance_in_se']:.1f}) "
                   f"| {'**yes**' if e['qualifies'] else 'no'} | {e['total_seconds'] / 60:.1f} min |")
    out += ["", "Every entry: SmolLM2 LoRA r=16 experts, Gemma LoRA r=16 ceiling, one seed; the full config of "
            "each is in docs/results/prestudy.json."]
    return out


def render(config: str, overrides: list[str], runs: list[dict], missing: list[str], ablations: list[dict],
           book: dict, *, command: str, plot_name: str, notes: str) -> str:
    from ensemw2s.data import DATASETS
    from ensemw2s.steps._io import code_commit

    cfg = load_config(config, overrides)
    m0 = runs[0]["metrics"] if runs else {}
    L = [f"# Does EnsemW2S work here? Results on {time.strftime('%Y-%m-%d', time.gmtime())}", "",
         "Generated by `ensemw2s bench science` (src/ensemw2s/results.py) from the stored per-question "
         "predictions of the runs below; prose in *Choices and reading* comes from docs/results/notes.md.", "",
         f"- Command: `{command}`",
         f"- Page built at commit `{code_commit()}` from the runs stored in S3; commits the steps ran at: "
         f"{run_commits(runs + [a['run'] for a in ablations if a.get('run')])}; machine: 2 CPU cores, no GPU; every "
         "run is a real local pipeline run (kfp.local + SeaweedFS), artifacts under `s3://<bucket>/runs/<run id>/`.",
         f"- Weak experts: {m0.get('weak_model') or cfg.experts.model}; strong student: "
         f"{m0.get('strong_model') or cfg.student.model}.",
         f"- Data: easy = {cfg.data.easy} ({DATASETS[cfg.data.easy]['license']}), hard = {cfg.data.hard} "
         f"({DATASETS[cfg.data.hard]['license']}); sizes easy_train {cfg.data.easy_train}, easy_val "
         f"{cfg.data.easy_val}, easy_test (ID) {m0.get('n_id', cfg.data.easy_test)}, hard_pool {cfg.data.hard_pool}, "
         f"hard_test (OOD) {m0.get('n_ood', cfg.data.hard_test)} per seed.",
         f"- Seeds: {', '.join(str(r['metrics'].get('seed')) for r in runs) or 'none finished'}"
         + (f"; **missing: {', '.join(missing)}**" if missing else "") + ".",
         f"- Boosting: up to T = {cfg.boosting.rounds} rounds, alpha rule `{cfg.boosting.alpha_rule}`, "
         f"`{cfg.boosting.sampling}`; T used per seed (chosen on easy_val): "
         f"{', '.join(str(r['metrics'].get('chosen_rounds')) for r in runs)}; pseudo-labels by "
         f"`{cfg.ensemble.pseudo_label_mode}`; accuracy = option log-likelihood (length-normalised).", ""]
    L += ["## Pre-study: which settings can show a weak-to-strong effect", "",
          "Round-1 weak expert and gold-trained strong ceiling on each setting's OOD test (one seed; both base "
          "models zero-shot for reference). A setting qualifies when ceiling − weak ≥ 3 standard errors of the "
          "paired difference and weak − chance ≥ 3 standard errors of the weak accuracy. Command: "
          "`ensemw2s bench settings [--set ...] --variant NAME`.", ""]
    L += _prestudy_section(book)
    L += ["", f"## Main results (mean ± std over {len(runs)} seeds)", "",
          f"| model | ID (n={m0.get('n_id')}) | OOD (n={m0.get('n_ood')}) |", "|---|---|---|"]
    for key, label in ROWS:
        L.append(f"| {label} | {_pm([r['metrics'].get(f'{key}_acc_id') for r in runs])} | "
                 f"{_pm([r['metrics'].get(f'{key}_acc_ood') for r in runs])} |")
    L += [f"| PGR_single = (student←single − weak) / (ceiling − weak), OOD | | "
          f"{_pm([r['metrics'].get('pgr_single') for r in runs], 2)} |",
          f"| PGR_ens = (student←ensemble − ensemble) / (ceiling − ensemble), OOD | | "
          f"{_pm([r['metrics'].get('pgr_ens') for r in runs], 2)} |", ""]
    labels_acc = {k: [r["metrics"].get(f"student_{k}_labels_accuracy_vs_gold") for r in runs]
                  for k in ("single", "ensemble")}
    L += [f"Pseudo-labels that match the gold answer (hard_pool): single expert {_pm(labels_acc['single'])}, "
          f"ensemble {_pm(labels_acc['ensemble'])}.", ""]
    pairs = {}
    L += ["## Paired differences (same questions)", "",
          "95 % bootstrap interval over questions within seeds; McNemar exact p on the pooled discordant pairs.",
          "", "| difference | split | mean [95 % CI] | McNemar p | per seed | pairs |", "|---|---|---|---|---|---|"]
    for a, b, name in PAIRS:
        for split, tag in (("easy_test", "ID"), ("hard_test", "OOD")):
            d = pooled_paired(runs, a, b, split) if runs else None
            pairs[(name, tag.lower())] = d
            L.append(f"| {name} | {tag} | " + _ci(d) + " |")
    L += ["", f"![ensemble accuracy by round]({plot_name})", "",
          "Ensemble accuracy of rounds 1..t (mean ± std over seeds), with the round-1 expert as the dashed line "
          "(band: ± std).", ""]
    L += ["## The paper's headline claims beside ours", "",
          "The paper's numbers are the paper's (EnsemW2S, arXiv 2505.21959, abstract), measured in its own setting: "
          "its models, datasets and easy/hard splits, which differ from ours (here 135M experts, a 270M student, "
          "ARC-Easy → SciQ, option log-likelihood accuracy). Ours are the paired means above, in accuracy "
          "points.", "",
          "| claim | paper | ours (mean [95 % CI]) |", "|---|---|---|"]
    for claim, paper, name, tag in PAPER:
        d = pairs.get((name, tag))
        ours = f"{100 * d['diff']:+.1f} points [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]" if d else "—"
        L.append(f"| {claim} | {paper} | {ours} |")
    if ablations:
        L += ["", "## Ablations (seed 0, forked from the seed-0 main run)", "",
              "Each ablation is a real run started from a copy of the seed-0 run's artifacts (`ensemw2s run "
              "--from-run`): only the steps whose config or inputs changed were recomputed. Paired differences "
              "are against the main seed-0 run on the same questions.", "",
              "| variant | overrides | T used | ensemble ID | ensemble OOD | student←ens OOD | ensemble OOD − main "
              "[95 % CI] | student←ens OOD − main [95 % CI] |", "|---|---|---|---|---|---|---|---|"]
        main0 = next((r for r in runs if r["metrics"].get("seed") == 0), None)
        for ab in ablations:
            if ab.get("run") is None:
                L.append(f"| {ab['name']} | `{' '.join(ab['overrides'])}` | **missing** ({ab.get('why', '')}) "
                         "| | | | | |")
                continue
            m = ab["run"]["metrics"]
            cells = []
            for model in ("ensemble", "student_ensemble"):
                d = _cross_paired(ab["run"], main0, model, "hard_test") if main0 else None
                cells.append(f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d else "—")
            L.append(f"| {ab['name']} | `{' '.join(ab['overrides'])}` | {m.get('chosen_rounds')} | "
                     f"{_f(m.get('ensemble_acc_id'))} | {_f(m.get('ensemble_acc_ood'))} | "
                     f"{_f(m.get('student_ensemble_acc_ood'))} | {cells[0]} | {cells[1]} |")
        L += ["", "The uniform-weight ensemble (plain average of the same experts) is in every run: see the main "
              "table and the *alpha weights − uniform weights* paired difference."]
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
    jobs = max((r["summary"].get("parallel_jobs") or 1) for r in runs)
    L += ["", "Seconds of work inside each step, from the execution that computed it (a step restored by a later "
          f"resume keeps its first timing; — = not recorded); runs executed {jobs} at a time"
          + (f" (each with 1/{jobs} of the cores, so a step takes longer than on an idle machine)" if jobs > 1
             else "") + ". Run ids: " + ", ".join(f"`{r['run_id']}`" for r in runs) + ".", ""]
    if notes:
        L += ["## Choices and reading", "", notes.strip(), ""]
    return "\n".join(L) + "\n"


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


def produced_seconds(timing: dict) -> Optional[float]:
    """Work seconds of the execution that computed a step, from its timing.json record (None if unknown)."""
    rec = produced_record(timing)
    return rec.get("work_seconds") if rec else None


def _f(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _cross_paired(run_a: dict, run_b: dict, model: str, split: str) -> Optional[dict]:
    from ensemw2s.evaluation import mcnemar_p, paired_bootstrap

    ca, cb = _correct(run_a["predictions"], model, split), _correct(run_b["predictions"], model, split)
    ids = sorted(set(ca) & set(cb))
    if not ids:
        return None
    a, b = [ca[i] for i in ids], [cb[i] for i in ids]
    return {**paired_bootstrap(a, b), "mcnemar_p": mcnemar_p(a, b)}


# --------------------------------------------------------------------------- the command


def load_ablations(path: Optional[str]) -> list[dict]:
    if not path:
        return []
    data = yaml.safe_load(Path(path).read_text()) or {}
    items = data.get("ablations")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: expected a non-empty list under 'ablations:' with name and overrides")
    out = []
    for i, a in enumerate(items):
        if not isinstance(a, dict) or set(a) - {"name", "overrides"} or "name" not in a:
            raise ConfigError(f"{path}: ablations[{i}]: allowed keys are name, overrides; got {a!r}")
        out.append({"name": str(a["name"]), "overrides": [str(o) for o in a.get("overrides") or []]})
    return out


def science(config: str, overrides: list[str], *, seeds: int, jobs: int, tag: str, ablations: Optional[str],
            run: bool, out: Path, log_dir: Optional[Path] = None) -> int:
    import shlex
    import sys

    from ensemw2s import storage
    from ensemw2s.cli import storage_env
    from ensemw2s.science import run_plans

    abl = load_ablations(ablations)
    cfg = load_config(config, overrides)
    for a in abl:  # every ablation's overrides are checked before anything runs
        load_config(config, list(overrides) + a["overrides"] + ["seed=0"])
    storage_env(cfg)
    store = storage.Store.from_config(cfg.storage)
    store.check()
    log_dir = Path(log_dir or ROOT / "build" / "science")
    plans = [{"label": f"seed {s}", "overrides": list(overrides) + [f"seed={s}"],
              "run_id": run_id_for(tag, load_config(config, list(overrides) + [f"seed={s}"]))} for s in range(seeds)]
    main0 = plans[0]["run_id"]
    abl_plans = [{"label": a["name"], "overrides": list(overrides) + a["overrides"] + ["seed=0"], "from_run": main0,
                  "run_id": run_id_for(f"{tag}-{a['name']}", load_config(config, list(overrides) + a["overrides"]
                                                                          + ["seed=0"]))} for a in abl]
    if run:
        # one queue, seeds first; an ablation starts once the seed-0 run it forks has finished
        run_plans(config, plans + abl_plans, jobs=jobs, log_dir=log_dir)
    runs, missing = [], []
    for p in plans:
        try:
            res = collect_run(store, p["run_id"])
        except storage.MissingObjectError:
            missing.append(f"{p['label']} (`{p['run_id']}`)")
            continue
        runs.append(res)
    abl_out = []
    for a, p in zip(abl, abl_plans):
        try:
            abl_out.append({**a, "run": collect_run(store, p["run_id"])})
        except storage.MissingObjectError:
            abl_out.append({**a, "run": None, "why": f"run {p['run_id']} has no report"})
    if not runs:
        print(f"error: no finished run to report (missing: {', '.join(missing)})", file=sys.stderr)
        return 1
    out = Path(out)
    plots = out.parent / "results"
    plots.mkdir(parents=True, exist_ok=True)
    plot_path = plots / "ensemble_by_round.png"
    plot_by_round(runs, plot_path)
    book_path = RESULTS_DIR / "prestudy.json"
    book = json.loads(book_path.read_text()) if book_path.is_file() else {}
    notes_path = RESULTS_DIR / "notes.md"
    command = "ensemw2s bench science --config " + shlex.quote(config) + f" --seeds {seeds}" + (
        f" --jobs {jobs}" if jobs > 1 else "") + (f" --ablations {ablations}" if ablations else "") + "".join(
        f" --set {shlex.quote(o)}" for o in overrides)
    page = render(config, overrides, runs, missing, abl_out, book, command=command,
                  plot_name=f"{plots.name}/{plot_path.name}",
                  notes=notes_path.read_text() if notes_path.is_file() else "")
    out.write_text(page)
    summary = {"runs": [{"run_id": r["run_id"], "metrics": r["metrics"], "summary": r["summary"]} for r in runs],
               "ablations": [{"name": a["name"], "overrides": a["overrides"],
                              "metrics": a["run"]["metrics"] if a["run"] else None} for a in abl_out],
               "missing": missing, "command": command}
    (plots / "science.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    print(page)
    print(f"wrote {out}, {plot_path} and {plots / 'science.json'}")
    return 0 if not missing else 1
