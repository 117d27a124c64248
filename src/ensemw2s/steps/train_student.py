"""train_student: SFT of the strong model (LoRA by default) on the hard pool's labels.

``--source ensemble|single|gold`` names whose labels (from pseudo_label) it learns from: the EnsemW2S
student, the single-expert baseline student, or the gold-trained ceiling. Output ``student/``: the model
and ``student.json`` (source, producer, training stats). ``dtype``: ``resources.dtype``
(:func:`ensemw2s.training.sft_precision`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ensemw2s.config import ModelSection, StorageConfig, config_hash
from ensemw2s.steps import keys
from ensemw2s.steps.stepio import StepIO, base_parser, read_json, step_main, write_json

STEP = "train_student"


def build_parser():
    p = base_parser(STEP, __doc__.splitlines()[0])
    p.add_argument("--source", choices=keys.SOURCES, required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--student", required=True, help="output folder")
    return p


def run(student: ModelSection, *, source: str, seed: int, labels_dir: Path, student_dir: Path,
        run_id: Optional[str] = None, storage: Optional[StorageConfig] = None, resume: bool = True,
        dtype: str = "float32") -> dict:
    from ensemw2s.data import read_jsonl
    from ensemw2s.modeling import dtype_key, load_tokenizer, resolve_model_path
    from ensemw2s.training import encode_rows, train_sft

    key = keys.train_student(source)
    student_dir = Path(student_dir)
    io = StepIO(key, run_id=run_id, storage=storage, resume=resume,
                config_hash=config_hash({"student": student, "source": source, "seed": seed, **dtype_key(dtype)}),
                inputs=((keys.pseudo_label(source), "labels"),))
    if io.restore({"student": student_dir}):
        return read_json(student_dir / "student.json")
    labels_dir = io.fetch(labels_dir, keys.pseudo_label(source), "labels")
    rows = read_jsonl(labels_dir / "labels.jsonl", validate=False)
    labels_meta = read_json(labels_dir / "labels.json")
    tok = load_tokenizer(resolve_model_path(student.model))
    enc = encode_rows(tok, rows, student.train.max_length, answer_key="pseudo_answer")
    stats = train_sft(student.model, student, enc, token_weights=None, seed=seed * 1000 + 100,
                      out_dir=student_dir / "model", desc=f"student<-{source}", dtype=dtype)
    meta = {"source": source, "producer": labels_meta["producer"], "base_model": student.model,
            "labels_accuracy_vs_gold": labels_meta["accuracy_vs_gold"], "lora": student.lora.enabled, **stats}
    write_json(student_dir / "student.json", meta)
    io.publish({"student": student_dir},
               message=f"{stats['rows']} rows, {stats['steps']} steps, loss {stats['train_loss']:.3f}, "
                       f"{stats['train_seconds']:.0f} s")
    return meta


def main(argv=None) -> int:
    return step_main(build_parser(), argv, lambda a, cfg, **io: run(
        cfg.student, source=a.source, seed=cfg.seed, labels_dir=Path(a.labels), student_dir=Path(a.student),
        dtype=cfg.resources.dtype, **io))


if __name__ == "__main__":
    raise SystemExit(main())
