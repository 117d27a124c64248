"""The plots of the project: ensemble accuracy by round (one run: the report step; over seeds: the results
page), and for the run pages (:mod:`ensemw2s.site`) pseudo-label accuracy, per-step times and runs side by side.
matplotlib is imported when a plot is drawn, with the Agg backend (no display needed). Every function writes a
PNG to ``path``: a file path or a binary file object (:func:`png_bytes` draws into memory).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Callable, Sequence, Union

from ensemw2s.stats import mean_std, se

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
    One run: its accuracies with 95 % intervals (± 1.96 binomial standard errors, n from ``n_<id|ood>``).
    """
    runs = list(runs)
    if not runs:
        raise ValueError("plot_by_round: no run to plot")
    plt = _pyplot()
    one = len(runs) == 1

    def spread(mean: float, std: float, tag: str) -> float:
        if not one:
            return std
        n = runs[0].get(f"n_{tag}")
        return 1.96 * se(mean, n) if n else 0.0

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120, sharey=False)
    T = 1
    for ax, (tag, name) in zip(axes, PANELS):
        by = [r.get(f"ensemble_acc_{tag}_by_round") or [] for r in runs]
        T = max([len(b) for b in by] + [1])
        xs, ms, es = [], [], []
        for t in range(T):
            m, s, _ = mean_std([b[t] if t < len(b) else None for b in by])
            if m is not None:
                xs.append(t + 1)
                ms.append(m)
                es.append(spread(m, s, tag))
        ax.errorbar(xs, ms, yerr=es, marker="o", capsize=3, color="tab:blue", label="ensemble of rounds 1..t")
        sm, sd, _ = mean_std([r.get(f"weak_single_acc_{tag}_ll") for r in runs])
        if sm is not None:
            band = spread(sm, sd, tag)
            ax.axhline(sm, color="tab:red", linestyle="--", linewidth=1, label=single_label(runs))
            ax.axhspan(sm - band, sm + band, color="tab:red", alpha=0.12)
        ax.set_xticks(range(1, T + 1))
        ax.set_xlabel("rounds in the ensemble (t)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (option log-likelihood)")
    axes[0].legend(fontsize=7, loc="lower right")
    how = "95 % intervals (binomial)" if one else f"mean ± std over {len(runs)} seeds"
    fig.suptitle(f"{title}: {how}", fontsize=10)
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
    ``id`` or ``ood``) with its 95 % interval (± 1.96 binomial standard errors)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(named) + 2.5), 3.4), dpi=120)
    width = 0.8 / len(COMPARE_MODELS)
    for j, (model, name, color) in enumerate(COMPARE_MODELS):
        xs, ys, es = [], [], []
        for i, (_, m) in enumerate(named):
            v, n = m.get(f"{model}_acc_{split}"), m.get(f"n_{split}")
            if v is None:
                continue
            xs.append(i + (j - (len(COMPARE_MODELS) - 1) / 2) * width)
            ys.append(v)
            es.append(1.96 * se(v, n) if n else 0.0)
        if xs:
            ax.bar(xs, ys, width, yerr=es, capsize=2, color=color, label=name)
    ax.set_xticks(range(len(named)))
    ax.set_xticklabels([label for label, _ in named], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel(f"accuracy ({split.upper()}), 95 % interval")
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
        return ("Ensemble accuracy of rounds 1..t with 95 % intervals (± 1.96 binomial standard errors), with the "
                "single-expert baseline (weak_single) as the dashed line (band: its 95 % interval).")
    return ("Ensemble accuracy of rounds 1..t (mean ± std over seeds), with the single-expert baseline as the dashed line "
            "(band: ± std).")
