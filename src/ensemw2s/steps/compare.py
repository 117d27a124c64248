"""compare: one table over every grid point and seed of an ablation (the nightly grid).

An ablation config is a ``base:`` config (the schema of configs/default.yaml), a ``grid:`` of dotted config
keys to value lists, and ``seeds:``. :func:`load_ablation` expands it into grid points (the cartesian product;
a key ``"a.b,c.d"`` varies two keys together, e.g. ``data.easy,data.hard: [[arc_easy, sciq], ...]``). Each
(point, seed) is one run of the main pipeline under run id ``<base>-<point>-s<seed>``; its report is at
``runs/<run id>/report/report/``.

This step reads those reports and writes ``runs/<base>/compare/compare/``: ``compare.md`` (mean ± std over
seeds per grid point), ``compare.csv`` (the same numbers), ``runs.csv`` (one row per run), ``compare.png``
and ``compare.json``. The plan step (:func:`write_plan`) stores every child run's full config at
``runs/<child>/run-summary/config.json``, as ``ensemw2s run`` does, so ``ensemw2s rerun-step`` works on them.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import itertools
import json
import math
import re
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ensemw2s.config import (
    Config,
    ConfigError,
    StorageConfig,
    _from_dict,
    _merge,
    _set_path,
    config_hash,
    parse_overrides,
    safe_load_yaml,
    to_dict,
)
from ensemw2s.steps._io import StepIO, base_parser, read_json, run_main, write_json

STEP = "compare"
TOP_KEYS = ("base", "grid", "seeds", "parallelism")
# every grid point must write to the same object store, and the seed is the ParallelFor variable
FORBIDDEN_GRID_KEYS = ("seed", "storage")
METRICS = ("weak_single_acc_id", "weak_single_acc_ood", "ensemble_acc_id", "ensemble_acc_ood",
           "student_single_acc_ood", "student_ensemble_acc_ood", "ceiling_acc_ood", "pgr_single", "pgr_ens")
POINT_NAME_MAX = 40
_SLUG_RE = re.compile(r"[^A-Za-z0-9_.]+")


@dataclass(frozen=True)
class GridPoint:
    name: str
    values: dict  # dotted key -> value
    cfg: Config


@dataclass
class Ablation:
    base: Config
    grid: dict  # key (dotted, or several joined by ',') -> list of values
    seeds: list
    parallelism: int
    points: list

    def plan(self) -> dict:
        """What the pipeline's plan and compare steps receive (plain JSON, no secrets)."""
        return {"grid": self.grid, "seeds": list(self.seeds),
                "points": [{"name": p.name, "values": p.values, "config": to_dict(p.cfg)}
                           for p in self.points]}


# --------------------------------------------------------------------------- loading


def _check_key(key: str) -> None:
    """``key`` must name a leaf of the config (not a section), outside the forbidden sections."""
    if key.split(".")[0] in FORBIDDEN_GRID_KEYS:
        fixed = ", ".join(FORBIDDEN_GRID_KEYS)
        raise ConfigError(f"grid: {key!r} cannot be varied ({fixed} are fixed for the whole grid; list seeds "
                          "under 'seeds:')")
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        where = ".".join(parts[:i]) or "the top level"
        if part not in fields:
            raise ConfigError(f"grid: unknown config key {key!r}; allowed keys in {where}: "
                              f"{', '.join(fields)}")
        tp = typing.get_type_hints(cls)[part]
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:
                sub = ", ".join(f"{key}.{f.name}" for f in dataclasses.fields(tp))
                raise ConfigError(f"grid: {key!r} is a section; vary one of its keys instead: {sub}")
            cls = tp
        elif i < len(parts) - 1:
            raise ConfigError(f"grid: unknown config key {key!r}; {'.'.join(parts[:i + 1])!r} is not a "
                              "section")


def _slug(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_slug(v) for v in value)
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return _SLUG_RE.sub("_", text).strip("_.") or "x"


def _point_name(index: int, values: list) -> str:
    name = f"g{index:02d}" + "".join(f"-{_slug(v)}" for v in values)
    return name[:POINT_NAME_MAX].rstrip("-_.")


def ablation_from_dict(data: Any, overrides: Optional[list[str]] = None,
                       source: str = "ablation config") -> Ablation:
    """Validate and expand an ablation config (see the module docstring).

    ``overrides``: ``--set`` items; ``seeds=[0,1]``, ``parallelism=2`` and ``grid.<key>=[...]`` edit those
    entries, anything else edits ``base``. A plain project config (no ``base:``/``grid:``) is accepted as a
    one-point grid over its own seed.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with keys {', '.join(TOP_KEYS)}")
    if not set(data) & set(TOP_KEYS):
        data = {"base": data}  # a plain config: one grid point
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: "
                          f"{', '.join(TOP_KEYS)} (config sections belong under 'base:')")
    base = data.get("base") or {}
    grid = data.get("grid") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: 'base' must be a mapping of config sections")
    if not isinstance(grid, dict):
        raise ConfigError(f"{source}: 'grid' must be a mapping of dotted config keys to lists of values")
    grid = dict(grid)
    seeds, parallelism = data.get("seeds"), data.get("parallelism", 0)
    base_over: list[str] = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. boosting.rounds=3")
        parsed = safe_load_yaml(value, f"--set {key}") if value.strip() else ""
        if key == "seeds":
            seeds = parsed
        elif key == "parallelism":
            parallelism = parsed
        elif key.startswith("grid."):
            grid[key[len("grid."):]] = parsed
        else:
            base_over.append(item)
    base = _merge(base, parse_overrides(base_over))
    base_cfg = _from_dict(Config, base).validate()

    keys: list[str] = []
    value_lists: list[list] = []
    for gkey, values in grid.items():
        gkey = str(gkey)
        parts = [p.strip() for p in gkey.split(",")]
        for p in parts:
            _check_key(p)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{gkey}: expected a non-empty list of values, got {values!r}")
        if len(parts) > 1:
            for v in values:
                if not isinstance(v, list) or len(v) != len(parts):
                    raise ConfigError(f"grid.{gkey}: each value must be a list of {len(parts)} values "
                                      f"(one per key: {', '.join(parts)}), got {v!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"grid.{gkey}: duplicate values in {values!r}")
        keys.append(gkey)
        value_lists.append(values)
    clash = {p for k in keys for p in k.split(",")} & {".".join(p) for p in _leaf_paths(base_over)}
    if clash:
        raise ConfigError(f"--set {', '.join(sorted(clash))}: varied by the grid; use --set grid.<key>=[...]")
    flat_keys = [p.strip() for k in keys for p in k.split(",")]
    dup = sorted({k for k in flat_keys if flat_keys.count(k) > 1})
    if dup:
        raise ConfigError(f"grid: {', '.join(dup)} appears in more than one grid key")

    if seeds is None:
        seeds = [base_cfg.seed]
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise ConfigError(f"seeds: expected a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: duplicate seeds in {seeds!r}")
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 0:
        raise ConfigError(f"parallelism: {parallelism!r} is out of range; use 0 (no limit) or a positive "
                          "integer")

    points: list[GridPoint] = []
    base_dict = to_dict(base_cfg)
    for idx, combo in enumerate(itertools.product(*value_lists) if keys else [()]):
        values: dict = {}
        tree: dict = {}
        for gkey, v in zip(keys, combo, strict=True):
            parts = [p.strip() for p in gkey.split(",")]
            for p, pv in zip(parts, v if len(parts) > 1 else [v], strict=True):
                values[p] = pv
                _set_path(tree, p, pv)
        name = _point_name(idx, list(combo)) if keys else "g00-base"
        try:
            cfg = _from_dict(Config, _merge(base_dict, tree)).validate()
        except ConfigError as exc:
            raise ConfigError(f"grid point {name} ({_describe(values)}): {exc}") from None
        points.append(GridPoint(name, values, cfg))
    return Ablation(base_cfg, dict(zip(keys, value_lists, strict=True)), list(seeds), parallelism, points)


def _leaf_paths(overrides: list[str]) -> list[tuple]:
    out: list[tuple] = []

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict) and v:
                walk(v, prefix + (k,))
            else:
                out.append(prefix + (k,))

    walk(parse_overrides(overrides), ())
    return out


def load_ablation(path: str | Path, overrides: Optional[list[str]] = None) -> Ablation:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ablation config file not found: {p}")
    return ablation_from_dict(safe_load_yaml(p.read_text(encoding="utf-8"), str(p)), overrides, str(p))


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "base config"


# --------------------------------------------------------------------------- run ids and the plan


def child_run_id(base_run_id: str, point: str, seed: int) -> str:
    """The run id of one grid point and seed (validated: it names a folder in object storage)."""
    from ensemw2s.storage import validate_name

    return validate_name("run id", f"{base_run_id}-{point}-s{int(seed)}")


def resolve_base_run_id(run_id: str, job_id: str, prefix: str = "ablation") -> str:
    """``run_id`` when given; else ``<prefix>-<KFP run uuid, 12 chars>`` (a recurring run passes no run id,
    and every firing must write under a new prefix). Deterministic, so every task of one KFP run derives the
    same id without receiving it (kfp.local 2.17 replaces task outputs fed into a ParallelFor with the loop
    item; it cannot resolve the job-creation-time placeholder either, so the id has no date)."""
    from ensemw2s.storage import validate_name

    if run_id:
        return validate_name("run id", run_id)
    job = re.sub(r"[^A-Za-z0-9]", "", job_id or "")[:12] or "local"
    return validate_name("run id", f"{prefix}-{job}")


def child_runs(plan: dict, base_run_id: str, seeds: Optional[list] = None) -> list[dict]:
    return [{"point": p["name"], "values": p["values"], "seed": int(s),
             "run_id": child_run_id(base_run_id, p["name"], s)}
            for p in plan["points"] for s in (plan["seeds"] if seeds is None else seeds)]


def write_plan(plan: dict, base_run_id: str, seeds: Optional[list], storage: StorageConfig) -> list[dict]:
    """Store each child run's config (``runs/<child>/run-summary/config.json``) and the plan itself."""
    from ensemw2s.storage import Store

    store = Store.from_config(storage)
    store.check()
    configs = {p["name"]: p["config"] for p in plan["points"]}
    runs = child_runs(plan, base_run_id, seeds)
    for r in runs:
        store.put_json(r["run_id"], "run-summary", "config.json", {**configs[r["point"]], "seed": r["seed"]})
    used = list(plan["seeds"] if seeds is None else seeds)
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    store.put_json(base_run_id, "run-summary", "plan.json",
                   {**plan, "seeds": used, "runs": runs, "created": created})
    return runs


# --------------------------------------------------------------------------- the table


def _mean_std(xs: list) -> tuple[Optional[float], Optional[float]]:
    xs = [float(x) for x in xs
          if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return mean, std


def build_table(runs: list[dict], metrics_by_run: dict[str, Optional[dict]],
                grid_keys: list[str]) -> list[dict]:
    """One row per grid point: the grid values, seeds found / planned, and mean/std of every metric."""
    rows: list[dict] = []
    for point in dict.fromkeys(r["point"] for r in runs):
        mine = [r for r in runs if r["point"] == point]
        found = [metrics_by_run[r["run_id"]] for r in mine if metrics_by_run.get(r["run_id"]) is not None]
        row: dict = {"point": point, **{k: mine[0]["values"].get(k) for k in grid_keys},
                     "seeds": len(found), "seeds_planned": len(mine),
                     "missing": [r["run_id"] for r in mine if metrics_by_run.get(r["run_id"]) is None]}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([f.get(m) for f in found])
        rows.append(row)
    return rows


def _fmt(mean: Optional[float], std: Optional[float]) -> str:
    return "—" if mean is None else f"{mean:.3f} ± {std:.3f}"


def render_markdown(rows: list[dict], grid_keys: list[str], base_run_id: str) -> str:
    head = ["point", *grid_keys, "seeds", *METRICS]
    lines = [f"# EnsemW2S ablation {base_run_id}", "",
             "Mean ± sample std over seeds; accuracies by the primary method (see each run's report); "
             "PGR = (student − weak) / (ceiling − weak).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["point"], *[str(r[k]) for k in grid_keys], f"{r['seeds']}/{r['seeds_planned']}",
                 *[_fmt(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS]]
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
    write_csv(out_dir / "compare.csv", rows, ["point", *grid_keys, "seeds", "seeds_planned", *stat_cols])
    per_run = [{"point": r["point"], "seed": r["seed"], "run_id": r["run_id"],
                **{k: r["values"].get(k) for k in grid_keys},
                **{m: (metrics_by_run.get(r["run_id"]) or {}).get(m) for m in METRICS}} for r in runs]
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
