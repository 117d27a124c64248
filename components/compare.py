"""KFP components of the ablation pipeline: thin wrappers around :mod:`ensemw2s.ablation` (the plan, run ids)
and :mod:`ensemw2s.steps.compare` (the table).

``plan`` resolves the ablation's base run id (a fresh one per firing of a recurring run) and stores each child
run's config and the plan (``runs/<base>/run-summary/plan.json``); ``grid_point`` (inside the loop over
(point, seed) items) names one child run, deriving the same base run id from the KFP job id rather than
receiving it (kfp.local replaces task outputs fed into a ParallelFor with the loop item), and reads that
point's config strings from the stored plan, so the spec holds the grid's configs once; ``compare`` writes
the comparison table; ``prepare_run`` does for a scheduled single run what ``plan`` does for a grid. Bound to
an image with :func:`make_components`, like :mod:`components.steps`.
"""

from types import SimpleNamespace
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Output


def plan(run_id: str, ablation_json: str, seeds: list, storage_cfg: str, job_id: str) -> str:
    """``ablation_json``: the ablation config (base config, grid, seeds), expanded here into the grid points
    (the same expansion as at compile time), so the spec holds the base config once, not every point's."""
    import json

    from ensemw2s import ablation
    from ensemw2s.config import StorageConfig, section_from_json

    base = ablation.resolve_base_run_id(run_id, job_id)
    runs = ablation.write_plan(ablation.ablation_from_dict(json.loads(ablation_json)).plan(), base, seeds,
                               section_from_json(StorageConfig, storage_cfg, "storage"))
    print(f"ablation {base}: {len(runs)} runs", flush=True)
    return base


def grid_point(run_id: str, job_id: str, point: str, seed: str, storage_cfg: str) -> NamedTuple(
        "GridPointOutputs", [("run_id", str), ("seed", int), ("data_cfg", str), ("split_weak_cfg", str), ("experts_cfg", str),
                             ("boosting_cfg", str), ("round_boosting_cfg", str), ("ensemble_cfg", str),
                             ("student_cfg", str), ("eval_cfg", str)]):
    # (the annotation is inline: a lightweight component's source runs without this module's globals)
    from collections import namedtuple

    from ensemw2s import ablation
    from ensemw2s.config import Config, StorageConfig, from_dict, section_from_json
    from ensemw2s.errors import ConfigError
    from ensemw2s.steps.keys import RUN_SUMMARY
    from ensemw2s.steps.stepio import task_configs
    from ensemw2s.storage import Store

    base = ablation.resolve_base_run_id(run_id, job_id)
    store = Store.from_config(section_from_json(StorageConfig, storage_cfg, "storage"))
    plan = store.get_json(base, RUN_SUMMARY, "plan.json")
    configs = {p["name"]: p["config"] for p in plan["points"]}
    if point not in configs:
        raise ConfigError(f"grid point {point!r} is not in the stored plan of ablation {base}")
    cf = task_configs(from_dict(Config, {**configs[point], "seed": int(seed)}).validate())
    out = namedtuple("GridPointOutputs", ["run_id", "seed", "data_cfg", "split_weak_cfg", "experts_cfg", "boosting_cfg",
                                          "round_boosting_cfg", "ensemble_cfg", "student_cfg", "eval_cfg"])
    return out(ablation.child_run_id(base, point, int(seed)), int(seed), cf["data"], cf["split_weak"], cf["experts"],
               cf["boosting"], cf["round_boosting"], cf["ensemble"], cf["student"], cf["eval"])


def prepare_run(run_id: str, config_json: str, storage_cfg: str, job_id: str, prefix: str) -> str:
    import json

    from ensemw2s.ablation import resolve_base_run_id
    from ensemw2s.config import StorageConfig, section_from_json
    from ensemw2s.storage import Store

    rid = resolve_base_run_id(run_id, job_id, prefix=prefix)
    store = Store.from_config(section_from_json(StorageConfig, storage_cfg, "storage"))
    store.check()
    store.put_json(rid, "run-summary", "config.json", json.loads(config_json))
    return rid


def compare(base_run_id: str, seeds: list, storage_cfg: str, table: Output[Dataset],
            summary: Output[Markdown], summary_html: Output[HTML]):
    import html
    import shutil
    from pathlib import Path

    from ensemw2s.config import StorageConfig, section_from_json
    from ensemw2s.steps import compare as step
    from ensemw2s.steps.keys import RUN_SUMMARY
    from ensemw2s.storage import Store

    storage = section_from_json(StorageConfig, storage_cfg, "storage")
    stored = Store.from_config(storage).get_json(base_run_id, RUN_SUMMARY, "plan.json")  # written by plan
    plan = {k: stored[k] for k in ("grid", "seeds", "points")}
    step.run(plan, base_run_id=base_run_id, out_dir=Path(table.path), seeds=seeds, storage=storage)
    shutil.copyfile(Path(table.path) / "compare.md", summary.path)
    md = (Path(table.path) / "compare.md").read_text()
    Path(summary_html.path).write_text(f"<html><body><pre>{html.escape(md)}</pre></body></html>")


FUNCTIONS = (plan, grid_point, prepare_run, compare)


def make_components(image: str) -> SimpleNamespace:
    return SimpleNamespace(**{
        fn.__name__: dsl.component(base_image=image, install_kfp_package=False)(fn) for fn in FUNCTIONS
    })
