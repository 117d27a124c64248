"""The EnsemW2S DAG.

split_data → (train_expert-r{t} → update_weights-r{t}) for t = 1..T → pseudo_label (ensemble / single / gold)
→ train_student (×3) → evaluate (experts, ×3 students) → report.

T is read from the config at compile time and unrolled; everything else is a runtime value. Each task gets
only its config section, and is named by its step key (:mod:`ensemw2s.steps.keys`): the same name as its
folder in object storage and the ``--step`` of ``ensemw2s rerun-step``. ``for_cluster=True`` adds the Kubernetes plumbing (GPU requests, node selectors,
tolerations, S3 credentials from a Secret) through :mod:`pipelines.k8s`.

Run as a script to compile: ``python pipelines/ensemw2s.py --config configs/default.yaml -o pipeline.yaml``.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional

from kfp import compiler, dsl

from ensemw2s.config import Config, load_config, section_to_json
from ensemw2s.steps import keys

PIPELINE_NAME = "ensemw2s"


def build_pipeline(cfg: Config, *, for_cluster: bool = False, image: Optional[str] = None):
    """A ``@dsl.pipeline`` function for ``cfg`` (T rounds unrolled)."""
    from components.steps import make_components

    from pipelines import k8s

    c = make_components(image or cfg.resources.image)
    gpu_c = make_components(cfg.resources.gpu_image) if for_cluster else c
    T = cfg.boosting.rounds
    data_j, experts_j = section_to_json(cfg.data), section_to_json(cfg.experts)
    boosting_j, ens_j = section_to_json(cfg.boosting), section_to_json(cfg.ensemble)
    student_j, eval_j = section_to_json(cfg.student), section_to_json(cfg.eval)

    def plumb(task, name: str, gpu: bool):
        task.set_display_name(name)
        if for_cluster:
            k8s.apply(task, cfg.resources, gpu=gpu)
        return task

    @dsl.pipeline(name=PIPELINE_NAME, description=f"EnsemW2S weak-to-strong training, {T} boosting rounds")
    def ensemw2s_pipeline(run_id: str, storage_cfg: str = section_to_json(cfg.storage), seed: int = cfg.seed):
        split = plumb(c.split_data(data_cfg=data_j, weak_cfg=experts_j, seed=seed, run_id=run_id,
                                   storage_cfg=storage_cfg), keys.SPLIT_DATA, gpu=False)
        state = split.outputs["state"]
        for t in range(1, T + 1):
            expert = plumb(gpu_c.train_expert(experts_cfg=experts_j, boosting_cfg=boosting_j, round_=t, seed=seed,
                                              run_id=run_id, storage_cfg=storage_cfg,
                                              splits=split.outputs["splits"], state=state),
                           keys.train_expert(t), gpu=True)
            update = plumb(c.update_weights(boosting_cfg=boosting_j, round_=t, run_id=run_id,
                                            storage_cfg=storage_cfg, state=state,
                                            expert=expert.outputs["expert"]),
                           keys.update_weights(t), gpu=False)
            state = update.outputs["new_state"]
        evals = {}
        for source in keys.SOURCES:
            labels = plumb(gpu_c.pseudo_label(ensemble_cfg=ens_j, source=source, rounds=T, run_id=run_id,
                                              storage_cfg=storage_cfg, splits=split.outputs["splits"],
                                              # gold labels need no experts: the ceiling need not wait
                                              state=split.outputs["state"] if source == "gold" else state),
                           keys.pseudo_label(source), gpu=source != "gold")
            student = plumb(gpu_c.train_student(student_cfg=student_j, source=source, seed=seed, run_id=run_id,
                                                storage_cfg=storage_cfg, labels=labels.outputs["labels"]),
                            keys.train_student(source), gpu=True)
            evals[source] = plumb(gpu_c.evaluate_student(eval_cfg=eval_j, ensemble_cfg=ens_j, source=source,
                                                         run_id=run_id, storage_cfg=storage_cfg,
                                                         splits=split.outputs["splits"],
                                                         student=student.outputs["student"]),
                                  keys.evaluate(f"student-{source}"), gpu=True)
        ev_experts = plumb(gpu_c.evaluate_experts(eval_cfg=eval_j, ensemble_cfg=ens_j, rounds=T, run_id=run_id,
                                                  storage_cfg=storage_cfg, splits=split.outputs["splits"],
                                                  state=state),
                           keys.evaluate("experts"), gpu=True)
        plumb(c.report(eval_cfg=eval_j, seed=seed, rounds=T, run_id=run_id, storage_cfg=storage_cfg,
                       eval_experts=ev_experts.outputs["results"], eval_single=evals["single"].outputs["results"],
                       eval_ensemble=evals["ensemble"].outputs["results"],
                       eval_ceiling=evals["gold"].outputs["results"]),
              keys.REPORT, gpu=False)

    return ensemw2s_pipeline


def compile_pipeline(cfg: Config, output, *, for_cluster: bool = True) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg, for_cluster=for_cluster), package_path=str(output))
    return output


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="compile the EnsemW2S pipeline to KFP IR YAML")
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("-o", "--output", default="pipeline.yaml")
    p.add_argument("--local", action="store_true", help="omit the Kubernetes plumbing")
    args = p.parse_args(argv)
    out = compile_pipeline(load_config(args.config, args.overrides), args.output, for_cluster=not args.local)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
