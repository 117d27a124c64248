"""One table of step keys: the name of every step execution of a run.

A key names the KFP task (its display name), the step's folder in object storage (``runs/<run_id>/<key>/``),
the producer a downstream step fetches its inputs from, and the ``--step`` of ``ensemw2s rerun-step``.
:func:`run_steps` lists them for a run of T rounds in DAG order, with how to run each one alone.
"""
from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("ensemble", "single", "gold")  # where a student's labels come from: one student per source
EVAL_TARGETS = ("experts",) + tuple(f"student-{s}" for s in SOURCES)
# the model name a student is reported under, by label source
STUDENT_MODELS = {"single": "student_single", "ensemble": "student_ensemble", "gold": "ceiling"}
SPLIT_DATA = "split_data"
# the single-weak-expert baseline: the weak model fine-tuned on ALL the labelled easy data with equal weights
# (the usual weak-to-strong baseline), trained once per run beside the boosting rounds
TRAIN_SINGLE = "train_single"
REPORT = "report"
RUN_SUMMARY = "run-summary"  # not a step: the run's config, summary and lease, stored beside the steps
# tasks of the pipeline that are not steps (no outputs of their own in storage): the first one takes the run's
# lease and stores its config (runs/<run_id>/run-summary/), the last one releases the lease
START_RUN = "start-run"
END_RUN = "end-run"
# the step modules that run on a GPU (in resources.gpu_image, with the accelerator); gold labels need no model
GPU_MODULES = ("train_expert", "pseudo_label", "train_student", "evaluate")  # train_single: train_expert --single
# at most this many GPU steps of one run can run at once (after boosting: the ensemble and single labels, the
# expert evaluation and the gold branch's student)
MAX_PARALLEL_GPU_STEPS = len(SOURCES) + 1


def train_expert(round_: int) -> str:
    return f"train_expert-r{int(round_)}"


def update_weights(round_: int) -> str:
    return f"update_weights-r{int(round_)}"


def state_after(round_: int) -> str:
    """The step whose ``state`` output is the boosting state after ``round_`` rounds (0: the initial one)."""
    return SPLIT_DATA if round_ == 0 else update_weights(round_)


def pseudo_label(source: str) -> str:
    return f"pseudo_label-{source}"


def train_student(source: str) -> str:
    return f"train_student-{source}"


def evaluate(target: str) -> str:
    return f"evaluate-{target}"


def label_state(source: str, rounds: int) -> str:
    """The boosting state a label source reads: gold labels need no experts, so they read the initial one."""
    return state_after(0 if source == "gold" else rounds)


@dataclass(frozen=True)
class StepRun:
    """How to run one step alone (``python -m ensemw2s.steps.<module>``): its fixed flags, each input flag
    with the (producer key, output) it reads, and each output flag with (output, summary JSON inside it);
    ``gpu``: it runs on a GPU (the CUDA image and the accelerator, on the cluster and in ``rerun-step
    --docker``)."""

    key: str
    module: str
    fixed: tuple = ()
    inputs: tuple = ()  # ((flag, producer key, output), ...)
    outputs: tuple = ()  # ((flag, output, summary file), ...)

    @property
    def gpu(self) -> bool:
        return self.module in GPU_MODULES and self.key != pseudo_label("gold")


def eval_targets(students: bool = True) -> tuple[str, ...]:
    """The evaluate targets of a run: the experts, and the three students unless ``student.enabled`` is false."""
    return EVAL_TARGETS if students else ("experts",)


def students_enabled(cfg) -> bool:
    """``student.enabled`` of a Config or of its plain dict (a stored run's config; absent = true)."""
    if isinstance(cfg, dict):
        return bool((cfg.get("student") or {}).get("enabled", True))
    return bool(getattr(cfg.student, "enabled", True))


def run_steps(rounds: int, students: bool = True) -> dict[str, StepRun]:
    """Every step of a run of ``rounds`` boosting rounds, in DAG order; ``students=False``
    (``student.enabled: false``): without the label, student and student-evaluation steps."""
    T = int(rounds)
    steps = [StepRun(SPLIT_DATA, "split_data", outputs=(("--splits", "splits", "split.json"),
                                                        ("--state", "state", "state.json")))]
    splits = ("--splits", SPLIT_DATA, "splits")
    single = ("--single-expert", TRAIN_SINGLE, "expert")
    steps.append(StepRun(TRAIN_SINGLE, "train_expert", ("--single",),
                         (splits, ("--state", SPLIT_DATA, "state")), (("--expert", "expert", "expert.json"),)))
    for t in range(1, T + 1):
        # round 1 can reuse the single expert (boosting.reuse_single): its only extra input
        steps.append(StepRun(train_expert(t), "train_expert", ("--round", t),
                             (splits, ("--state", state_after(t - 1), "state")) + ((single,) if t == 1 else ()),
                             (("--expert", "expert", "expert.json"),)))
        steps.append(StepRun(update_weights(t), "update_weights", ("--round", t),
                             (("--state", state_after(t - 1), "state"), ("--expert", train_expert(t), "expert")),
                             (("--out-state", "state", "state.json"),)))
    for s in SOURCES if students else ():
        steps.append(StepRun(pseudo_label(s), "pseudo_label", ("--source", s, "--rounds", T),
                             (splits, ("--state", label_state(s, T), "state")) + ((single,) if s == "single" else ()),
                             (("--labels", "labels", "labels.json"),)))
        steps.append(StepRun(train_student(s), "train_student", ("--source", s),
                             (("--labels", pseudo_label(s), "labels"),), (("--student", "student", "student.json"),)))
    steps.append(StepRun(evaluate("experts"), "evaluate", ("--target", "experts"),
                         (splits, ("--state", state_after(T), "state"), single), (("--out", "eval", "eval.json"),)))
    for s in SOURCES if students else ():
        steps.append(StepRun(evaluate(f"student-{s}"), "evaluate", ("--target", f"student-{s}"),
                             (splits, ("--student", train_student(s), "student")),
                             (("--out", "eval", "eval.json"),)))
    steps.append(StepRun(REPORT, "report", (),
                         tuple((f"--eval-{t}", evaluate(t), "eval") for t in eval_targets(students)),
                         (("--out", "report", "metrics.json"),)))
    return {s.key: s for s in steps}
