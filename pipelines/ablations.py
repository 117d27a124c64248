"""The nightly ablation DAG: the main EnsemW2S pipeline for every (grid point, seed), then compare.

    plan ─ for each DAG shape (rounds, student stage, resources), one after the other:                          ┐
             ParallelFor((point, seed) items, parallelism) ─ grid_point → ensemw2s sub-pipeline ─┴ compare

Boosting rounds (and ``student.enabled``, ``resources``) change the DAG's shape, so the grid points are grouped by them and each
group is compiled once, as a sub-pipeline whose config strings are parameters (``build_pipeline(...,
runtime_config=True)``), run by one ParallelFor over the group's (point, seed) items. So the spec grows with
the number of distinct rounds, not with the number of grid points (``configs/ablations.yaml``: 2 groups instead
of 24 unrolled sub-pipelines; tests/cluster/test_spec_size.py). ``grid_point`` reads the point's config from
the plan that ``plan`` stored. The loops run one after the other, each with the same parallelism, which
bounds the GPU pods of the whole grid: at most ``resources.max_gpu_pods`` //
:data:`ensemw2s.steps.keys.MAX_PARALLEL_GPU_STEPS` runs at once (and at most ``parallelism`` when it is set).
(One loop over every item with a ``dsl.If`` per group would keep all the GPUs busy, but kfp.local 2.17 cannot
evaluate a condition inside a ParallelFor: it skips the branch.) Each (point, seed) run writes under
``runs/<base>-<point>-s<seed>/`` and ``compare`` (after all of them) writes ``runs/<base>/compare/``.
``run_id`` empty (a recurring run) means "a fresh base run id per firing", derived from the KFP run's uuid (by
``plan`` and, identically, inside the loops).

:func:`build_recurring_main` wraps the main pipeline the same way for ``ensemw2s schedule --pipeline main``.

Compile: ``python pipelines/ablations.py --config configs/ablations.yaml -o ablations.yaml``.
"""

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script, pipelines/ is sys.path[0]: ensemw2s.py would shadow the package
    _HERE = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
from typing import Optional  # noqa: E402

from kfp import compiler, dsl  # noqa: E402

from ensemw2s.ablation import Ablation, ablation_from_dict, load_ablation  # noqa: E402
from ensemw2s.config import Config, section_to_json, to_dict  # noqa: E402
from ensemw2s.errors import ConfigError  # noqa: E402
from ensemw2s.steps import keys  # noqa: E402

PIPELINE_NAME = "ensemw2s-ablations"
# KFP fills this in at run time; the run-id components derive a fresh base run id from it
JOB = {"job_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
GRID_HINT = ("use fewer distinct boosting.rounds (or resources) values in the grid, fewer rounds, or split the "
             "grid into several ablation configs submitted separately")


def _plumb(task, name: str, res, for_cluster: bool, *, storage: bool):
    from pipelines import k8s

    task.set_display_name(name)
    if for_cluster and storage:
        k8s.apply(task, res, gpu=False)
    return task


def max_parallel_runs(ab: Ablation) -> int:
    """How many (point, seed) runs of the grid may run at once: each run has at most
    ``MAX_PARALLEL_GPU_STEPS`` GPU pods at a time, and the grid at most ``resources.max_gpu_pods``."""
    bound = max(1, ab.base.resources.max_gpu_pods // keys.MAX_PARALLEL_GPU_STEPS)
    return min(ab.parallelism, bound) if ab.parallelism else bound


def _groups(ab: Ablation) -> list:
    """Grid points grouped by what changes the compiled DAG: the number of rounds, the student stage
    (``student.enabled``) and the resources."""
    groups: dict = {}
    for p in ab.points:
        shape = (p.cfg.boosting.rounds, keys.students_enabled(p.cfg), section_to_json(p.cfg.resources))
        groups.setdefault(shape, []).append(p)
    return list(groups.values())


def build_ablation_pipeline(ab: Ablation, *, for_cluster: bool = True, image: Optional[str] = None,
                            cache: bool = False):
    from components.compare import make_components

    from pipelines.ensemw2s import CONFIG_PARAMS, build_pipeline

    if ab.fork_from:
        raise ConfigError(f"fork_from: {ab.fork_from!r} is not supported by the cluster ablation pipeline (every grid "
                          "point runs from scratch there); it is for `python -m benchmarks.science science "
                          "--ablations`. Leave fork_from out to submit this grid")
    res = ab.base.resources
    c = make_components(image or res.image)
    groups = _groups(ab)
    subs = [build_pipeline(g[0].cfg, for_cluster=for_cluster, image=image, runtime_config=True, cache=cache)
            for g in groups]
    # the ablation itself, expanded again by the plan task: the spec holds the base config once
    ablation_j = json.dumps({"base": to_dict(ab.base), "grid": ab.grid, "seeds": list(ab.seeds)})  # grid order kept
    if [p["name"] for p in ablation_from_dict(json.loads(ablation_j)).plan()["points"]] != [p.name for p in ab.points]:
        raise AssertionError("the ablation does not expand to the same grid points again")  # a bug, not input
    parallelism = max_parallel_runs(ab)
    desc = (f"EnsemW2S ablations: {len(ab.points)} grid points ({', '.join(ab.grid) or 'base only'}) x "
            f"{len(ab.seeds)} seeds, at most {parallelism} runs at once, then compare")

    @dsl.pipeline(name=PIPELINE_NAME, description=desc)
    def ensemw2s_ablations(run_id: str = "", storage_cfg: str = section_to_json(ab.base.storage)):
        plan = _plumb(c.plan(run_id=run_id, ablation_json=ablation_j, seeds=list(ab.seeds), storage_cfg=storage_cfg,
                             **JOB),
                      "plan", res, for_cluster, storage=True)
        plan.set_caching_options(False)  # a new base run id per run
        runs, previous = [], [plan]
        for group, sub in zip(groups, subs):
            rounds = group[0].cfg.boosting.rounds
            shape = f"rounds-{rounds}" + ("" if keys.students_enabled(group[0].cfg) else "-no-student")
            # loop items are strings (KFP types the fields of dict items as strings); grid_point returns an int seed
            items = [{"point": p.name, "seed": str(s)} for p in group for s in ab.seeds]
            with dsl.ParallelFor(items, parallelism=parallelism, name=shape) as item:
                # the base run id is derived again, not passed in: no task output enters the loop
                point = _plumb(c.grid_point(run_id=run_id, point=item.point, seed=item.seed, storage_cfg=storage_cfg,
                                            **JOB), "grid-point", res, for_cluster, storage=True).after(*previous)
                point.set_caching_options(False)
                args = {f"{n}_cfg": point.outputs[f"{n}_cfg"] for n in CONFIG_PARAMS}
                run = sub(run_id=point.outputs["run_id"], seed=point.outputs["seed"], storage_cfg=storage_cfg,
                          **args).set_display_name(f"ensemw2s-{shape}")
            runs.append(run)
            previous = [run]  # the next group starts when this one is done: one bound for the whole grid
        cmp = _plumb(c.compare(base_run_id=plan.output, seeds=list(ab.seeds), storage_cfg=storage_cfg),
                     "compare", res, for_cluster, storage=True)
        cmp.set_caching_options(False)
        cmp.after(*runs)

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


def compile_ablations(ab: Ablation, output, *, for_cluster: bool = True, cache: bool = False) -> Path:
    """Compile the grid to ``output``; refused (ConfigError) above the spec size limit."""
    from pipelines import limits

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_ablation_pipeline(ab, for_cluster=for_cluster, cache=cache)
    compiler.Compiler().compile(pipeline, package_path=str(output))
    return limits.check_spec(output, what=f"the ablation grid ({len(ab.points)} points, {len(_groups(ab))} "
                             "distinct DAG shapes)", hint=GRID_HINT)


def compile_recurring_main(cfg: Config, output, *, prefix: str = "ensemw2s") -> Path:
    """Compile :func:`build_recurring_main` for a cluster; refused above the spec size limit."""
    from pipelines import limits

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_recurring_main(cfg, prefix=prefix), package_path=str(output))
    return limits.check_spec(output, what=f"the recurring main pipeline ({cfg.boosting.rounds} boosting rounds)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="compile the EnsemW2S ablation pipeline to KFP IR YAML")
    p.add_argument("--config", default="configs/ablations.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("-o", "--output", default="ablations.yaml")
    p.add_argument("--local", action="store_true", help="omit the Kubernetes plumbing")
    args = p.parse_args(argv)

    def go():
        ab = load_ablation(args.config, args.overrides)
        out = compile_ablations(ab, args.output, for_cluster=not args.local)
        print(f"wrote {out} ({len(ab.points)} grid points x {len(ab.seeds)} seeds)")

    from ensemw2s.errors import call_reporting_user_errors

    return call_reporting_user_errors(go)


if __name__ == "__main__":
    raise SystemExit(main())
