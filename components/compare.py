"""KFP components of the ablation pipeline: thin wrappers around :mod:`ensemw2s.ablation` (the plan, run ids)
and :mod:`ensemw2s.steps.compare` (the table).

``plan`` resolves the ablation's base run id (a fresh one per firing of a recurring run) and stores each child
run's config; ``child_run_id`` names one (grid point, seed) run, deriving the same base run id from the KFP
job id rather than receiving it (kfp.local replaces task outputs fed into a ParallelFor with the loop item);
``compare`` writes the comparison table; ``prepare_run`` does for a scheduled single run what ``plan`` does
for a grid. Bound to an image with :func:`make_components`, like :mod:`components.steps`.
"""

from types import SimpleNamespace

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Output


def plan(run_id: str, plan_json: str, seeds: list, storage_cfg: str, job_id: str) -> str:
    import json

    from ensemw2s import ablation
    from ensemw2s.config import StorageConfig, section_from_json

    base = ablation.resolve_base_run_id(run_id, job_id)
    runs = ablation.write_plan(json.loads(plan_json), base, seeds,
                           section_from_json(StorageConfig, storage_cfg, "storage"))
    print(f"ablation {base}: {len(runs)} runs", flush=True)
    return base


def child_run_id(run_id: str, job_id: str, point: str, seed: int) -> str:
    from ensemw2s import ablation

    return ablation.child_run_id(ablation.resolve_base_run_id(run_id, job_id), point, seed)


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


def compare(base_run_id: str, plan_json: str, seeds: list, storage_cfg: str, table: Output[Dataset],
            summary: Output[Markdown], summary_html: Output[HTML]):
    import html
    import json
    import shutil
    from pathlib import Path

    from ensemw2s.config import StorageConfig, section_from_json
    from ensemw2s.steps import compare as step

    step.run(json.loads(plan_json), base_run_id=base_run_id, out_dir=Path(table.path), seeds=seeds,
             storage=section_from_json(StorageConfig, storage_cfg, "storage"))
    shutil.copyfile(Path(table.path) / "compare.md", summary.path)
    md = (Path(table.path) / "compare.md").read_text()
    Path(summary_html.path).write_text(f"<html><body><pre>{html.escape(md)}</pre></body></html>")


FUNCTIONS = (plan, child_run_id, prepare_run, compare)


def make_components(image: str) -> SimpleNamespace:
    return SimpleNamespace(**{
        fn.__name__: dsl.component(base_image=image, install_kfp_package=False)(fn) for fn in FUNCTIONS
    })
