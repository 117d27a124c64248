"""The nightly ablation DAG: the main EnsemW2S pipeline per grid point, fanned out over seeds, then compare.

    plan ─┬─ ParallelFor(seeds) ─ for each grid point: child_run_id → ensemw2s sub-pipeline ─┐
          └──────────────────────────────────────────────────────────────────────── compare ◄┘

Boosting rounds change the DAG's shape, so every non-seed grid point is expanded at compile time into its own
sub-pipeline (``pipelines.ensemw2s.build_pipeline(point config)``, used as a component); the seeds are a
runtime list parameter. Each (point, seed) run writes under ``runs/<base>-<point>-s<seed>/`` and ``compare``
(after all of them) writes ``runs/<base>/compare/``. ``run_id`` empty (a recurring run) means "a fresh base
run id per firing", derived from the KFP run's uuid (by ``plan`` and, identically, inside the loop:
kfp.local 2.17 replaces any task output passed into a ParallelFor body with the loop item, so none is).

:func:`build_recurring_main` wraps the main pipeline the same way for ``ensemw2s schedule --pipeline main``.

Compile: ``python pipelines/ablations.py --config configs/ablations.yaml -o ablations.yaml``.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from kfp import compiler, dsl

from ensemw2s.ablation import Ablation, load_ablation
from ensemw2s.config import Config, section_to_json, to_dict
from ensemw2s.errors import ConfigError

PIPELINE_NAME = "ensemw2s-ablations"
# KFP fills this in at run time; the run-id components derive a fresh base run id from it
JOB = {"job_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}


def _plumb(task, name: str, res, for_cluster: bool, *, storage: bool):
    from pipelines import k8s

    task.set_display_name(name)
    if for_cluster and storage:
        k8s.apply(task, res, gpu=False)
    return task


def build_ablation_pipeline(ab: Ablation, *, for_cluster: bool = True, image: Optional[str] = None):
    from components.compare import make_components

    from pipelines.ensemw2s import build_pipeline

    if ab.fork_from:
        raise ConfigError(f"fork_from: {ab.fork_from!r} is not supported by the cluster ablation pipeline (every grid "
                          "point runs from scratch there); it is for `python -m benchmarks.science science "
                          "--ablations`. Leave fork_from out to submit this grid")
    res = ab.base.resources
    c = make_components(image or res.image)
    subs = [(p, build_pipeline(p.cfg, for_cluster=for_cluster, image=image)) for p in ab.points]
    plan_j = json.dumps(ab.plan(), sort_keys=True)
    desc = (f"EnsemW2S ablations: {len(ab.points)} grid points ({', '.join(ab.grid) or 'base only'}) "
            f"x seeds, then compare")

    @dsl.pipeline(name=PIPELINE_NAME, description=desc)
    def ensemw2s_ablations(run_id: str = "", seeds: List[int] = list(ab.seeds),  # noqa: B006 (KFP default)
                           storage_cfg: str = section_to_json(ab.base.storage)):
        plan = _plumb(c.plan(run_id=run_id, plan_json=plan_j, seeds=seeds, storage_cfg=storage_cfg, **JOB),
                      "plan", res, for_cluster, storage=True)
        plan.set_caching_options(False)  # a new base run id per run
        points = []
        with dsl.ParallelFor(seeds, parallelism=ab.parallelism) as seed:
            for point, sub in subs:
                # the base run id is derived again, not passed in: no task output enters the loop
                rid = _plumb(c.child_run_id(run_id=run_id, point=point.name, seed=seed, **JOB),
                             f"run-id-{point.name}", res, for_cluster, storage=False).after(plan)
                points.append(_plumb(sub(run_id=rid.output, seed=seed, storage_cfg=storage_cfg),
                                     point.name, res, False, storage=False))
        cmp = _plumb(c.compare(base_run_id=plan.output, plan_json=plan_j, seeds=seeds,
                               storage_cfg=storage_cfg), "compare", res, for_cluster, storage=True)
        cmp.set_caching_options(False)
        cmp.after(*points)

    return ensemw2s_ablations


def build_recurring_main(cfg: Config, *, for_cluster: bool = True, prefix: str = "ensemw2s"):
    """The main pipeline behind a ``prepare_run`` step, so each firing of a recurring run gets a new run id
    (``<prefix>-<KFP run uuid>``) and has its config stored for ``ensemw2s rerun-step``."""
    from components.compare import make_components

    from pipelines.ensemw2s import build_pipeline

    c = make_components(cfg.resources.image)
    main = build_pipeline(cfg, for_cluster=for_cluster)
    cfg_j = json.dumps(to_dict(cfg), sort_keys=True)

    @dsl.pipeline(name=f"{prefix}-recurring",
                  description=f"EnsemW2S ({cfg.boosting.rounds} rounds), a new run id per run")
    def ensemw2s_recurring(run_id: str = "", seed: int = cfg.seed,
                           storage_cfg: str = section_to_json(cfg.storage)):
        prep = _plumb(c.prepare_run(run_id=run_id, config_json=cfg_j, storage_cfg=storage_cfg, prefix=prefix,
                                    **JOB),
                      "prepare-run", cfg.resources, for_cluster, storage=True)
        prep.set_caching_options(False)
        main(run_id=prep.output, seed=seed, storage_cfg=storage_cfg).set_display_name("ensemw2s")

    return ensemw2s_recurring


def compile_ablations(ab: Ablation, output, *, for_cluster: bool = True) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_ablation_pipeline(ab, for_cluster=for_cluster)
    compiler.Compiler().compile(pipeline, package_path=str(output))
    return output


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="compile the EnsemW2S ablation pipeline to KFP IR YAML")
    p.add_argument("--config", default="configs/ablations.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("-o", "--output", default="ablations.yaml")
    p.add_argument("--local", action="store_true", help="omit the Kubernetes plumbing")
    args = p.parse_args(argv)
    ab = load_ablation(args.config, args.overrides)
    out = compile_ablations(ab, args.output, for_cluster=not args.local)
    print(f"wrote {out} ({len(ab.points)} grid points x {len(ab.seeds)} seeds)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
