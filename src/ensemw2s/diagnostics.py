"""Why an ensemble helps or does not: how much its experts differ, and how boosting reweighted them.

An average of experts can only change an answer where the experts disagree, so the first numbers to look at
are (from the per-question predictions of each expert alone, ``expert_r{t}``, which the evaluate step stores):

- the **disagreement** of each pair of experts: the fraction of questions on which they choose different
  options (over the questions both answered);
- the **oracle** accuracy: the fraction of questions that at least one expert answers right (what a perfect
  selector could reach; the ensemble cannot exceed it);
- each expert alone next to the ensemble of rounds 1..t.

Per boosting round, next to eps_t and alpha_t: the **effective sample size** of the token weights D_t
(``1 / sum D^2`` as a fraction of the n answer tokens: 1 = uniform, small = a few tokens carry the weight) and,
in ``resample`` mode, the fraction of answer tokens drawn at least once (the rest are masked out of the loss).

Pure functions on plain records; :func:`diagnostics_metrics` gives the flat keys of ``metrics.json``;
:func:`round_rows`, :func:`disagreement_matrix` and :func:`best_expert` read them back for every surface (the
report's Markdown section, :func:`render_diagnostics`; the run page, :func:`ensemw2s.site.diagnostics_section`;
``runs show``, :func:`ensemw2s.runs.format_diagnostics`; the plots of :data:`DIAG_PLOTS`). Imports numpy only.
"""
from __future__ import annotations

import re
from itertools import combinations
from typing import Optional, Sequence

import numpy as np

EXPERT_PREFIX = "expert_r"
_EXPERT_RE = re.compile(r"^expert_r(\d+)$")
SPLIT_TAGS = {"easy_test": "id", "hard_test": "ood"}


def expert_name(round_: int) -> str:
    """The model name of boosting round ``round_``'s expert alone in the predictions."""
    return f"{EXPERT_PREFIX}{round_}"


def expert_rounds(preds: Sequence[dict]) -> list[int]:
    """The rounds whose expert-alone predictions are present, in order."""
    return sorted({int(m.group(1)) for p in preds if (m := _EXPERT_RE.match(p["model"]))})


def weight_stats(weights, loss_weights=None) -> dict:
    """``{weights_ess, drawn_fraction}`` of a round: the effective sample size of the token distribution
    ``weights`` (any non-negative scale) as a fraction of its length, and the fraction of tokens with a
    non-zero loss weight (``loss_weights``; None = every token trains, 1.0)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"token weights must be a non-empty vector of finite non-negative numbers, got shape "
                         f"{w.shape}")
    d = w / w.sum()
    drawn = 1.0 if loss_weights is None else float(np.mean(np.asarray(loss_weights, dtype=np.float64) > 0))
    return {"weights_ess": float(1.0 / np.sum(d * d) / d.size), "drawn_fraction": drawn}


def _choices(preds: Sequence[dict], model: str, split: str, method: str) -> dict:
    return {p["id"]: p for p in preds if p["model"] == model and p["split"] == split and p["method"] == method}


def disagreement(preds: Sequence[dict], model_a: str, model_b: str, split: str,
                 method: str = "loglik") -> Optional[float]:
    """Fraction of the questions both models answered on which their chosen options differ (None: none)."""
    a, b = _choices(preds, model_a, split, method), _choices(preds, model_b, split, method)
    ids = sorted(set(a) & set(b))
    if not ids:
        return None
    return float(np.mean([a[i]["chosen"] != b[i]["chosen"] for i in ids]))


def oracle_accuracy(preds: Sequence[dict], models: Sequence[str], split: str,
                    method: str = "loglik") -> Optional[float]:
    """Fraction of the questions every model answered that at least one of ``models`` gets right."""
    by_model = [_choices(preds, m, split, method) for m in models]
    if not by_model:
        return None
    ids = sorted(set.intersection(*(set(c) for c in by_model)))
    if not ids:
        return None
    return float(np.mean([any(c[i]["correct"] for c in by_model) for i in ids]))


def diagnostics_metrics(preds: Sequence[dict], *, method: str = "loglik") -> dict:
    """Flat keys: ``diag_rounds`` (the rounds with expert-alone predictions), ``disagree_r{a}_r{b}_{id|ood}``,
    ``mean_disagreement_{id|ood}`` (over the pairs), ``oracle_acc_{id|ood}``. Empty when fewer than one expert's
    predictions are stored (a run made before they were)."""
    rounds = expert_rounds(preds)
    if not rounds:
        return {}
    m: dict = {"diag_rounds": rounds}
    names = [expert_name(t) for t in rounds]
    for split, tag in SPLIT_TAGS.items():
        pairs = []
        for (ta, a), (tb, b) in combinations(zip(rounds, names), 2):
            d = disagreement(preds, a, b, split, method)
            m[f"disagree_r{ta}_r{tb}_{tag}"] = d
            if d is not None:
                pairs.append(d)
        m[f"mean_disagreement_{tag}"] = float(np.mean(pairs)) if pairs else None
        m[f"oracle_acc_{tag}"] = oracle_accuracy(preds, names, split, method)
    return m


DIAG_HEADING = "## Expert diagnostics"
NOT_RECORDED = "Not recorded for this run (made before the evaluate step stored each expert alone)."
DIAG_INTRO = ("An average of experts can only change answers on which they disagree; the oracle (any expert "
              "right) bounds what combining them can reach.")
# the report step writes these next to report.md (ensemw2s.plots.plot_disagreement, plot_expert_accuracy)
DIAG_PLOTS = (("expert_disagreement.png", "disagreement of the experts"),
              ("expert_accuracy_by_round.png", "accuracy by round, each expert alone and the ensemble"))
# the per-round table of :func:`round_rows` (the report, the run page, ``runs show``)
ROUND_COLUMNS = ("round", "eps", "eps prior", "alpha", "ESS of D_t / n", "tokens drawn", "expert alone ID",
                 "expert alone OOD", "ensemble r1..t ID", "ensemble r1..t OOD")
_ROUND_KEYS = ("eps", "eps_prior", "alphas", "weights_ess", "drawn_fraction")


def has_diagnostics(metrics: Optional[dict]) -> bool:
    """Whether the run recorded each expert alone (runs made before that have no ``diag_rounds``)."""
    return bool((metrics or {}).get("diag_rounds"))


def _at(values, i: int):
    return values[i] if values is not None and i < len(values) else None


def round_rows(metrics: dict) -> list[list]:
    """One row per round with its expert alone (:data:`ROUND_COLUMNS`): ``[t, eps, eps_prior, alpha, ESS, drawn,
    expert alone ID, OOD, ensemble r1..t ID, OOD]``, numbers or None; round t sits at index t - 1 of the
    per-round lists of ``metrics``."""
    rows = []
    for t in metrics.get("diag_rounds") or []:
        row = [t] + [_at(metrics.get(k), t - 1) for k in _ROUND_KEYS]
        row += [metrics.get(f"{expert_name(t)}_acc_{tag}") for tag in ("id", "ood")]
        row += [metrics.get(f"ensemble_r{t}_acc_{tag}") for tag in ("id", "ood")]
        rows.append(row)
    return rows


def disagreement_matrix(metrics: dict, tag: str) -> list[list[Optional[float]]]:
    """Rounds × rounds (the order of ``diag_rounds``) pairwise disagreement on ``tag`` (``id`` | ``ood``),
    symmetric; None on the diagonal and for a pair not recorded."""
    rounds = metrics.get("diag_rounds") or []
    return [[None if a == b else metrics.get(f"disagree_r{min(a, b)}_r{max(a, b)}_{tag}") for b in rounds]
            for a in rounds]


def best_expert(metrics: dict, tag: str) -> tuple[Optional[int], Optional[float]]:
    """``(round, accuracy)`` of the most accurate expert alone on ``tag`` (picked on that test split, so an
    optimistic reference); ``(None, None)`` without any."""
    accs = [(metrics.get(f"{expert_name(t)}_acc_{tag}"), t) for t in metrics.get("diag_rounds") or []]
    accs = [(a, t) for a, t in accs if a is not None]
    if not accs:
        return None, None
    acc, t = max(accs, key=lambda x: (x[0], -x[1]))  # the earliest of equally accurate experts
    return t, acc


def _f(x, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def render_diagnostics(metrics: dict, plots: Sequence[tuple[str, str]] = DIAG_PLOTS) -> list[str]:
    """The report's "Expert diagnostics" section as Markdown lines, with links to ``plots`` (``(file, alt)``
    next to report.md; ``()`` for none); one line saying they were not recorded for a run that has none."""
    rounds = metrics.get("diag_rounds")
    lines = [DIAG_HEADING, ""]
    if not rounds:
        return lines + [NOT_RECORDED, ""]
    lines += [DIAG_INTRO, "",
              "| round | eps | eps prior | alpha | ESS of D_t / n | tokens drawn | expert alone ID | OOD | "
              "ensemble r1..t ID | OOD |", "|" + "---|" * len(ROUND_COLUMNS)]
    for row in round_rows(metrics):
        lines.append("| " + " | ".join([str(row[0])] + [_f(x) for x in row[1:]]) + " |")
    lines.append("")
    for tag in ("id", "ood"):
        lines.append(f"Oracle accuracy (any expert right), {tag.upper()}: {_f(metrics.get(f'oracle_acc_{tag}'))}; "
                     f"mean pairwise disagreement: {_f(metrics.get(f'mean_disagreement_{tag}'))}")
    if len(rounds) > 1:
        lines += ["", "Pairwise disagreement (fraction of questions on which two experts choose different "
                  "options), OOD above the diagonal, ID below:", "",
                  "| | " + " | ".join(f"r{t}" for t in rounds) + " |", "|---|" + "---|" * len(rounds)]
        mid, mood = disagreement_matrix(metrics, "id"), disagreement_matrix(metrics, "ood")
        for i, a in enumerate(rounds):
            cells = ["·" if i == j else _f((mood if i < j else mid)[i][j]) for j in range(len(rounds))]
            lines.append(f"| r{a} | " + " | ".join(cells) + " |")
    if plots:
        lines += [""] + [f"![{alt}]({name})" for name, alt in plots]
    return lines + [""]
