"""KFP v2 lightweight components: thin wrappers that call ``ensemw2s.steps.<step>.run``.

Each component receives only its own config section(s) as JSON strings (so KFP's cache key changes only when
a setting that matters to that step changes), plus the run id and the storage section. The same definitions
run locally (``kfp.local.SubprocessRunner(use_venv=False)``) and on a cluster inside the project image;
:func:`make_components` binds them to an image at compile time.
"""

from types import SimpleNamespace

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output


def split_data(data_cfg: str, weak_cfg: str, seed: int, run_id: str, storage_cfg: str,
               splits: Output[Dataset], state: Output[Dataset]):
    from ensemw2s.config import DataConfig, ModelSection, StorageConfig, section_from_json
    from ensemw2s.steps import split_data as step

    step.run(section_from_json(DataConfig, data_cfg, "data"), section_from_json(ModelSection, weak_cfg, "experts"),
             seed=seed, splits_dir=splits.path, state_dir=state.path, run_id=run_id or None,
             storage=section_from_json(StorageConfig, storage_cfg, "storage"))


def train_expert(experts_cfg: str, boosting_cfg: str, round_: int, seed: int, run_id: str, storage_cfg: str,
                 splits: Input[Dataset], state: Input[Dataset], expert: Output[Model]):
    from ensemw2s.config import BoostingConfig, ModelSection, StorageConfig, section_from_json
    from ensemw2s.steps import train_expert as step

    step.run(section_from_json(ModelSection, experts_cfg, "experts"),
             section_from_json(BoostingConfig, boosting_cfg, "boosting"), round_=round_, seed=seed,
             splits_dir=splits.path, state_dir=state.path, expert_dir=expert.path, run_id=run_id or None,
             storage=section_from_json(StorageConfig, storage_cfg, "storage"))


def update_weights(boosting_cfg: str, round_: int, run_id: str, storage_cfg: str, state: Input[Dataset],
                   expert: Input[Model], new_state: Output[Dataset]):
    from ensemw2s.config import BoostingConfig, StorageConfig, section_from_json
    from ensemw2s.steps import update_weights as step

    step.run(section_from_json(BoostingConfig, boosting_cfg, "boosting"), round_=round_, state_dir=state.path,
             expert_dir=expert.path, out_state_dir=new_state.path, run_id=run_id or None,
             storage=section_from_json(StorageConfig, storage_cfg, "storage"))


def pseudo_label(ensemble_cfg: str, source: str, rounds: int, run_id: str, storage_cfg: str,
                 splits: Input[Dataset], state: Input[Dataset], labels: Output[Dataset]):
    from ensemw2s.config import EnsembleConfig, StorageConfig, section_from_json
    from ensemw2s.steps import pseudo_label as step

    step.run(section_from_json(EnsembleConfig, ensemble_cfg, "ensemble"), source=source, splits_dir=splits.path,
             state_dir=state.path, labels_dir=labels.path, rounds=rounds, run_id=run_id or None,
             storage=section_from_json(StorageConfig, storage_cfg, "storage"))


def train_student(student_cfg: str, source: str, seed: int, run_id: str, storage_cfg: str,
                  labels: Input[Dataset], student: Output[Model]):
    from ensemw2s.config import ModelSection, StorageConfig, section_from_json
    from ensemw2s.steps import train_student as step

    step.run(section_from_json(ModelSection, student_cfg, "student"), source=source, seed=seed,
             labels_dir=labels.path, student_dir=student.path, run_id=run_id or None,
             storage=section_from_json(StorageConfig, storage_cfg, "storage"))


def evaluate_experts(eval_cfg: str, ensemble_cfg: str, rounds: int, run_id: str, storage_cfg: str,
                     splits: Input[Dataset], state: Input[Dataset], results: Output[Dataset]):
    from ensemw2s.config import EnsembleConfig, EvalConfig, StorageConfig, section_from_json
    from ensemw2s.steps import evaluate as step

    step.run(section_from_json(EvalConfig, eval_cfg, "eval"), section_from_json(EnsembleConfig, ensemble_cfg,
             "ensemble"), target="experts", splits_dir=splits.path, state_dir=state.path, out_dir=results.path,
             rounds=rounds, run_id=run_id or None, storage=section_from_json(StorageConfig, storage_cfg, "storage"))


def evaluate_student(eval_cfg: str, ensemble_cfg: str, source: str, run_id: str, storage_cfg: str,
                     splits: Input[Dataset], student: Input[Model], results: Output[Dataset]):
    from ensemw2s.config import EnsembleConfig, EvalConfig, StorageConfig, section_from_json
    from ensemw2s.steps import evaluate as step

    step.run(section_from_json(EvalConfig, eval_cfg, "eval"), section_from_json(EnsembleConfig, ensemble_cfg,
             "ensemble"), target=f"student-{source}", splits_dir=splits.path, student_dir=student.path,
             out_dir=results.path, run_id=run_id or None,
             storage=section_from_json(StorageConfig, storage_cfg, "storage"))


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


STEP_FUNCTIONS = (split_data, train_expert, update_weights, pseudo_label, train_student, evaluate_experts,
                  evaluate_student, report)


def make_components(image: str) -> SimpleNamespace:
    """Bind every step function to ``image`` as a KFP component (no pip install at run time)."""
    return SimpleNamespace(**{
        fn.__name__: dsl.component(base_image=image, install_kfp_package=False)(fn) for fn in STEP_FUNCTIONS
    })
