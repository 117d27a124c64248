"""compare: one table over every grid point and seed of an ablation (the nightly grid).

The ablation config (``base:``, ``grid:``, ``seeds:``, ...) and its expansion into grid points and child runs
are in :mod:`ensemw2s.ablation`. Each (point, seed) is one run of the main pipeline under run id
``<base>-<point>-s<seed>``; its report is at ``runs/<run id>/report/report/``.

This step reads those reports and writes ``runs/<base>/compare/compare/``: ``compare.md`` (mean ± std over
seeds per grid point, :func:`ensemw2s.stats.mean_std`), ``compare.csv`` (the same numbers), ``runs.csv`` (one
row per run), ``compare.png`` and ``compare.json``.
"""
from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Optional

from ensemw2s.ablation import ablation_from_dict, child_runs, load_ablation
from ensemw2s.config import StorageConfig, config_hash
from ensemw2s.errors import ConfigError
from ensemw2s.evaluation import NO_GAP, PGR_GAPS, guarded
from ensemw2s.stats import mean_std
from ensemw2s.steps.stepio import StepIO, base_parser, read_json, run_main, write_json

STEP = "compare"
METRICS = ("weak_single_acc_id", "weak_single_acc_ood", "ensemble_acc_id", "ensemble_acc_ood",
           "student_single_acc_ood", "student_ensemble_acc_ood", "ceiling_acc_ood", "pgr_single", "pgr_ens")


# --------------------------------------------------------------------------- the table


def build_table(runs: list[dict], metrics_by_run: dict[str, Optional[dict]],
                grid_keys: list[str]) -> list[dict]:
    """One row per grid point: the grid values, seeds found / planned, and mean/std of every metric.

    A PGR is averaged over the seeds where it is shown (:func:`ensemw2s.evaluation.guarded`: the paired
    ceiling − weak gap is above 0 with its interval); ``<pgr>_no_gap`` counts the seeds where that gap was
    noise, whose PGR (a ratio of two noisy differences) would otherwise dominate the mean."""
    rows: list[dict] = []
    for point in dict.fromkeys(r["point"] for r in runs):
        mine = [r for r in runs if r["point"] == point]
        found = [metrics_by_run[r["run_id"]] for r in mine if metrics_by_run.get(r["run_id"]) is not None]
        row: dict = {"point": point, **{k: mine[0]["values"].get(k) for k in grid_keys},
                     "seeds": len(found), "seeds_planned": len(mine),
                     "missing": [r["run_id"] for r in mine if metrics_by_run.get(r["run_id"]) is None]}
        for m in METRICS:
            values = [guarded(f, m) for f in found]
            row[f"{m}_mean"], row[f"{m}_std"], _ = mean_std(values)
            if m in PGR_GAPS:
                row[f"{m}_n"] = sum(v not in (None, NO_GAP) for v in values)
                row[f"{m}_no_gap"] = values.count(NO_GAP)
        rows.append(row)
    return rows


def _fmt(mean: Optional[float], std: Optional[float]) -> str:
    return "—" if mean is None else f"{mean:.3f} ± {std:.3f}"


def _cell(row: dict, m: str) -> str:
    """A metric's mean ± std; a PGR also says over how many seeds, and how many had no gap to recover."""
    text = _fmt(row[f"{m}_mean"], row[f"{m}_std"])
    if m not in PGR_GAPS or not (row[f"{m}_no_gap"] or row[f"{m}_n"] != row["seeds"]):
        return text
    notes = [f"{row[f'{m}_n']} of {row['seeds']}"] if row[f"{m}_n"] else []
    notes += [f"{row[f'{m}_no_gap']} {NO_GAP}"] if row[f"{m}_no_gap"] else []
    return f"{text} ({'; '.join(notes)})"


def render_markdown(rows: list[dict], grid_keys: list[str], base_run_id: str) -> str:
    head = ["point", *grid_keys, "seeds", *METRICS]
    lines = [f"# EnsemW2S ablation {base_run_id}", "",
             "Mean ± sample std over seeds; accuracies by the primary method (see each run's report); "
             "PGR = (student − weak) / (ceiling − weak), averaged over the seeds where the paired ceiling − weak "
             f"gap is above 0 with its 95 % interval (\"{NO_GAP}\": seeds where it is not).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["point"], *[str(r[k]) for k in grid_keys], f"{r['seeds']}/{r['seeds_planned']}",
                 *[_cell(r, m) for m in METRICS]]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [rid for r in rows for rid in r["missing"]]
    if missing:
        lines += ["", f"Missing reports ({len(missing)}): " + ", ".join(missing)]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v))
                        for k, v in r.items()})


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("ensemble_acc_ood", "student_ensemble_acc_ood", "student_single_acc_ood", "ceiling_acc_ood")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 3.6), dpi=120)
    width = 0.8 / len(shown)
    for j, m in enumerate(shown):
        xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(rows))]
        ys = [r[f"{m}_mean"] if r[f"{m}_mean"] is not None else float("nan") for r in rows]
        es = [r[f"{m}_std"] or 0.0 for r in rows]
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=m)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["point"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("accuracy (OOD), mean ± std over seeds")
    ax.set_title("EnsemW2S ablation")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(out_dir: Path, runs: list[dict], metrics_by_run: dict, grid_keys: list[str],
                  base_run_id: str) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = build_table(runs, metrics_by_run, grid_keys)
    md = render_markdown(rows, grid_keys, base_run_id)
    (out_dir / "compare.md").write_text(md)
    stat_cols = [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    stat_cols += [f"{m}_{s}" for m in PGR_GAPS for s in ("n", "no_gap")]
    write_csv(out_dir / "compare.csv", rows, ["point", *grid_keys, "seeds", "seeds_planned", *stat_cols])
    per_run = [{"point": r["point"], "seed": r["seed"], "run_id": r["run_id"],
                **{k: r["values"].get(k) for k in grid_keys},
                **{m: guarded(metrics_by_run.get(r["run_id"]) or {}, m) for m in METRICS}} for r in runs]
    write_csv(out_dir / "runs.csv", per_run, ["point", "seed", "run_id", *grid_keys, *METRICS])
    plot(rows, out_dir / "compare.png")
    summary = {"base_run_id": base_run_id, "grid_keys": grid_keys, "table": rows, "runs": per_run}
    write_json(out_dir / "compare.json", summary)
    return summary


def fetch_metrics(store, run_id: str) -> Optional[dict]:
    """A run's ``metrics.json`` (only that file), or None when the run has no complete report."""
    from ensemw2s.storage import StorageError

    if not store.is_complete(run_id, "report", "report"):
        return None
    with tempfile.TemporaryDirectory(prefix="ensemw2s-compare-") as tmp:
        try:
            store.get_file(run_id, "report", "report/files/metrics.json", Path(tmp) / "metrics.json")
        except StorageError:
            return None
        return json.loads((Path(tmp) / "metrics.json").read_text())


def run(plan: dict, *, base_run_id: str, out_dir: Path, seeds: Optional[list] = None,
        storage: Optional[StorageConfig] = None, resume: bool = True) -> dict:
    out_dir = Path(out_dir)
    io = StepIO(STEP, run_id=base_run_id, storage=storage, resume=resume,
                config_hash=config_hash({"plan": plan, "seeds": seeds}))
    if io.restore({STEP: out_dir}):
        return read_json(out_dir / "compare.json")
    runs = child_runs(plan, base_run_id, seeds)
    metrics = {r["run_id"]: fetch_metrics(io.store, r["run_id"]) for r in runs}
    grid_keys = [k.strip() for gk in plan["grid"] for k in gk.split(",")]
    summary = write_outputs(out_dir, runs, metrics, grid_keys, base_run_id)
    io.publish({STEP: out_dir})
    print(f"[{STEP}] {sum(m is not None for m in metrics.values())}/{len(runs)} reports -> "
          f"{io.store.uri(base_run_id, STEP, STEP)}/files/compare.md", flush=True)
    return summary


# --------------------------------------------------------------------------- CLI


def build_parser():
    p = base_parser(STEP, __doc__.splitlines()[0])
    p.description += " --config is an ablation config (base/grid/seeds); --run-id the ablation's base run id."
    p.add_argument("--out", required=True, help="output folder")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        if not args.run_id:
            raise ConfigError("--run-id (the ablation's base run id) is required")
        if args.config:
            ab = load_ablation(args.config, args.overrides)
        else:
            ab = ablation_from_dict({}, args.overrides)
        run(ab.plan(), base_run_id=args.run_id, out_dir=Path(args.out), storage=ab.base.storage,
            resume=not args.no_resume)

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
