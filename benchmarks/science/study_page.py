"""The boosting study's section of docs/results.md (v3): arms, the gate's verdict, disagreement and oracle,
the per-round table. Reads the records of :mod:`benchmarks.science.study` (``docs/results/study.json``).

Statistics: every difference is paired on the same questions (the arms of a seed share its splits) and pooled
over seeds as strata (:func:`ensemw2s.stats.stratified_bootstrap`, 95 % percentile interval; McNemar exact p on
the pooled discordant pairs). Disagreement of two experts = fraction of questions on which they choose
different options; an arm's figure is the mean over its expert pairs, then over seeds.
"""
from __future__ import annotations

from itertools import combinations
from typing import Optional

import numpy as np

from ensemw2s import diagnostics
from ensemw2s.stats import mean_std

from .page import _ci, pool_over_seeds
from .study import ARMS

SPLIT_TAGS = (("easy_test", "ID"), ("hard_test", "OOD"))
EFFECT = 0.02  # the gate's smallest effect worth having: +2.0 accuracy points (issue 23 §3)
DIVERSITY = 1.2  # boosting creates diversity only if its experts disagree >= 1.2 x as often as bagged ones


# --------------------------------------------------------------------------- reading the records


def _bits(run: dict, kind: str, model: str, split: str) -> dict:
    """``{question id: value}`` of a model in a run record: ``correct`` (bool) or ``chosen`` (int)."""
    t = run["table"]
    s = (t[kind].get(model) or {}).get(split)
    if not s:
        return {}
    conv = (lambda c: c == "1") if kind == "correct" else int
    return {i: conv(c) for i, c in zip(t["ids"][split], s) if c != "-"}


def rounds_of(run: dict) -> list[int]:
    return sorted(int(m[len("expert_r"):]) for m in run["table"]["chosen"] if m.startswith("expert_r"))


def by_seed(runs: list[dict], arm: str) -> dict[int, dict]:
    return {r["seed"]: r for r in runs if r["arm"] == arm}


def accuracy(run: dict, model: str, split: str) -> Optional[float]:
    c = _bits(run, "correct", model, split)
    return float(np.mean(list(c.values()))) if c else None


def paired(runs: list[dict], a: tuple[str, str], b: tuple[str, str], split: str) -> Optional[dict]:
    """(arm, model) A − (arm, model) B, paired on the questions of each seed both have, seeds as strata; only the
    seeds where both arms finished (and have questions in common)."""
    A, B = by_seed(runs, a[0]), by_seed(runs, b[0])
    pairs = [(_bits(A[s], "correct", a[1], split), _bits(B[s], "correct", b[1], split)) for s in sorted(set(A) & set(B))]
    return pool_over_seeds([(ca, cb) for ca, cb in pairs if set(ca) & set(cb)])


def predictions(run: dict) -> list[dict]:
    """The run's expert predictions back as prediction records (``{id, model, split, method, chosen,
    correct}``) for :mod:`ensemw2s.diagnostics`, which computes disagreement and oracle for reports too."""
    out = []
    for model, splits in run["table"]["chosen"].items():
        for split in splits:
            correct = _bits(run, "correct", model, split)
            out += [{"id": i, "model": model, "split": split, "method": "loglik", "chosen": k,
                     "correct": correct[i]} for i, k in _bits(run, "chosen", model, split).items()]
    return out


def disagreement(run: dict, m1: str, m2: str, split: str) -> Optional[float]:
    return diagnostics.disagreement(predictions(run), m1, m2, split)


def mean_disagreement(run: dict, split: str) -> Optional[float]:
    names = [diagnostics.expert_name(t) for t in rounds_of(run)]
    preds = predictions(run)
    ds = [d for x, y in combinations(names, 2) if (d := diagnostics.disagreement(preds, x, y, split)) is not None]
    return float(np.mean(ds)) if ds else None


def oracle(run: dict, split: str) -> Optional[float]:
    """Fraction of the questions that at least one expert (of the boosting rounds) answers right."""
    return diagnostics.oracle_accuracy(predictions(run), [diagnostics.expert_name(t) for t in rounds_of(run)],
                                       split)


# --------------------------------------------------------------------------- the gate


def gate(ens_single: Optional[dict], ens_bag: Optional[dict], ens_single_id: Optional[dict]) -> tuple[str, str]:
    """The verdict of issue 23 §3, OOD primary: ``(name, sentence)``.

    - *effect present*: EnsemW2S − single ≥ +2.0 points with its lower bound > 0, and EnsemW2S − bagging's lower
      bound > 0;
    - *averaging only*: the first holds, the EnsemW2S − bagging interval includes 0;
    - *absent at this scale*: the upper bound of EnsemW2S − single is < +2.0 points on ID and on OOD;
    - otherwise *inconclusive* (the intervals are too wide to decide)."""
    if ens_single is None or ens_bag is None or ens_single_id is None:
        return "not decided", "Not decided: the arms it needs have not all finished (see the runs below)."
    first = ens_single["diff"] >= EFFECT and ens_single["ci_low"] > 0
    pts = lambda d: f"{100 * d['diff']:+.1f} points [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"  # noqa: E731
    if first and ens_bag["ci_low"] > 0:
        return "effect present", (f"**Effect present.** The EnsemW2S ensemble beats one expert on OOD by "
                                  f"{pts(ens_single)} and beats bagging by {pts(ens_bag)}: reweighting adds to "
                                  "averaging.")
    if first:
        return "averaging only", (f"**Averaging only.** The EnsemW2S ensemble beats one expert on OOD by "
                                  f"{pts(ens_single)}, but not bagging ({pts(ens_bag)}, the interval includes 0): "
                                  "the gain comes from averaging several experts, not from boosting's reweighting.")
    if ens_single["ci_high"] < EFFECT and ens_single_id["ci_high"] < EFFECT:
        return "absent at this scale", (
            f"**Absent at this scale.** The EnsemW2S ensemble's gain over one expert is below +2.0 points with "
            f"95 % confidence on both splits (OOD {pts(ens_single)}, ID {pts(ens_single_id)}): at this model "
            "size, data size and number of rounds the ensemble does not help.")
    return "inconclusive", (f"**Inconclusive.** EnsemW2S − one expert: OOD {pts(ens_single)}, ID "
                            f"{pts(ens_single_id)}; EnsemW2S − bagging (OOD) {pts(ens_bag)}. Neither an effect of "
                            "+2.0 points nor its absence is established at these sizes.")


# --------------------------------------------------------------------------- the section


def _pm(xs, digits: int = 3) -> str:
    m, s, k = mean_std(xs)
    if m is None:
        return "—"
    if k == 1:  # one seed: no spread to show
        return f"{m:.{digits}f}" + (f" (1 of {len(xs)} seeds)" if len(xs) > 1 else "")
    return f"{m:.{digits}f} ± {s:.{digits}f}" + (f" ({k} of {len(xs)} seeds)" if k != len(xs) else "")


def _round_values(runs: list[dict], key: str, t: int) -> list:
    """Round ``t``'s entry of the per-round list ``key`` of each run's metrics (None where absent)."""
    out = []
    for r in runs:
        values = r["metrics"].get(key) or []
        out.append(values[t - 1] if len(values) >= t else None)
    return out


def _last(run: dict) -> str:
    return f"ensemble_r{max(rounds_of(run))}" if rounds_of(run) else "ensemble"


def render_study_section(book: dict) -> list[str]:
    """Markdown lines of the v3 section from a ``study.json`` record book (empty book: one line saying so)."""
    runs = sorted(book.get("runs", {}).values(), key=lambda r: (r["seed"], list(ARMS).index(r["arm"])))
    L = ["## v3: does boosting make the experts differ? (the boosting study)", ""]
    if not runs:
        return L + ["No run of the study has finished yet (`make study`).", ""]
    main = by_seed(runs, "ensemw2s")
    m0 = next(iter(main.values()))["metrics"] if main else runs[0]["metrics"]
    T = max(rounds_of(runs[0])) if rounds_of(runs[0]) else m0.get("rounds")
    seeds = sorted({r["seed"] for r in runs})
    n_val = len(runs[0]["table"]["ids"].get("easy_val") or []) or "—"  # the questions T is chosen on
    L += [f"The experts alone, without the student stage (`student.enabled: false`), on larger test sets (ID n = "
          f"{m0.get('n_id')}, OOD n = {m0.get('n_ood')}, easy_val n = {n_val}), {T} boosting rounds with T fixed (the "
          f"ensemble of all {T} rounds, `ensemble_r{T}`). Arms, each a real pipeline run per seed: "
          + "; ".join(f"**{a}** = {label}" for a, (label, _) in ARMS.items())
          + "; and the single expert (all of easy_train, equal weights), the same in every arm of a seed. "
          f"Command: `{book.get('command', 'python -m benchmarks.science study')}`; records: "
          "docs/results/study.json (benchmarks/science/study.py).", "",
          "- Seeds finished: " + ", ".join(
              f"{s} ({', '.join(r['arm'] for r in runs if r['seed'] == s)})" for s in seeds) + "."]
    if book.get("missing"):
        L.append(f"- **Not finished: {', '.join(book['missing'])}** — the numbers below use the finished runs "
                 "only; an interval over fewer seeds is wider.")
    L.append("")

    # accuracy table
    L += ["| model | ID | OOD |", "|---|---|---|"]

    def row(label: str, arm: str, model_of) -> None:
        rs = list(by_seed(runs, arm).values())
        if not rs:
            return
        L.append(f"| {label} | {_pm([accuracy(r, model_of(r), 'easy_test') for r in rs])} | "
                 f"{_pm([accuracy(r, model_of(r), 'hard_test') for r in rs])} |")

    row("single expert (all of easy_train)", "ensemw2s", lambda r: "weak_single")
    row("round-1 expert alone", "ensemw2s", lambda r: "expert_r1")
    row(f"EnsemW2S, T = {T} fixed", "ensemw2s", _last)
    row("EnsemW2S, T chosen on easy_val", "ensemw2s", lambda r: "ensemble")
    row(f"bagging, T = {T}", "bagging", _last)
    row(f"EnsemW2S answer-level error, T = {T}", "answer", _last)
    L += ["", "Mean ± std over seeds (a value alone: one seed).", ""]

    # paired differences
    last = f"ensemble_r{T}"
    comparisons = [
        (f"EnsemW2S (T = {T}) − single expert", ("ensemw2s", last), ("ensemw2s", "weak_single")),
        (f"EnsemW2S (T = {T}) − bagging (T = {T})", ("ensemw2s", last), ("bagging", last)),
        (f"bagging (T = {T}) − single expert", ("bagging", last), ("ensemw2s", "weak_single")),
        ("EnsemW2S (T on easy_val) − single expert", ("ensemw2s", "ensemble"), ("ensemw2s", "weak_single")),
        (f"answer-level error (T = {T}) − single expert", ("answer", last), ("ensemw2s", "weak_single")),
        (f"answer-level − token error (T = {T})", ("answer", last), ("ensemw2s", last)),
    ]
    L += ["Paired differences on the same questions, seeds pooled as strata (95 % bootstrap interval; McNemar "
          "exact p):", "", "| difference | split | mean [95 % CI] | McNemar p | per seed | pairs |",
          "|---|---|---|---|---|---|"]
    res = {}
    for name, a, b in comparisons:
        for split, tag in SPLIT_TAGS:
            d = paired(runs, a, b, split)
            res[(name, tag)] = d
            L.append(f"| {name} | {tag} | {_ci(d) if d else '— | — | — | —'} |")
    verdict, sentence = gate(res[(comparisons[0][0], "OOD")], res[(comparisons[1][0], "OOD")],
                             res[(comparisons[0][0], "ID")])
    L += ["", "### The gate (OOD primary)", "",
          "Effect present: EnsemW2S − single ≥ +2.0 points with lower bound > 0, and EnsemW2S − bagging lower bound "
          "> 0. Averaging only: the first holds, the second interval includes 0. Absent at this scale: the upper "
          "bound of EnsemW2S − single < +2.0 points on ID and OOD. Each difference pools the seeds in which both "
          "of its arms finished (the *per seed* column).", "", sentence, ""]

    # mechanism: disagreement and oracle
    L += ["### Do the experts differ? Disagreement and oracle", "",
          "Mean pairwise disagreement of an arm's experts (fraction of questions on which two choose different "
          "options) and the oracle (any of its experts right: what a perfect selector could reach), mean ± std "
          "over seeds.", "",
          "| arm | disagreement ID | disagreement OOD | oracle ID | oracle OOD | ensemble OOD |", "|---|---|---|---|---|---|"]
    dis = {}
    for arm in ARMS:
        rs = list(by_seed(runs, arm).values())
        if not rs:
            continue
        dis[arm] = {tag: [mean_disagreement(r, s) for r in rs] for s, tag in SPLIT_TAGS}
        L.append(f"| {arm} | {_pm(dis[arm]['ID'])} | {_pm(dis[arm]['OOD'])} | "
                 f"{_pm([oracle(r, 'easy_test') for r in rs])} | {_pm([oracle(r, 'hard_test') for r in rs])} | "
                 f"{_pm([accuracy(r, _last(r), 'hard_test') for r in rs])} |")
    if "ensemw2s" in dis and "bagging" in dis:
        ratios = []
        for tag in ("ID", "OOD"):
            b, g = mean_std(dis["ensemw2s"][tag])[0], mean_std(dis["bagging"][tag])[0]
            ratios.append((tag, b / g if b is not None and g else None))
        shown = ", ".join(f"{tag} {r:.2f}×" if r is not None else f"{tag} —" for tag, r in ratios)
        ood = dict(ratios).get("OOD")
        L += ["", f"Boosted / bagged disagreement: {shown}. "
              + ("Boosting makes its experts differ beyond resampling alone (≥ 1.2× bagging's disagreement on OOD)."
                 if ood is not None and ood >= DIVERSITY else
                 "Boosting does **not** make its experts differ beyond what independent resamples do (< 1.2× "
                 "bagging's disagreement on OOD)." if ood is not None else "")]
    L.append("")

    # pairwise matrix of the EnsemW2S arm (OOD), mean over seeds
    for arm in ("ensemw2s", "bagging"):
        rs = list(by_seed(runs, arm).values())
        if not rs:
            continue
        rounds = rounds_of(rs[0])
        preds = [predictions(r) for r in rs]
        L += [f"Pairwise disagreement of the **{arm}** experts, OOD (mean over {len(rs)} "
              f"seed{'s' if len(rs) > 1 else ''}):", "",
              "| | " + " | ".join(f"r{t}" for t in rounds) + " |", "|---|" + "---|" * len(rounds)]
        for a in rounds:
            cells = []
            for b in rounds:
                if a == b:
                    cells.append("·")
                    continue
                vals = [diagnostics.disagreement(p, f"expert_r{a}", f"expert_r{b}", "hard_test") for p in preds]
                cells.append(_pm(vals)[:5] if mean_std(vals)[0] is not None else "—")
            L.append(f"| r{a} | " + " | ".join(cells) + " |")
        L.append("")

    # per-round table
    L += ["### By round", "",
          "Per round and arm (mean over seeds): the round's weighted token error eps, alpha, the effective sample "
          "size of D_t as a fraction of the answer tokens, the expert alone and the ensemble of rounds 1..t (OOD).",
          "", "| arm | round | eps | alpha | ESS of D_t / n | expert alone OOD | ensemble r1..t OOD |",
          "|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        rs = list(by_seed(runs, arm).values())
        if not rs:
            continue
        for t in sorted(set().union(*map(rounds_of, rs))):  # a round skipped (alpha <= 0) in one seed still counts
            L.append(f"| {arm} | {t} | {_pm(_round_values(rs, 'eps', t))} | "
                     f"{_pm(_round_values(rs, 'alphas', t), 2)} | {_pm(_round_values(rs, 'weights_ess', t))} | "
                     f"{_pm([accuracy(r, f'expert_r{t}', 'hard_test') for r in rs])} | "
                     f"{_pm([accuracy(r, f'ensemble_r{t}', 'hard_test') for r in rs])} |")
    L += ["", "### The student", "",
          ("The expert gate passed; the student stage (with deliberately corrupted labels for its label "
           "sensitivity) is the next measurement and **has not been run**." if verdict == "effect present" else
           f"Not measured: the expert gate's verdict is *{verdict}*; a student trained on the labels of an "
           "ensemble not shown to beat one expert cannot show the method's effect (issue 23 §3)."), ""]
    seconds = [sum(v for v in r["work_seconds"].values() if v) for r in runs]
    L += [f"Steps' work per run: {_pm(seconds, 0)} s over {len(runs)} runs (2 CPU cores, no GPU); run ids: "
          + ", ".join(f"`{r['run_id']}`" for r in runs) + ".", ""]
    return L
