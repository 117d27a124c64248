"""train_expert: one AdaBoost round — fine-tune a fresh weak expert on D_t, measure its token error and alpha.

``--single`` (step ``train_single``): the single-weak-expert baseline instead, the weak model fine-tuned on ALL
of easy_train with equal weights (no resampling, no dropped tokens: the weak supervisor of Burns et al.); its
token error and alpha are measured under D_1 like a round-1 expert's, so that ``boosting.reuse_single`` can
make it round 1's expert (round 1 then copies it instead of training, ``--single-expert``).

Inputs: ``splits/`` (easy_train), ``state/`` (D_t, the base model's token errors, earlier rounds).
Output ``expert/``: the model (LoRA adapter or full weights), ``expert.json``
``{round, eps, eps_prior, alpha, seed, skipped, ...}`` and ``wrong.jsonl`` (the expert's teacher-forced
token errors on easy_train, which update_weights turns into D_{t+1}). Under ``boosting.error: answer`` a token's
error is its question's: the expert's (and, for eps_prior, the base model's) option choice on easy_train is
wrong, then every answer token of it counts as wrong.

The teacher-forced pass scores ONE model, this round's expert: ``eps_prior`` (the base model's error under D_t)
reads ``base_wrong`` from the state, computed once by split_data before round 1, so there is no second model
here to stack into one forward (the K-experts-in-one-forward path is for decoding and option scoring,
:mod:`ensemw2s.members`). ``dtype``: ``resources.dtype`` (training and the teacher-forced pass).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from ensemw2s.config import BoostingConfig, ModelSection, StorageConfig, config_hash
from ensemw2s.errors import ConfigError
from ensemw2s.steps import keys
from ensemw2s.steps.stepio import StepIO, base_parser, optional_path, read_json, step_main, write_json

STEP = "train_expert"


def build_parser():
    p = base_parser(STEP, __doc__.splitlines()[0])
    p.add_argument("--round", type=int, default=None, help="boosting round t (1-based)")
    p.add_argument("--single", action="store_true", help="train the single-expert baseline (step train_single)")
    p.add_argument("--splits", required=True)
    p.add_argument("--state", required=True, help="boosting state after round t-1 (from split_data for t=1)")
    p.add_argument("--single-expert", default=None,
                   help="the train_single expert folder (round 1 under boosting.reuse_single)")
    p.add_argument("--expert", required=True, help="output folder")
    return p


def run(experts: ModelSection, boosting_cfg: BoostingConfig, *, round_: int, seed: int, splits_dir: Path,
        state_dir: Path, expert_dir: Path, run_id: Optional[str] = None, storage: Optional[StorageConfig] = None,
        resume: bool = True, dtype: str = "float32", single: bool = False,
        single_dir: Optional[Path] = None) -> dict:
    """Round ``round_``'s expert; ``single=True``: the single-expert baseline (``round_`` must be 1: it is
    trained under D_1). Round 1 with ``boosting_cfg.reuse_single``: a copy of the baseline (``single_dir``)."""
    import numpy as np

    from ensemw2s import boosting
    from ensemw2s.data import read_jsonl, write_jsonl
    from ensemw2s.diagnostics import weight_stats
    from ensemw2s.modeling import dtype_key, load_causal_lm, load_saved, tokenizer_signature
    from ensemw2s.training import encode_rows, teacher_forced, train_sft

    expert_dir = Path(expert_dir)
    if single and round_ != 1:
        raise ValueError(f"the single expert is trained under D_1 (round 1), not round {round_}")
    reuse = round_ == 1 and not single and boosting_cfg.reuse_single
    key = keys.TRAIN_SINGLE if single else keys.train_expert(round_)
    prev = keys.state_after(round_ - 1)
    io = StepIO(key, run_id=run_id, storage=storage, resume=resume,
                # the single expert reads only the alpha rule of the boosting settings (its alpha under D_1)
                config_hash=config_hash({"experts": experts, "round": round_, "seed": seed, **dtype_key(dtype),
                                         # error: how eps is measured; boosting.method is read by
                                         # update_weights only (a bagging run reuses an adaboost run's round 1)
                                         **({"single": True, "alpha_rule": boosting_cfg.alpha_rule,
                                             **({"error": "answer"} if boosting_cfg.error == "answer" else {})}
                                            if single
                                            else {"boosting": dataclasses.replace(boosting_cfg,
                                                                                  method="adaboost")})}),
                inputs=((keys.SPLIT_DATA, "splits"), (prev, "state"))
                + (((keys.TRAIN_SINGLE, "expert"),) if reuse else ()))
    if io.restore({"expert": expert_dir}):
        return read_json(expert_dir / "expert.json")
    if reuse:
        return _reuse_single(io, single_dir, expert_dir)
    splits_dir = io.fetch(splits_dir, keys.SPLIT_DATA, "splits")
    state_dir = io.fetch(state_dir, prev, "state")
    state = read_json(state_dir / "state.json")
    if state["round"] != round_:
        raise ValueError(f"{key}: the boosting state is for round {state['round']}, not {round_}")
    if state["weak_model"] != experts.model:
        raise ConfigError(f"{key}: experts.model is {experts.model!r} but the state was made for "
                          f"{state['weak_model']!r}")
    expert_seed = seed * 1000 + (0 if single else round_)
    meta = {"round": round_, "seed": expert_seed, "base_model": experts.model, "alpha_rule": boosting_cfg.alpha_rule,
            "sampling": "none (all rows, equal weights)" if single else boosting_cfg.sampling, "single": single}
    if state["stopped"]:
        meta.update({"skipped": True, "reason": "boosting stopped at an earlier round", "eps": None,
                     "eps_prior": None, "alpha": 0.0})
        write_json(expert_dir / "expert.json", meta)
        io.publish({"expert": expert_dir}, message="skipped: boosting stopped earlier")
        return meta

    rows = read_jsonl(Path(splits_dir) / "easy_train.jsonl")
    wrows = {r["id"]: r for r in read_jsonl(Path(state_dir) / "weights.jsonl", validate=False)}
    ids = [r["id"] for r in rows]
    flat_w = np.concatenate([np.asarray(wrows[i]["weights"], dtype=np.float64) for i in ids])
    token_weights: Optional[dict] = None  # the single expert: every answer token with weight 1
    if not single:
        lw = boosting.loss_weights(flat_w, boosting_cfg.sampling, seed=expert_seed)
        token_weights, k = {}, 0
        for i in ids:
            n = len(wrows[i]["weights"])
            token_weights[i] = lw[k: k + n].tolist()
            k += n

    from ensemw2s.modeling import load_tokenizer, resolve_model_path

    tok = load_tokenizer(resolve_model_path(experts.model))
    if tokenizer_signature(tok) != state["tokenizer"]:
        from ensemw2s.errors import ModelError

        raise ModelError(f"{key}: the tokenizer of {experts.model!r} differs from the one the weights were made "
                         "with; all experts must share one tokenizer")
    enc = encode_rows(tok, rows, experts.train.max_length)
    model_dir = expert_dir / "model"
    stats = train_sft(experts.model, experts, enc, token_weights=token_weights, seed=expert_seed,
                      out_dir=model_dir, desc="single expert" if single else f"expert r{round_}", dtype=dtype)
    model, tok = load_saved(model_dir, dtype=dtype)
    res = teacher_forced(model, tok, enc, desc="expert token errors")
    wrong = np.concatenate([np.asarray(res[i]["wrong"], dtype=np.float64) for i in ids])
    base_wrong = np.concatenate([np.asarray(wrows[i]["base_wrong"], dtype=np.float64) for i in ids])
    unweighted_token_error = float(wrong.mean())
    answer_info: dict = {}
    if boosting_cfg.error == "answer":
        n_tokens = [len(res[i]["wrong"]) for i in ids]
        chose_wrong = _option_wrong(model, tok, rows)
        del model
        base, base_tok = load_causal_lm(experts.model, dtype=dtype)
        base_chose_wrong = _option_wrong(base, base_tok, rows)
        del base
        wrong = boosting.answer_level_wrong(chose_wrong, n_tokens)
        base_wrong = boosting.answer_level_wrong(base_chose_wrong, n_tokens)
        res = {i: {"wrong": [1.0 if bad else 0.0] * n} for i, bad, n in zip(ids, chose_wrong, n_tokens)}
        answer_info = {"train_option_accuracy": 1.0 - float(np.mean(chose_wrong)),
                       "base_train_option_accuracy": 1.0 - float(np.mean(base_chose_wrong))}
    if wrong.shape != flat_w.shape:
        raise ValueError(f"{key}: {wrong.shape[0]} answer tokens now vs {flat_w.shape[0]} in the weights")
    eps = boosting.token_error(flat_w, wrong)
    eps_prior = boosting.token_error(flat_w, base_wrong)
    alpha = boosting.expert_alpha(eps, boosting_cfg.alpha_rule, vocab_size=state["vocab_size"], eps_prior=eps_prior)
    meta.update({"eps": eps, "eps_prior": eps_prior, "alpha": alpha, "skipped": alpha <= 0,
                 "error": boosting_cfg.error, "unweighted_token_error": unweighted_token_error, **answer_info,
                 "lora": experts.lora.enabled, **stats,
                 **weight_stats(flat_w, None if token_weights is None else np.concatenate(
                     [np.asarray(token_weights[i], dtype=np.float64) for i in ids]))})
    if alpha <= 0:
        meta["reason"] = f"alpha {alpha:.4f} <= 0 ({boosting_cfg.on_nonpositive_alpha})"
    write_json(expert_dir / "expert.json", meta)
    write_jsonl(expert_dir / "wrong.jsonl", ({"id": i, "wrong": res[i]["wrong"]} for i in ids))
    io.publish({"expert": expert_dir}, extra={"round": round_, "alpha": alpha},
               message=f"eps={eps:.4f} eps_prior={eps_prior:.4f} alpha={alpha:.4f} ({boosting_cfg.alpha_rule}) "
                       f"loss={stats['train_loss']:.3f} in {stats['train_seconds']:.0f} s")
    return meta


def _option_wrong(model, tok, rows) -> list[bool]:
    """Per row: does ``model`` choose a wrong option (option log-likelihood, as the evaluation scores)?"""
    from ensemw2s.evaluation import loglik_predictions, option_logprobs

    lp = option_logprobs(model, tok, rows, batch_size=16, desc="option choices on easy_train")
    return [not p["correct"] for p in loglik_predictions(rows, [lp], [1.0], "expert", "easy_train")]


def _reuse_single(io: StepIO, single_dir: Optional[Path], expert_dir: Path) -> dict:
    """Round 1 under ``boosting.reuse_single``: the single expert (trained under D_1, its errors and alpha
    measured there) republished as round 1's expert."""
    import shutil

    src = io.fetch(single_dir, keys.TRAIN_SINGLE, "expert")
    if expert_dir.exists():
        shutil.rmtree(expert_dir)
    shutil.copytree(src, expert_dir)
    meta = read_json(expert_dir / "expert.json")
    meta.update(round=1, single=False, reused_from=keys.TRAIN_SINGLE)
    write_json(expert_dir / "expert.json", meta)
    io.publish({"expert": expert_dir}, extra={"round": 1, "alpha": meta["alpha"]},
               message=f"the single expert reused as round 1 (boosting.reuse_single): alpha={meta['alpha']:.4f}")
    return meta


def main(argv=None) -> int:
    def work(a, cfg, **io):
        if a.single == (a.round is not None):
            raise ConfigError("give exactly one of --round N (a boosting round) and --single (the single expert)")
        if not a.single and not 1 <= a.round <= cfg.boosting.rounds:
            raise ConfigError(f"--round {a.round} is out of range; boosting.rounds is {cfg.boosting.rounds}")
        run(cfg.experts, cfg.boosting, round_=1 if a.single else a.round, seed=cfg.seed, splits_dir=Path(a.splits),
            state_dir=Path(a.state), expert_dir=Path(a.expert), dtype=cfg.resources.dtype, single=a.single,
            single_dir=optional_path(a.single_expert), **io)

    return step_main(build_parser(), argv, work)


if __name__ == "__main__":
    raise SystemExit(main())
