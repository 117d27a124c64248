"""split_data: easy/hard splits, and the boosting state for round 1.

Outputs
- ``splits/``: ``easy_train|easy_val|easy_test|hard_pool|hard_test.jsonl`` and ``split.json`` (sizes, sources).
- ``state/``: ``weights.jsonl`` (``{id, weights, base_wrong}``: D_1 = 1/n per answer token, and whether the
  un-fine-tuned weak base model's teacher-forced argmax is wrong on that token — the ``prior`` alpha rule
  needs it every round, and the base never changes) and ``state.json`` (round 1, no experts yet).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ensemw2s.config import DataConfig, ModelSection, StorageConfig, config_hash
from ensemw2s.steps import keys
from ensemw2s.steps.stepio import StepIO, base_parser, step_main, write_json

STEP = keys.SPLIT_DATA


def build_parser():
    p = base_parser(STEP, __doc__.splitlines()[0])
    p.add_argument("--splits", required=True, help="output folder for the split JSONL files")
    p.add_argument("--state", required=True, help="output folder for the round-1 boosting state")
    return p


def _model_difficulty(rows: list[dict], data: DataConfig, weak: ModelSection, seed: int):
    """Fill ``difficulty`` from the weak base model: zero-shot mean answer-token loss (``model_loss``), or
    k-fold cross-fitted loss of the weak model fine-tuned on the other folds (``crossfit``).
    Returns the loaded base (model, tokenizer) when it is still the un-fine-tuned one, else None."""
    import tempfile

    import numpy as np

    from ensemw2s.data import shuffled
    from ensemw2s.modeling import load_causal_lm, load_saved
    from ensemw2s.training import encode_rows, teacher_forced, train_sft

    def score(model, tok, subset):
        res = teacher_forced(model, tok, encode_rows(tok, subset, weak.train.max_length), desc="difficulty")
        for r in subset:
            r["difficulty"] = float(-np.mean(res[r["id"]]["logprob"]))

    if data.difficulty == "model_loss":
        model, tok = load_causal_lm(weak.model)
        score(model, tok, rows)
        return model, tok
    order = shuffled(rows, seed + 7)
    folds = [order[k:: data.crossfit_folds] for k in range(data.crossfit_folds)]
    _, tok = load_causal_lm(weak.model)
    for k, held in enumerate(folds):
        train = [r for j, f in enumerate(folds) if j != k for r in f]
        with tempfile.TemporaryDirectory(prefix="ensemw2s-crossfit-") as tmp:
            train_sft(weak.model, weak, encode_rows(tok, train, weak.train.max_length), token_weights=None,
                      seed=seed + k, out_dir=Path(tmp) / "m", desc=f"crossfit {k + 1}/{data.crossfit_folds}")
            model, tok = load_saved(Path(tmp) / "m")
            score(model, tok, held)
    return None


def run(data: DataConfig, weak: ModelSection, *, seed: int, splits_dir: Path, state_dir: Path,
        run_id: Optional[str] = None, storage: Optional[StorageConfig] = None, resume: bool = True) -> dict:
    from ensemw2s import boosting
    from ensemw2s.assets import DATASETS, load_side
    from ensemw2s.data import needs_model_difficulty, split_rows, write_jsonl
    from ensemw2s.modeling import load_causal_lm, tokenizer_signature
    from ensemw2s.training import encode_rows, teacher_forced

    splits_dir, state_dir = Path(splits_dir), Path(state_dir)
    # crossfit difficulty fine-tunes weak models on folds: then the whole experts section is part of the key
    # (what the pipeline passes this task, ensemw2s.steps.stepio.task_configs)
    crossfit = needs_model_difficulty(data) and data.difficulty == "crossfit"
    io = StepIO(STEP, run_id=run_id, storage=storage, resume=resume,
                config_hash=config_hash({"data": data, "weak_model": weak.model, "max_length": weak.train.max_length,
                                         "seed": seed, **({"crossfit_experts": weak} if crossfit else {})}))
    outputs = {"splits": splits_dir, "state": state_dir}
    if io.restore(outputs):
        return {}
    from ensemw2s import assets

    assets.resolve_model(weak.model)  # an unknown model name fails here, before the data are loaded
    dropped: dict = {}  # rows left out by reason (too many options, options that cannot be scored)
    easy_rows = load_side(data, "easy", dropped)
    hard_rows = None if data.easy == data.hard else load_side(data, "hard", dropped)
    loaded = _model_difficulty(easy_rows, data, weak, seed) if needs_model_difficulty(data) else None
    splits = split_rows(data, easy_rows, hard_rows, seed)
    if data.prompt != "mc":  # the prompt form travels with the rows (every step formats prompts from rows)
        splits = {k: [{**r, "prompt": data.prompt} for r in v] for k, v in splits.items()}
    splits_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_jsonl(splits_dir / f"{name}.jsonl", rows)
    info = {"sizes": {k: len(v) for k, v in splits.items()}, "easy": data.easy, "hard": data.hard,
            "difficulty": data.difficulty, "seed": seed,
            "licenses": {d: DATASETS[d]["license"] for d in {data.easy, data.hard}},
            "chance": DATASETS[data.hard]["chance"], "dropped": dropped}
    write_json(splits_dir / "split.json", info)

    model, tok = loaded or load_causal_lm(weak.model)  # the base model is loaded once per step
    enc = encode_rows(tok, splits["easy_train"], weak.train.max_length)
    base = teacher_forced(model, tok, enc, desc="base-model token errors")
    n = sum(e.n_answer for e in enc)
    d1 = boosting.uniform_weights(n)
    rows, k = [], 0
    for e in enc:
        rows.append({"id": e.id, "weights": d1[k: k + e.n_answer].tolist(), "base_wrong": base[e.id]["wrong"]})
        k += e.n_answer
    write_jsonl(state_dir / "weights.jsonl", rows)
    write_json(state_dir / "state.json", {"round": 1, "stopped": False, "experts": [], "n_tokens": n,
                                          "weak_model": weak.model, "tokenizer": tokenizer_signature(tok),
                                          "vocab_size": len(tok), "max_length": weak.train.max_length})
    io.publish(outputs, message=", ".join(f"{k}={v}" for k, v in info["sizes"].items()) + f"; {n} answer tokens; "
               "rows left out: " + (", ".join(f"{k}={v}" for k, v in dropped.items() if v) or "none"))
    return info


def main(argv=None) -> int:
    return step_main(build_parser(), argv, lambda a, cfg, **io: run(
        cfg.data, cfg.experts, seed=cfg.seed, splits_dir=Path(a.splits), state_dir=Path(a.state), **io))


if __name__ == "__main__":
    raise SystemExit(main())
