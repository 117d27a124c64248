"""The ablation config: one format for the nightly grid (``ensemw2s submit --pipeline ablations``, the compare
step, the Helm chart) and for the ablations of the results page (``python -m benchmarks.science science
--ablations``). Example: ``configs/ablations.yaml``, ``configs/science_ablations.yaml``.

Top-level keys (:data:`TOP_KEYS`):

- ``base:`` the config every grid point starts from: a mapping (the schema of configs/default.yaml), or the
  path of a config YAML, relative to the ablation file's folder (e.g. ``base: science.yaml``).
- ``grid:`` dotted config key -> non-empty list of values. The grid points are the cartesian product of all
  keys. A key ``"a.b,c.d"`` varies several keys together: each value is a list with one value per key (e.g.
  ``data.easy,data.hard: [[arc_easy, sciq], [arc_easy, arc_challenge]]``; one-at-a-time ablations list each
  variant as one such tuple). ``seed`` and ``storage.*`` cannot be varied.
- ``seeds:`` every grid point runs once per seed (default: the base config's seed).
- ``parallelism:`` at most this many (point, seed) runs at once in the cluster pipeline (0 = the bound that
  ``resources.max_gpu_pods`` sets; a positive value is further capped by it).
- ``fork_from:`` optional; ``base`` means each (point, seed) run starts from a copy of the artifacts of the
  base config's run of the same seed (``ensemw2s run --from-run``), so only the steps whose config or inputs
  the point changes are recomputed. Used by the results page, whose base runs are its seeds; the cluster
  pipeline runs every point from scratch and refuses it.

:func:`load_ablation` validates and expands a file into :class:`GridPoint` s (named ``g<index>-<values>``);
each (point, seed) of a grid is one run of the main pipeline under run id ``<base run id>-<point>-s<seed>``
(:func:`child_run_id`). :func:`write_plan` stores each child run's full config at
``runs/<child>/run-summary/config.json``, as ``ensemw2s run`` does, so ``ensemw2s rerun-step`` works on them.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ensemw2s.config import (
    Config,
    ConfigError,
    StorageConfig,
    from_dict,
    merge_dicts,
    parse_overrides,
    safe_load_yaml,
    set_path,
    to_dict,
)

TOP_KEYS = ("base", "grid", "seeds", "parallelism", "fork_from")
# every grid point must write to the same object store, and the seed is the ParallelFor variable
FORBIDDEN_GRID_KEYS = ("seed", "storage")
FORK_FROM = ("base",)  # allowed values of fork_from (or leave it out)
POINT_NAME_MAX = 40
_SLUG_RE = re.compile(r"[^A-Za-z0-9_.]+")


@dataclass(frozen=True)
class GridPoint:
    name: str
    values: dict  # dotted key -> value
    cfg: Config

    def overrides(self, base: Optional[Config] = None) -> list[str]:
        """This point's grid values as ``KEY=VALUE`` items (``--set`` syntax); with ``base``, only those that
        differ from it."""
        tree = to_dict(base) if base is not None else None
        out = []
        for key, value in self.values.items():
            if tree is not None:
                node: Any = tree
                for part in key.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                if node == value:
                    continue
            out.append(f"{key}={_set_value(value)}")
        return out


def _set_value(value: Any) -> str:
    """``value`` as ``--set`` writes it: a plain string as it is when YAML reads it back unchanged, anything
    else as JSON (which YAML reads)."""
    if isinstance(value, str):
        try:
            if safe_load_yaml(value) == value:
                return value
        except ConfigError:
            pass
    return json.dumps(value)


@dataclass
class Ablation:
    base: Config
    grid: dict  # key (dotted, or several joined by ',') -> list of values
    seeds: list
    parallelism: int
    points: list
    fork_from: Optional[str] = None  # None or "base" (see the module docstring)

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


def _base_mapping(base: Any, source: str, root: Optional[Path]) -> dict:
    """``base:`` as a mapping: itself, or the config YAML it names (relative to ``root``)."""
    if base is None:
        return {}
    if isinstance(base, str):
        path = Path(base)
        if not path.is_absolute() and root is not None:
            path = Path(root) / path
        if not path.is_file():
            raise ConfigError(f"{source}: base: config file not found: {path} (a relative path is relative to "
                              "the ablation file's folder)")
        loaded = safe_load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (the base of {source})")
        return loaded
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: 'base' must be a mapping of config sections or the path of a config "
                          f"file, got {type(base).__name__}")
    return base


def ablation_from_dict(data: Any, overrides: Optional[list[str]] = None,
                       source: str = "ablation config", root: Optional[Path] = None) -> Ablation:
    """Validate and expand an ablation config (see the module docstring).

    ``overrides``: ``--set`` items; ``seeds=[0,1]``, ``parallelism=2``, ``fork_from=base`` and
    ``grid.<key>=[...]`` edit those entries, anything else edits ``base``. A plain project config (no top-level
    key of :data:`TOP_KEYS`) is accepted as a one-point grid over its own seed. ``root``: the folder a ``base:``
    path is relative to (the ablation file's; default: the working directory).
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
    base = _base_mapping(data.get("base"), source, root)
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{source}: 'grid' must be a mapping of dotted config keys to lists of values")
    grid = dict(grid)
    seeds, parallelism = data.get("seeds"), data.get("parallelism", 0)
    fork_from = data.get("fork_from")
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
        elif key == "fork_from":
            fork_from = parsed
        elif key.startswith("grid."):
            grid[key[len("grid."):]] = parsed
        else:
            base_over.append(item)
    base = merge_dicts(base, parse_overrides(base_over))
    base_cfg = from_dict(Config, base).validate()

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
        raise ConfigError(f"parallelism: {parallelism!r} is out of range; use 0 (the bound from resources.max_gpu_pods) or a positive "
                          "integer")
    if fork_from is not None and fork_from not in FORK_FROM:
        raise ConfigError(f"fork_from: {fork_from!r} is not allowed; allowed values: {', '.join(FORK_FROM)} "
                          "(each run starts from a copy of the base config's run of the same seed), or leave "
                          "it out (every run from scratch)")

    points: list[GridPoint] = []
    base_dict = to_dict(base_cfg)
    for idx, combo in enumerate(itertools.product(*value_lists) if keys else [()]):
        values: dict = {}
        tree: dict = {}
        for gkey, v in zip(keys, combo, strict=True):
            parts = [p.strip() for p in gkey.split(",")]
            for p, pv in zip(parts, v if len(parts) > 1 else [v], strict=True):
                values[p] = pv
                set_path(tree, p, pv)
        name = _point_name(idx, list(combo)) if keys else "g00-base"
        try:
            cfg = from_dict(Config, merge_dicts(base_dict, tree)).validate()
        except ConfigError as exc:
            raise ConfigError(f"grid point {name} ({_describe(values)}): {exc}") from None
        points.append(GridPoint(name, values, cfg))
    return Ablation(base_cfg, dict(zip(keys, value_lists, strict=True)), list(seeds), parallelism, points,
                    fork_from)


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
    """Read, validate and expand the ablation config file ``path`` (``--set`` items in ``overrides``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ablation config file not found: {p}")
    return ablation_from_dict(safe_load_yaml(p.read_text(encoding="utf-8"), str(p)), overrides, str(p),
                              root=p.parent)


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
    """Every (grid point, seed) run of ``plan``: ``{point, values, seed, run_id}``."""
    return [{"point": p["name"], "values": p["values"], "seed": int(s),
             "run_id": child_run_id(base_run_id, p["name"], s)}
            for p in plan["points"] for s in (plan["seeds"] if seeds is None else seeds)]


def write_plan(plan: dict, base_run_id: str, seeds: Optional[list], storage: StorageConfig) -> list[dict]:
    """Store each child run's config (``runs/<child>/run-summary/config.json``) and the plan itself."""
    from ensemw2s.steps.keys import RUN_SUMMARY
    from ensemw2s.storage import Store

    store = Store.from_config(storage)
    store.check()
    configs = {p["name"]: p["config"] for p in plan["points"]}
    runs = child_runs(plan, base_run_id, seeds)
    for r in runs:
        store.put_json(r["run_id"], RUN_SUMMARY, "config.json", {**configs[r["point"]], "seed": r["seed"]})
    used = list(plan["seeds"] if seeds is None else seeds)
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    store.put_json(base_run_id, RUN_SUMMARY, "plan.json",
                   {**plan, "seeds": used, "runs": runs, "created": created})
    return runs
