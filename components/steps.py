"""KFP v2 lightweight components: thin wrappers that call ``ensemw2s.steps.<step>.run``.

Each component receives only the config it reads, as JSON strings (so KFP's cache key changes only when a
setting that matters to that step changes: tests/pipeline/test_compile.py checks it), plus the run id and the
storage section. The object store is the one artifact store: a step writes its files to a work folder, uploads
them to ``runs/<run_id>/<step>/<output>/`` and its KFP output artifact gets only a pointer with the S3 URI in
its metadata (``ensemw2s.steps.stepio.kfp_point``; docs/cluster.md, "One artifact store"). ``start_run`` /
``end_run`` open and close a run on a cluster (lease, stored config). The same definitions run locally
(``kfp.local.SubprocessRunner(use_venv=False)``) and on a cluster inside the project image;
:func:`make_components` binds them to an image at compile time.
"""

from types import SimpleNamespace

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output


def start_run(run_id: str, seed: int, rounds: int, data_cfg: str, experts_cfg: str, boosting_cfg: str,
              ensemble_cfg: str, student_cfg: str, eval_cfg: str, resources_cfg: str, storage_cfg: str,
              students: bool = True):
    """A cluster run's first task: check the run's config against the DAG it was compiled into (``rounds``,
    ``students``: both change the steps), take the run id's lease for this KFP run (a second live run of the run
    id fails here) and store the run's config at runs/<run_id>/run-summary/config.json (for rerun-step)."""
    import json

    from ensemw2s import lease
    from ensemw2s.config import Config, StorageConfig, from_dict, section_from_json, to_dict
    from ensemw2s.errors import ConfigError
    from ensemw2s.steps.keys import RUN_SUMMARY
    from ensemw2s.storage import Store, validate_name

    validate_name("run id", run_id)
    storage = section_from_json(StorageConfig, storage_cfg, "storage")
    sections = {"data": data_cfg, "experts": experts_cfg, "boosting": boosting_cfg, "ensemble": ensemble_cfg,
                "student": student_cfg, "eval": eval_cfg, "resources": resources_cfg}
    cfg = from_dict(Config, {"seed": seed, "storage": to_dict(storage),
                             **{k: json.loads(v) for k, v in sections.items()}}).validate()
    if cfg.boosting.rounds != rounds:
        raise ConfigError(f"boosting.rounds: {cfg.boosting.rounds} but this pipeline was compiled for {rounds} "
                          "rounds (rounds change the DAG: compile again with the new value)")
    if cfg.student.enabled != students:
        raise ConfigError(f"student.enabled: {str(cfg.student.enabled).lower()} but this pipeline was compiled "
                          f"{'with' if students else 'without'} the student steps (student.enabled changes the DAG: "
                          "compile again with the new value)")
    store = Store.from_config(storage)
    store.check()
    holder = lease.cluster_holder()
    if holder is not None:
        lease.Lease(store, run_id, holder, ttl=lease.CLUSTER_TTL).acquire()
    store.put_json(run_id, RUN_SUMMARY, "config.json", to_dict(cfg))
    print(f"run {run_id}: config stored at {store.uri(run_id, RUN_SUMMARY, 'config.json')}"
          + (f", lease held by {holder}" if holder else ""), flush=True)


def end_run(run_id: str, storage_cfg: str):
    """A cluster run's last task: release the run id's lease (a failed run's lease expires instead)."""
    from ensemw2s import lease
    from ensemw2s.config import StorageConfig, section_from_json
    from ensemw2s.storage import Store

    store = Store.from_config(section_from_json(StorageConfig, storage_cfg, "storage"))
    released = lease.end_run(store, run_id)
    print(f"run {run_id}: {'lease released' if released else 'no lease of this run to release'}", flush=True)


def split_data(data_cfg: str, weak_cfg: str, seed: int, run_id: str, storage_cfg: str,
               splits: Output[Dataset], state: Output[Dataset]):
    from ensemw2s.config import DataConfig, ModelSection, StorageConfig, section_from_json
    from ensemw2s.steps import keys
    from ensemw2s.steps import split_data as step
    from ensemw2s.steps.stepio import kfp_point, kfp_work_dir

    storage = section_from_json(StorageConfig, storage_cfg, "storage")
    work = {a: kfp_work_dir(o.path, run_id, keys.SPLIT_DATA, a) for a, o in (("splits", splits), ("state", state))}
    step.run(section_from_json(DataConfig, data_cfg, "data"), section_from_json(ModelSection, weak_cfg, "experts"),
             seed=seed, splits_dir=work["splits"], state_dir=work["state"], run_id=run_id or None, storage=storage)
    for a, o in (("splits", splits), ("state", state)):
        kfp_point(o, run_id, storage, keys.SPLIT_DATA, a, work[a])


def train_expert(experts_cfg: str, boosting_cfg: str, round_: int, seed: int, run_id: str, storage_cfg: str,
                 splits: Input[Dataset], state: Input[Dataset], expert: Output[Model], dtype: str = "float32",
                 single: Input[Model] = None):
    from ensemw2s.config import BoostingConfig, ModelSection, StorageConfig, section_from_json
    from ensemw2s.steps import keys
    from ensemw2s.steps import train_expert as step
    from ensemw2s.steps.stepio import kfp_point, kfp_work_dir

    storage = section_from_json(StorageConfig, storage_cfg, "storage")
    work = kfp_work_dir(expert.path, run_id, keys.train_expert(round_), "expert")
    step.run(section_from_json(ModelSection, experts_cfg, "experts"),
             section_from_json(BoostingConfig, boosting_cfg, "boosting"), round_=round_, seed=seed,
             splits_dir=splits.path, state_dir=state.path, expert_dir=work, run_id=run_id or None, storage=storage,
             dtype=dtype, single_dir=single.path if single is not None else None)
    kfp_point(expert, run_id, storage, keys.train_expert(round_), "expert", work)


def train_single(experts_cfg: str, boosting_cfg: str, seed: int, run_id: str, storage_cfg: str,
                 splits: Input[Dataset], state: Input[Dataset], expert: Output[Model], dtype: str = "float32"):
    """The single-weak-expert baseline: the weak model fine-tuned on all of easy_train (step train_single)."""
    from ensemw2s.config import BoostingConfig, ModelSection, StorageConfig, section_from_json
    from ensemw2s.steps import keys
    from ensemw2s.steps import train_expert as step
    from ensemw2s.steps.stepio import kfp_point, kfp_work_dir

    storage = section_from_json(StorageConfig, storage_cfg, "storage")
    work = kfp_work_dir(expert.path, run_id, keys.TRAIN_SINGLE, "expert")
    step.run(section_from_json(ModelSection, experts_cfg, "experts"),
             section_from_json(BoostingConfig, boosting_cfg, "boosting"), round_=1, seed=seed,
             splits_dir=splits.path, state_dir=state.path, expert_dir=work, run_id=run_id or None, storage=storage,
             dtype=dtype, single=True)
    kfp_point(expert, run_id, storage, keys.TRAIN_SINGLE, "expert", work)


def update_weights(boosting_cfg: str, round_: int, run_id: str, storage_cfg: str, state: Input[Dataset],
                   expert: Input[Model], new_state: Output[Dataset]):
    import json
    from pathlib import Path

    from ensemw2s.config import BoostingConfig, StorageConfig, section_from_json
    from ensemw2s.steps import keys
    from ensemw2s.steps import update_weights as step
    from ensemw2s.steps.stepio import kfp_point, kfp_work_dir

    storage = section_from_json(StorageConfig, storage_cfg, "storage")
    work = kfp_work_dir(new_state.path, run_id, keys.update_weights(round_), "state")
    step.run(section_from_json(BoostingConfig, boosting_cfg, "boosting"), round_=round_, state_dir=state.path,
             expert_dir=expert.path, out_state_dir=work, run_id=run_id or None, storage=storage)
    # lineage: the experts every later step reads through this state, as stored artifacts
    experts = json.loads((Path(work) / "state.json").read_text()).get("experts", [])
    kfp_point(new_state, run_id, storage, keys.update_weights(round_), "state", work,
              extra={"experts": [f"s3://{storage.bucket}/{storage.prefix}/{run_id}/{e['step']}/{e['output']}/"
                                 for e in experts if "step" in e]})


def pseudo_label(ensemble_cfg: str, source: str, rounds: int, run_id: str, storage_cfg: str,
                 splits: Input[Dataset], state: Input[Dataset], labels: Output[Dataset], dtype: str = "float32",
                 single: Input[Model] = None):
    from ensemw2s.config import EnsembleConfig, StorageConfig, section_from_json
    from ensemw2s.steps import keys
    from ensemw2s.steps import pseudo_label as step
    from ensemw2s.steps.stepio import kfp_point, kfp_work_dir

    storage = section_from_json(StorageConfig, storage_cfg, "storage")
    work = kfp_work_dir(labels.path, run_id, keys.pseudo_label(source), "labels")
    # gold labels read no ensemble setting: the pipeline passes "{}" so its cache key ignores that section
    ens = section_from_json(EnsembleConfig, ensemble_cfg, "ensemble")
    step.run(ens, source=source, splits_dir=splits.path, state_dir=state.path, labels_dir=work, rounds=rounds,
             run_id=run_id or None, storage=storage, dtype=dtype,
             single_dir=single.path if single is not None else None)
    kfp_point(labels, run_id, storage, keys.pseudo_label(source), "labels", work)


def train_student(student_cfg: str, source: str, seed: int, run_id: str, storage_cfg: str,
                  labels: Input[Dataset], student: Output[Model], dtype: str = "float32"):
    from ensemw2s.config import StorageConfig, StudentSection, section_from_json
    from ensemw2s.steps import keys
    from ensemw2s.steps import train_student as step
    from ensemw2s.steps.stepio import kfp_point, kfp_work_dir

    storage = section_from_json(StorageConfig, storage_cfg, "storage")
    work = kfp_work_dir(student.path, run_id, keys.train_student(source), "student")
    step.run(section_from_json(StudentSection, student_cfg, "student"), source=source, seed=seed,
             labels_dir=labels.path, student_dir=work, run_id=run_id or None, storage=storage, dtype=dtype)
    kfp_point(student, run_id, storage, keys.train_student(source), "student", work)


def evaluate_experts(eval_cfg: str, ensemble_cfg: str, rounds: int, run_id: str, storage_cfg: str,
                     splits: Input[Dataset], state: Input[Dataset], single: Input[Model], results: Output[Dataset],
                     dtype: str = "float32"):
    from ensemw2s.config import EnsembleConfig, EvalConfig, StorageConfig, section_from_json
    from ensemw2s.steps import evaluate as step
    from ensemw2s.steps import keys
    from ensemw2s.steps.stepio import kfp_point, kfp_work_dir

    storage = section_from_json(StorageConfig, storage_cfg, "storage")
    work = kfp_work_dir(results.path, run_id, keys.evaluate("experts"), "eval")
    step.run(section_from_json(EvalConfig, eval_cfg, "eval"), section_from_json(EnsembleConfig, ensemble_cfg,
             "ensemble"), target="experts", splits_dir=splits.path, state_dir=state.path, out_dir=work,
             rounds=rounds, run_id=run_id or None, storage=storage, dtype=dtype, single_dir=single.path)
    kfp_point(results, run_id, storage, keys.evaluate("experts"), "eval", work)


def evaluate_student(eval_cfg: str, ensemble_cfg: str, source: str, run_id: str, storage_cfg: str,
                     splits: Input[Dataset], student: Input[Model], results: Output[Dataset],
                     dtype: str = "float32"):
    from ensemw2s.config import EnsembleConfig, EvalConfig, StorageConfig, section_from_json
    from ensemw2s.steps import evaluate as step
    from ensemw2s.steps import keys
    from ensemw2s.steps.stepio import kfp_point, kfp_work_dir

    storage = section_from_json(StorageConfig, storage_cfg, "storage")
    work = kfp_work_dir(results.path, run_id, keys.evaluate(f"student-{source}"), "eval")
    step.run(section_from_json(EvalConfig, eval_cfg, "eval"), section_from_json(EnsembleConfig, ensemble_cfg,
             "ensemble"), target=f"student-{source}", splits_dir=splits.path, student_dir=student.path,
             out_dir=work, run_id=run_id or None, storage=storage, dtype=dtype)
    kfp_point(results, run_id, storage, keys.evaluate(f"student-{source}"), "eval", work)


def report(eval_cfg: str, seed: int, rounds: int, run_id: str, storage_cfg: str,
           eval_experts: Input[Dataset], eval_single: Input[Dataset], eval_ensemble: Input[Dataset],
           eval_ceiling: Input[Dataset], results: Output[Dataset], metrics: Output[Metrics],
           summary: Output[Markdown], summary_html: Output[HTML]):
    import shutil
    from pathlib import Path

    from ensemw2s.config import EvalConfig, StorageConfig, section_from_json
    from ensemw2s.steps import report as step

    m = step.run(section_from_json(EvalConfig, eval_cfg, "eval"),
                 eval_dirs={"experts": eval_experts.path, "student-single": eval_single.path,
                            "student-ensemble": eval_ensemble.path, "student-gold": eval_ceiling.path},
                 out_dir=results.path, seed=seed, rounds=rounds, run_id=run_id or None,
                 storage=section_from_json(StorageConfig, storage_cfg, "storage"))
    for k, v in m.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics.log_metric(k, float(v))
    shutil.copyfile(Path(results.path) / "report.md", summary.path)
    shutil.copyfile(Path(results.path) / "report.html", summary_html.path)


def report_experts(eval_cfg: str, seed: int, rounds: int, run_id: str, storage_cfg: str,
                   eval_experts: Input[Dataset], results: Output[Dataset], metrics: Output[Metrics],
                   summary: Output[Markdown], summary_html: Output[HTML]):
    """The report of a run without the student stage (``student.enabled: false``): the experts only."""
    import shutil
    from pathlib import Path

    from ensemw2s.config import EvalConfig, StorageConfig, section_from_json
    from ensemw2s.steps import report as step

    m = step.run(section_from_json(EvalConfig, eval_cfg, "eval"), eval_dirs={"experts": eval_experts.path},
                 out_dir=results.path, seed=seed, rounds=rounds, run_id=run_id or None,
                 storage=section_from_json(StorageConfig, storage_cfg, "storage"), students=False)
    for k, v in m.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics.log_metric(k, float(v))
    shutil.copyfile(Path(results.path) / "report.md", summary.path)
    shutil.copyfile(Path(results.path) / "report.html", summary_html.path)


STEP_FUNCTIONS = (start_run, end_run, split_data, train_single, train_expert, update_weights, pseudo_label, train_student,
                  evaluate_experts, evaluate_student, report, report_experts)


def make_components(image: str) -> SimpleNamespace:
    """Bind every step function to ``image`` as a KFP component (no pip install at run time)."""
    return SimpleNamespace(**{
        fn.__name__: dsl.component(base_image=image, install_kfp_package=False)(fn) for fn in STEP_FUNCTIONS
    })
