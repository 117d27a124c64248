"""The plot by round: ensemble accuracy of rounds 1..t, for one run (the report step) or over seeds (the
results page). matplotlib is imported when a plot is drawn, with the Agg backend (no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ensemw2s.stats import mean_std, se

PANELS = (("id", "ID (easy_test)"), ("ood", "OOD (hard_test)"))


def plot_by_round(runs: Sequence[dict], path: Path, *, title: str = "EnsemW2S ensemble accuracy by round") -> None:
    """Write ``path`` (PNG): per split (ID, OOD), the accuracy of the ensemble of rounds 1..t against t, and the
    round-1 single expert as a dashed line.

    ``runs``: the ``metrics.json`` of one or more runs (``ensemble_acc_<id|ood>_by_round``,
    ``weak_single_acc_<id|ood>_ll``, ``n_<id|ood>``). Several runs (seeds): mean ± sample std over the runs.
    One run: its accuracies with 95 % intervals (± 1.96 binomial standard errors, n from ``n_<id|ood>``).
    """
    runs = list(runs)
    if not runs:
        raise ValueError("plot_by_round: no run to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
            ax.axhline(sm, color="tab:red", linestyle="--", linewidth=1, label="single expert (round 1)")
            ax.axhspan(sm - band, sm + band, color="tab:red", alpha=0.12)
        ax.set_xticks(range(1, T + 1))
        ax.set_xlabel("rounds in the ensemble (t)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (option log-likelihood)")
    axes[0].legend(fontsize=7, loc="lower right")
    how = "95 % intervals (binomial)" if one else f"mean ± std over {len(runs)} seeds"
    fig.suptitle(f"{title}: {how}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def caption(n_runs: int) -> str:
    """What the error bars of :func:`plot_by_round` show, for the text beside the plot."""
    if n_runs == 1:
        return ("Ensemble accuracy of rounds 1..t with 95 % intervals (± 1.96 binomial standard errors), with the "
                "round-1 expert as the dashed line (band: its 95 % interval).")
    return ("Ensemble accuracy of rounds 1..t (mean ± std over seeds), with the round-1 expert as the dashed line "
            "(band: ± std).")
