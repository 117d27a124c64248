"""The plots of the project: ensemble accuracy by round (one run: the report step; over seeds: the results
page), the expert diagnostics of a run (:mod:`ensemw2s.diagnostics`: the experts' disagreement heat-map, each
expert alone and the ensemble by round; the report step and the run page), and for the run pages
(:mod:`ensemw2s.site`) pseudo-label accuracy, per-step times and runs side by side. A single run's accuracies
carry their 95 % Wilson interval (:func:`ensemw2s.stats.wilson_interval`, as in the tables); over seeds, the
mean ± std. matplotlib is imported when a plot is drawn, with the Agg backend (no display needed). Every
function writes a PNG to ``path``: a file path or a binary file object (:func:`png_bytes` draws into memory).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Callable, Sequence, Union

from ensemw2s.stats import mean_std, wilson_interval

Target = Union[Path, str, BinaryIO]

PANELS = (("id", "ID (easy_test)"), ("ood", "OOD (hard_test)"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Target) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)


def wilson_errors(accs: Sequence[float], n) -> list[list[float]]:
    """``yerr`` for matplotlib (``[below, above]`` per point) of the 95 % Wilson intervals of ``accs`` measured
    on ``n`` questions each; no bar (0, 0) when ``n`` is unknown."""
    below, above = [], []
    for a in accs:
        lo, hi = wilson_interval(a, int(n)) if n else (a, a)
        below.append(a - lo)
        above.append(hi - a)
    return [below, above]


def png_bytes(plot: Callable[..., None], *args, **kwargs) -> bytes:
    """The PNG that ``plot(*args, path, **kwargs)`` draws, in memory (for pages with embedded images)."""
    buf = io.BytesIO()
    plot(*args, buf, **kwargs)
    return buf.getvalue()


def plot_by_round(runs: Sequence[dict], path: Target, *, title: str = "EnsemW2S ensemble accuracy by round") -> None:
    """Write ``path`` (PNG): per split (ID, OOD), the accuracy of the ensemble of rounds 1..t against t, and the
    single-expert baseline (``weak_single``, labelled by :func:`single_label`) as a dashed line.

    ``runs``: the ``metrics.json`` of one or more runs (``ensemble_acc_<id|ood>_by_round``,
    ``weak_single_acc_<id|ood>_ll``, ``n_<id|ood>``). Several runs (seeds): mean ± sample std over the runs.
    One run: its accuracies with their 95 % Wilson intervals (n from ``n_<id|ood>``).
    """
    runs = list(runs)
    if not runs:
        raise ValueError("plot_by_round: no run to plot")
    plt = _pyplot()
    one = len(runs) == 1

    def spread(means: list, stds: list, tag: str) -> list:
        return wilson_errors(means, runs[0].get(f"n_{tag}")) if one else [stds, stds]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120, sharey=False)
    T = 1
    for ax, (tag, name) in zip(axes, PANELS):
        by = [r.get(f"ensemble_acc_{tag}_by_round") or [] for r in runs]
        T = max([len(b) for b in by] + [1])
        xs, ms, ss = [], [], []
        for t in range(T):
            m, s, _ = mean_std([b[t] if t < len(b) else None for b in by])
            if m is not None:
                xs.append(t + 1)
                ms.append(m)
                ss.append(s)
        ax.errorbar(xs, ms, yerr=spread(ms, ss, tag), marker="o", capsize=3, color="tab:blue",
                    label="ensemble of rounds 1..t")
        sm, sd, _ = mean_std([r.get(f"weak_single_acc_{tag}_ll") for r in runs])
        if sm is not None:
            (below,), (above,) = spread([sm], [sd], tag)
            ax.axhline(sm, color="tab:red", linestyle="--", linewidth=1, label=single_label(runs))
            ax.axhspan(sm - below, sm + above, color="tab:red", alpha=0.12)
        ax.set_xticks(range(1, T + 1))
        ax.set_xlabel("rounds in the ensemble (t)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (option log-likelihood)")
    axes[0].legend(fontsize=7, loc="lower right")
    how = "95 % Wilson intervals" if one else f"mean ± std over {len(runs)} seeds"
    fig.suptitle(f"{title}: {how}", fontsize=10)
    _save(fig, path)


def _not_recorded(fig, axes) -> None:
    from ensemw2s.diagnostics import NOT_RECORDED

    for ax in axes:
        ax.axis("off")
    fig.text(0.5, 0.5, "Expert diagnostics: " + NOT_RECORDED[0].lower() + NOT_RECORDED[1:], ha="center",
             va="center", fontsize=9, color="tab:gray", wrap=True)


def plot_disagreement(metrics: dict, path: Target) -> None:
    """Heat-map of the experts' pairwise disagreement (:func:`ensemw2s.diagnostics.disagreement_matrix`: the
    fraction of questions on which two experts choose different options), rounds × rounds, one panel per split
    (ID, OOD), each cell annotated. One colour scale for both panels, from 0 to at least 0.25 (so near-clone
    experts, a few % apart, look pale). A run without diagnostics gets a picture that says so."""
    import numpy as np

    from ensemw2s.diagnostics import disagreement_matrix

    plt = _pyplot()
    rounds = metrics.get("diag_rounds") or []
    k = len(rounds)
    fig, axes = plt.subplots(1, 2, figsize=(max(6.4, 1.1 * k + 4.2), max(2.9, 0.45 * k + 1.9)), dpi=120)
    if not rounds:
        _not_recorded(fig, axes)
        _save(fig, path)
        return
    mats = {tag: disagreement_matrix(metrics, tag) for tag, _ in PANELS}
    values = [v for m in mats.values() for row in m for v in row if v is not None]
    vmax = max([0.25, *values])
    cmap = plt.get_cmap("Reds").with_extremes(bad="#eeeeee")  # the diagonal and unrecorded pairs
    im = None
    for ax, (tag, name) in zip(axes, PANELS):
        grid = np.array([[np.nan if v is None else v for v in row] for row in mats[tag]], dtype=float)
        im = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=vmax)
        for i in range(k):
            for j in range(k):
                v = mats[tag][i][j]
                text = "·" if i == j else ("—" if v is None else f"{v:.3f}")
                dark = v is not None and v > 0.6 * vmax
                ax.text(j, i, text, ha="center", va="center", fontsize=8 if k <= 6 else 6,
                        color="white" if dark else "black")
        labels = [f"r{t}" for t in rounds]
        ax.set_xticks(range(k))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_yticks(range(k))
        ax.set_yticklabels(labels, fontsize=8)
        mean = metrics.get(f"mean_disagreement_{tag}")
        ax.set_title(name + ("" if mean is None else f", mean {mean:.3f}"), fontsize=9)
        ax.set_xlabel("expert of round")
    axes[0].set_ylabel("expert of round")
    fig.colorbar(im, ax=list(axes), shrink=0.85, label="disagreement")
    fig.suptitle("Pairwise disagreement of the experts (share of questions where their options differ)",
                 fontsize=10)
    fig.savefig(path, format="png")  # colorbar over both panels: no tight_layout
    plt.close(fig)


def plot_expert_accuracy(metrics: dict, path: Target) -> None:
    """Accuracy by round of one run, per split (ID, OOD): each boosting expert alone (``expert_r<t>_acc_*``) and
    the ensemble of rounds 1..t (``ensemble_r<t>_acc_*``), with 95 % Wilson intervals (n from ``n_<id|ood>``),
    the single expert (``weak_single``) as a dashed reference line with its interval as a band and the oracle
    (any expert right) as a dotted line. Primary-method accuracies, as in the diagnostics table. A run without
    expert-alone predictions shows the ensemble and the single expert, and says the experts were not recorded."""
    from ensemw2s.diagnostics import expert_name

    plt = _pyplot()
    rounds = metrics.get("diag_rounds") or list(range(1, int(metrics.get("rounds") or 0) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    for ax, (tag, name) in zip(axes, PANELS):
        n = metrics.get(f"n_{tag}")
        for key, label, color, marker, dx in (
                (expert_name, "each expert alone", "tab:orange", "s", -0.08),
                (lambda t: f"ensemble_r{t}", "ensemble of rounds 1..t", "tab:blue", "o", 0.08)):
            pts = [(t, metrics.get(f"{key(t)}_acc_{tag}")) for t in rounds]
            pts = [(t, v) for t, v in pts if v is not None]
            if pts:
                ys = [v for _, v in pts]
                ax.errorbar([t + dx for t, _ in pts], ys, yerr=wilson_errors(ys, n), marker=marker, capsize=3,
                            color=color, label=label, linestyle="-" if marker == "o" else "none")
        single = metrics.get(f"weak_single_acc_{tag}")
        if single is not None:
            (below,), (above,) = wilson_errors([single], n)
            ax.axhline(single, color="tab:red", linestyle="--", linewidth=1, label=single_label([metrics]))
            ax.axhspan(single - below, single + above, color="tab:red", alpha=0.12)
        oracle = metrics.get(f"oracle_acc_{tag}")
        if oracle is not None:
            ax.axhline(oracle, color="tab:green", linestyle=":", linewidth=1.2, label="oracle (any expert right)")
        if not metrics.get("diag_rounds"):
            ax.text(0.5, 0.04, "each expert alone: not recorded for this run", transform=ax.transAxes,
                    ha="center", fontsize=7, color="tab:gray")
        ax.set_xticks(list(rounds) or [1])
        ax.set_xlabel("round t")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy ({metrics.get('primary') or 'loglik'})")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=6, loc="best")
    fig.suptitle("Each expert alone and the ensemble of rounds 1..t: 95 % Wilson intervals", fontsize=10)
    _save(fig, path)


LABEL_SOURCES = (("ensemble", "ensemble (EnsemW2S)"), ("single", "single expert"), ("gold", "gold"))
# what weak_single is, by ensemble.single (metrics' single_definition; runs stored before it say "baseline")
SINGLE_LABELS = {"full": "single expert (all easy data)", "round1": "single expert (the round-1 expert)",
                 None: "single expert (baseline)"}


def single_label(runs: list[dict]) -> str:
    """The legend of the single-expert line: what ``weak_single`` was in these runs."""
    kinds = {r.get("single_definition") for r in runs}
    return SINGLE_LABELS.get(kinds.pop(), SINGLE_LABELS[None]) if len(kinds) == 1 else SINGLE_LABELS[None]


def plot_label_accuracy(metrics: dict, path: Target) -> None:
    """Accuracy of each student's training labels against the gold answers on hard_pool
    (``student_<source>_labels_accuracy_vs_gold``), one bar per label source."""
    plt = _pyplot()
    names, values = [], []
    for source, name in LABEL_SOURCES:
        v = metrics.get(f"student_{source}_labels_accuracy_vs_gold")
        if v is not None:
            names.append(name)
            values.append(float(v))
    fig, ax = plt.subplots(figsize=(5.5, 2.6), dpi=120)
    colors = ["tab:blue", "tab:red", "tab:green"][: len(values)]
    bars = ax.barh(names, values, color=colors)
    for b, v in zip(bars, values):
        ax.text(min(v + 0.01, 0.9), b.get_y() + b.get_height() / 2, f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.05)
    ax.invert_yaxis()
    ax.set_xlabel("pseudo-label accuracy vs gold (hard_pool)")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_step_times(times: Sequence[tuple], path: Target) -> None:
    """``times``: ``(step key, seconds, restored)`` in run order; one horizontal bar per step (the seconds of
    the execution that computed it; hatched when this run restored it from storage)."""
    plt = _pyplot()
    times = [t for t in times if t[1] is not None]
    fig, ax = plt.subplots(figsize=(7, 0.28 * max(4, len(times)) + 0.9), dpi=120)
    ys = range(len(times))
    bars = ax.barh(list(ys), [t[1] for t in times], color=["tab:gray" if t[2] else "tab:blue" for t in times])
    for b, t in zip(bars, times):
        if t[2]:
            b.set_hatch("//")
    ax.set_yticks(list(ys))
    ax.set_yticklabels([t[0] for t in times], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds of work (grey, hatched: restored from storage, time of the run that computed it)")
    ax.xaxis.label.set_size(8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


COMPARE_MODELS = (("weak_single", "weak single", "tab:red"), ("ensemble", "ensemble", "tab:blue"),
                  ("student_ensemble", "student ← ensemble", "tab:purple"),
                  ("student_single", "student ← single", "tab:orange"), ("ceiling", "ceiling (gold)", "tab:green"))


def plot_runs(named: Sequence[tuple], path: Target, *, split: str = "ood") -> None:
    """Runs side by side: ``named`` = ``(label, metrics)``; per run one bar per model (accuracy on ``split``,
    ``id`` or ``ood``) with its 95 % Wilson interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(named) + 2.5), 3.4), dpi=120)
    width = 0.8 / len(COMPARE_MODELS)
    for j, (model, name, color) in enumerate(COMPARE_MODELS):
        xs, ys, below, above = [], [], [], []
        for i, (_, m) in enumerate(named):
            v, n = m.get(f"{model}_acc_{split}"), m.get(f"n_{split}")
            if v is None:
                continue
            xs.append(i + (j - (len(COMPARE_MODELS) - 1) / 2) * width)
            ys.append(v)
            (lo,), (hi,) = wilson_errors([v], n)
            below.append(lo)
            above.append(hi)
        if xs:
            ax.bar(xs, ys, width, yerr=[below, above], capsize=2, color=color, label=name)
    ax.set_xticks(range(len(named)))
    ax.set_xticklabels([label for label, _ in named], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel(f"accuracy ({split.upper()}), 95 % Wilson interval")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=6, ncols=len(COMPARE_MODELS), loc="upper center", bbox_to_anchor=(0.5, 1.13), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_by_round_runs(named: Sequence[tuple], path: Target) -> None:
    """Ensemble accuracy by round of several runs, one line each (``named`` = ``(label, metrics)``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    for ax, (tag, name) in zip(axes, PANELS):
        T = 1
        for label, m in named:
            by = [v for v in (m.get(f"ensemble_acc_{tag}_by_round") or [])]
            if not any(v is not None for v in by):
                continue
            T = max(T, len(by))
            xs = [t + 1 for t, v in enumerate(by) if v is not None]
            ax.plot(xs, [v for v in by if v is not None], marker="o", label=label)
        ax.set_xticks(range(1, T + 1))
        ax.set_xlabel("rounds in the ensemble (t)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ensemble accuracy (option log-likelihood)")
    axes[0].legend(fontsize=6)
    _save(fig, path)


def caption(n_runs: int) -> str:
    """What the error bars of :func:`plot_by_round` show, for the text beside the plot."""
    if n_runs == 1:
        return ("Ensemble accuracy of rounds 1..t with 95 % Wilson intervals, with the single-expert baseline "
                "(weak_single) as the dashed line (band: its 95 % Wilson interval).")
    return ("Ensemble accuracy of rounds 1..t (mean ± std over seeds), with the single-expert baseline as the dashed line "
            "(band: ± std).")
