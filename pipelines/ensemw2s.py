"""The EnsemW2S DAG.

split_data → train_single (the single-expert baseline) and (train_expert-r{t} → update_weights-r{t}) for
t = 1..T → pseudo_label (ensemble / single / gold)
→ train_student (×3) → evaluate (experts, ×3 students) → report; under ``student.enabled: false``
split_data → train_single and the rounds → evaluate (experts) → report.

T is read from the config at compile time and unrolled (``boosting.rounds`` is bounded for that reason); the
rest is data. Each task gets only the config it reads (:func:`ensemw2s.steps.stepio.task_configs`), and is
named by its step key (:mod:`ensemw2s.steps.keys`): the same name as its folder in object storage and the
``--step`` of ``ensemw2s rerun-step``; the same table says which steps are GPU steps. ``for_cluster=True``
adds the Kubernetes plumbing (:mod:`pipelines.k8s`) and the two tasks that open and close a run on a cluster:
``start-run`` (takes the run id's lease, stores the run's config) and ``end-run`` (releases the lease).
``cache`` sets KFP's cache option of every step task (``ensemw2s submit --cache``; off by default: each step decides
from the object store whether its outputs are reusable, docs/cluster.md "Caching"); ``start-run`` and
``end-run`` are never cached. ``runtime_config=True`` makes the config strings pipeline parameters (the ablation grid feeds each grid point's
from a task; see :mod:`pipelines.ablations`). Every compile is checked against the spec size limit
(:mod:`pipelines.limits`).

Compile: ``python pipelines/ensemw2s.py --config configs/default.yaml -o pipeline.yaml`` (or
``python -m pipelines.ensemw2s``, or ``ensemw2s compile``).
"""

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script, pipelines/ is sys.path[0]: this file would shadow the package
    _HERE = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
from typing import Optional  # noqa: E402

from kfp import compiler, dsl  # noqa: E402

from ensemw2s.config import Config, load_config, section_to_json  # noqa: E402
from ensemw2s.errors import ConfigError  # noqa: E402
from ensemw2s.steps import keys  # noqa: E402
from ensemw2s.steps.stepio import task_configs  # noqa: E402

PIPELINE_NAME = "ensemw2s"
CONFIG_PARAMS = ("data", "split_weak", "experts", "boosting", "round_boosting", "ensemble", "student", "eval")


def build_pipeline(cfg: Config, *, for_cluster: bool = False, image: Optional[str] = None,
                   runtime_config: bool = False, cache: bool = False):
    """A ``@dsl.pipeline`` function for ``cfg`` (T rounds unrolled)."""
    from components.steps import make_components

    from pipelines import k8s

    c = make_components(image or cfg.resources.image)
    gpu_c = make_components(cfg.resources.gpu_image) if for_cluster else c
    T = cfg.boosting.rounds
    students = keys.students_enabled(cfg)  # student.enabled: false ends the DAG at the experts' evaluation
    specs = keys.run_steps(T, students)
    defaults = task_configs(cfg)

    def plumb(task, name: str):
        task.set_display_name(name)
        if for_cluster:
            spec = specs.get(name)
            k8s.apply(task, cfg.resources, gpu=bool(spec and spec.gpu), module=spec.module if spec else None,
                      lease=True)
            task.set_caching_options(cache and spec is not None)  # start-run/end-run: never from the cache
        return task

    def comp(name: str):
        """The components bound to the image this step runs in (the GPU image for GPU steps)."""
        return gpu_c if specs[name].gpu else c

    def body(run_id, storage_cfg, seed, cf: dict):
        start = None
        if for_cluster:
            start = plumb(c.start_run(run_id=run_id, seed=seed, rounds=T, data_cfg=cf["data"],
                                      experts_cfg=cf["experts"], boosting_cfg=cf["boosting"],
                                      ensemble_cfg=cf["ensemble"], student_cfg=cf["student"], eval_cfg=cf["eval"],
                                      resources_cfg=defaults["resources"], storage_cfg=storage_cfg,
                                      students=students), keys.START_RUN)
        split = plumb(comp(keys.SPLIT_DATA).split_data(data_cfg=cf["data"], weak_cfg=cf["split_weak"], seed=seed,
                                                       run_id=run_id, storage_cfg=storage_cfg), keys.SPLIT_DATA)
        if start is not None:
            split.after(start)
        state = split.outputs["state"]
        single = plumb(comp(keys.TRAIN_SINGLE).train_single(
            experts_cfg=cf["experts"], boosting_cfg=cf["single_boosting"], seed=seed, run_id=run_id,
            storage_cfg=storage_cfg, splits=split.outputs["splits"], state=state, dtype=defaults["dtype"]),
            keys.TRAIN_SINGLE).outputs["expert"]
        for t in range(1, T + 1):
            name = keys.train_expert(t)
            # round 1 may reuse the single expert (boosting.reuse_single, read at run time): it gets it as input
            expert = plumb(comp(name).train_expert(experts_cfg=cf["experts"], boosting_cfg=cf["round_boosting"],
                                                   round_=t, seed=seed, run_id=run_id, storage_cfg=storage_cfg,
                                                   splits=split.outputs["splits"], state=state,
                                                   dtype=defaults["dtype"], **({"single": single} if t == 1 else {})),
                           name)
            name = keys.update_weights(t)
            update = plumb(comp(name).update_weights(boosting_cfg=cf["round_boosting"], round_=t, run_id=run_id,
                                                     storage_cfg=storage_cfg, state=state,
                                                     expert=expert.outputs["expert"]), name)
            state = update.outputs["new_state"]
        evals = {}
        for source in keys.SOURCES if students else ():
            gold = source == "gold"
            name = keys.pseudo_label(source)
            labels = plumb(comp(name).pseudo_label(ensemble_cfg=cf["no_ensemble"] if gold else
                                                   cf["ensemble"] if source == "single" else cf["ensemble_labels"],
                                                   source=source, rounds=0 if gold else T, run_id=run_id,
                                                   storage_cfg=storage_cfg,
                                                   splits=split.outputs["splits"],
                                                   # gold labels need no experts (the state after 0 rounds):
                                                   # the ceiling need not wait, nor rerun for more rounds
                                                   state=split.outputs["state"] if gold else state,
                                                   dtype="float32" if gold else defaults["dtype"],
                                                   **({"single": single} if source == "single" else {})), name)
            name = keys.train_student(source)
            student = plumb(comp(name).train_student(student_cfg=cf["student"], source=source, seed=seed,
                                                     run_id=run_id, storage_cfg=storage_cfg,
                                                     labels=labels.outputs["labels"], dtype=defaults["dtype"]), name)
            name = keys.evaluate(f"student-{source}")
            evals[source] = plumb(comp(name).evaluate_student(eval_cfg=cf["eval"], ensemble_cfg=cf["no_ensemble"],
                                                              source=source, run_id=run_id, storage_cfg=storage_cfg,
                                                              splits=split.outputs["splits"],
                                                              student=student.outputs["student"],
                                                              dtype=defaults["dtype"]), name)
        name = keys.evaluate("experts")
        ev_experts = plumb(comp(name).evaluate_experts(eval_cfg=cf["eval"], ensemble_cfg=cf["ensemble"], rounds=T,
                                                       run_id=run_id, storage_cfg=storage_cfg,
                                                       splits=split.outputs["splits"], state=state, single=single,
                                                       dtype=defaults["dtype"]), name)
        common = dict(eval_cfg=cf["eval"], seed=seed, rounds=T, run_id=run_id, storage_cfg=storage_cfg,
                      eval_experts=ev_experts.outputs["results"])
        if students:
            report = plumb(comp(keys.REPORT).report(**common, eval_single=evals["single"].outputs["results"],
                                                    eval_ensemble=evals["ensemble"].outputs["results"],
                                                    eval_ceiling=evals["gold"].outputs["results"]), keys.REPORT)
        else:
            report = plumb(comp(keys.REPORT).report_experts(**common), keys.REPORT)
        if for_cluster:
            plumb(c.end_run(run_id=run_id, storage_cfg=storage_cfg), keys.END_RUN).after(report)

    desc = f"EnsemW2S weak-to-strong training, {T} boosting rounds"
    storage_j = section_to_json(cfg.storage)
    if runtime_config:
        d = defaults

        @dsl.pipeline(name=PIPELINE_NAME, description=desc)
        def ensemw2s_grid_point(run_id: str, storage_cfg: str = storage_j, seed: int = cfg.seed,
                                data_cfg: str = d["data"], split_weak_cfg: str = d["split_weak"],
                                experts_cfg: str = d["experts"], boosting_cfg: str = d["boosting"],
                                round_boosting_cfg: str = d["round_boosting"], ensemble_cfg: str = d["ensemble"],
                                student_cfg: str = d["student"], eval_cfg: str = d["eval"]):
            body(run_id, storage_cfg, seed, {
                "data": data_cfg, "split_weak": split_weak_cfg, "experts": experts_cfg, "boosting": boosting_cfg,
                "round_boosting": round_boosting_cfg, "ensemble": ensemble_cfg, "student": student_cfg,
                "eval": eval_cfg, "no_ensemble": d["no_ensemble"],
                # a grid point's ensemble section is a run-time string: the ensemble's labels get all of it
                "ensemble_labels": ensemble_cfg, "single_boosting": round_boosting_cfg})

        return ensemw2s_grid_point

    @dsl.pipeline(name=PIPELINE_NAME, description=desc)
    def ensemw2s_pipeline(run_id: str, storage_cfg: str = storage_j, seed: int = cfg.seed):
        body(run_id, storage_cfg, seed, defaults)

    return ensemw2s_pipeline


def compile_pipeline(cfg: Config, output, *, for_cluster: bool = True, cache: bool = False) -> Path:
    """Compile the main pipeline to ``output``; refused (ConfigError) above the spec size limit."""
    from pipelines import limits

    output = Path(output)
    if output.is_dir():
        raise ConfigError(f"-o {output}: is a folder; name the YAML file to write, e.g. -o {output / 'pipeline.yaml'}")
    if output.parent.exists() and not output.parent.is_dir():
        raise ConfigError(f"-o {output}: {output.parent} is not a folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg, for_cluster=for_cluster, cache=cache),
                                package_path=str(output))
    return limits.check_spec(output, what=f"the main pipeline ({cfg.boosting.rounds} boosting rounds)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="compile the EnsemW2S pipeline to KFP IR YAML")
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("-o", "--output", default="pipeline.yaml")
    p.add_argument("--local", action="store_true", help="omit the Kubernetes plumbing")
    args = p.parse_args(argv)

    def go():
        out = compile_pipeline(load_config(args.config, args.overrides), args.output, for_cluster=not args.local)
        print(f"wrote {out}")

    from ensemw2s.errors import call_reporting_user_errors

    return call_reporting_user_errors(go)


if __name__ == "__main__":
    raise SystemExit(main())
