"""evaluate: accuracy on easy_test (ID) and hard_test (OOD), with per-question predictions.

``--target experts``: the single-weak-expert baseline (``weak_single``: under ``ensemble.single`` = ``full`` the
train_single expert, fine-tuned on all of easy_train, with the round-1 expert alone as ``weak_round1``; under
``round1`` the round-1 expert, with the train_single expert as ``weak_full``), the EnsemW2S ensemble (``ensemble``: every
expert with alpha > 0, or rounds 1..T with T chosen on easy_val when ``ensemble.select_rounds`` is ``val``), the
same experts with equal weights (``ensemble_uniform``) and every prefix ensemble of rounds 1..t
(``ensemble_r{t}``) and each boosting expert alone (``expert_r{t}``, also on easy_val when it is scored; for the
diagnostics of :mod:`ensemw2s.diagnostics`); option log-likelihood only for the last three: each expert's token log-probs are computed
once and mixed. ``--target student-<source>``: one trained student
(``student_single``, ``student_ensemble`` or ``ceiling``). Output ``eval/``: ``predictions.jsonl``
``{id, model, split, method, output, chosen, correct}`` (each expert alone also ``scores``: every option's
length-normalised log-likelihood) and ``eval.json`` (accuracies, timings).
LoRA experts of one base are scored and decoded in one stacked forward over the base (:mod:`ensemw2s.members`);
``dtype``: ``resources.dtype``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ensemw2s.config import EnsembleConfig, EvalConfig, StorageConfig, config_hash
from ensemw2s.diagnostics import expert_name
from ensemw2s.members import (
    chosen_members,
    ensemble_members,
    open_decoder,
    option_logprobs_by_round,
    single_member,
)
from ensemw2s.steps import keys
from ensemw2s.steps.stepio import StepIO, base_parser, optional_path, read_json, step_main, write_json

STEP = "evaluate"
TEST_SPLITS = ("easy_test", "hard_test")


def build_parser():
    p = base_parser(STEP, __doc__.splitlines()[0])
    p.add_argument("--target", choices=keys.EVAL_TARGETS, required=True)
    p.add_argument("--splits", required=True)
    p.add_argument("--state", default=None, help="final boosting state (target experts)")
    p.add_argument("--student", default=None, help="trained student folder (target student-*)")
    p.add_argument("--single-expert", default=None, help="the train_single expert folder (target experts)")
    p.add_argument("--out", required=True, help="output folder")
    return p


def _generate(decoder, rows, cfg: EvalConfig) -> list[str]:
    from ensemw2s.data import format_prompt

    return decoder.generate([format_prompt(r) for r in rows], cfg.max_new_tokens)


def run(ev: EvalConfig, ens: EnsembleConfig, *, target: str, splits_dir: Path, out_dir: Path,
        state_dir: Optional[Path] = None, student_dir: Optional[Path] = None, rounds: Optional[int] = None,
        run_id: Optional[str] = None, storage: Optional[StorageConfig] = None, resume: bool = True,
        dtype: str = "float32", single_dir: Optional[Path] = None) -> dict:
    from ensemw2s.data import read_jsonl, write_jsonl
    from ensemw2s.evaluation import accuracy, generation_predictions, loglik_predictions, option_logprobs
    from ensemw2s.modeling import dtype_key

    if target not in keys.EVAL_TARGETS:
        raise ValueError(f"target must be one of {', '.join(keys.EVAL_TARGETS)}, got {target!r}")
    key = keys.evaluate(target)
    out_dir = Path(out_dir)
    io = StepIO(key, run_id=run_id, storage=storage, resume=resume,
                config_hash=config_hash({"eval": ev, "combine": ens.combine, "target": target, "rounds": rounds,
                                         "select_rounds": ens.select_rounds, **dtype_key(dtype),
                                         **({"single": ens.single} if target == "experts" else {})}),
                inputs=((keys.SPLIT_DATA, "splits"),) + (((keys.state_after(rounds), "state"), (keys.TRAIN_SINGLE, "expert"))
                                                         if target == "experts"
                                                         else ((keys.train_student(target.split("-", 1)[1]), "student"),)))
    if io.restore({"eval": out_dir}):
        return read_json(out_dir / "eval.json")
    t0 = time.perf_counter()
    splits_dir = io.fetch(splits_dir, keys.SPLIT_DATA, "splits")
    tests = {s: read_jsonl(splits_dir / f"{s}.jsonl") for s in TEST_SPLITS}
    preds: list[dict] = []
    info: dict = {"target": target}
    if target == "experts":
        state_dir = io.fetch(state_dir, keys.state_after(rounds), "state")
        state = read_json(state_dir / "state.json")
        active = ensemble_members(state, io.fetch, "all")
        first = ensemble_members(state, io.fetch, "first")[0]
        full = single_member(io.fetch(single_dir, keys.TRAIN_SINGLE, "expert"))  # round 0
        baseline = full if ens.single == "full" else first
        by_round = {m["round"]: m for m in active}
        by_round.setdefault(1, first)
        by_round[0] = full
        scored = dict(tests)
        if ens.select_rounds == "val":
            scored["easy_val"] = read_jsonl(splits_dir / "easy_val.jsonl")
        # round -> split -> {id: per-option token logprobs}
        lp = option_logprobs_by_round([m for _, m in sorted(by_round.items())], scored, ev.batch_size, dtype)
        chosen, selection = chosen_members(
            active, splits_dir, ens.select_rounds, ev.batch_size,
            lp_val={m["round"]: lp[m["round"]]["easy_val"] for m in active} if "easy_val" in scored else None,
            dtype=dtype)
        info.update(selection)
        # each boosting expert alone on every scored split: the diagnostics (disagreement, oracle) read these
        for s, rows in scored.items():
            for t in sorted(r for r in by_round if r >= 1):
                preds += loglik_predictions(rows, [lp[t][s]], [1.0], expert_name(t), s, with_scores=True)
        for s, rows in tests.items():
            preds += loglik_predictions(rows, [lp[baseline["round"]][s]], [1.0], "weak_single", s)
            other = ("weak_round1", 1) if ens.single == "full" else ("weak_full", 0)
            preds += loglik_predictions(rows, [lp[other[1]][s]], [1.0], other[0], s)
            for t in range(1, (rounds or max(by_round)) + 1):
                members = [m for m in active if m["round"] <= t]
                if members:
                    preds += loglik_predictions(rows, [lp[m["round"]][s] for m in members],
                                                [m["alpha"] for m in members], f"ensemble_r{t}", s)
            preds += loglik_predictions(rows, [lp[m["round"]][s] for m in chosen], [m["alpha"] for m in chosen],
                                        "ensemble", s)
            # ablation for free: the same experts averaged with equal weights
            preds += loglik_predictions(rows, [lp[m["round"]][s] for m in chosen], [1.0] * len(chosen),
                                        "ensemble_uniform", s)
        if ev.generation:
            for name, members in (("weak_single", [baseline]), ("ensemble", chosen)):
                dec = open_decoder(members, ens.combine, ev.batch_size, dtype)
                for s, rows in tests.items():
                    preds += generation_predictions(rows, _generate(dec, rows, ev), name, s)
                del dec
        info["alphas"] = [e["alpha"] for e in state["experts"]]
        info["eps"] = [e["eps"] for e in state["experts"]]
        info["eps_prior"] = [e["eps_prior"] for e in state["experts"]]
        info["active_rounds"] = [m["round"] for m in active]
        info["weights_ess"] = [e.get("weights_ess") for e in state["experts"]]
        info["drawn_fraction"] = [e.get("drawn_fraction") for e in state["experts"]]
        info["single"] = {"definition": ens.single, "train_single": full["info"]}
        info["weak_model"] = state["weak_model"]
    else:
        from ensemw2s.ensemble import EnsembleDecoder
        from ensemw2s.modeling import load_saved

        source = target.split("-", 1)[1]
        name = keys.STUDENT_MODELS[source]
        student_dir = io.fetch(student_dir, keys.train_student(source), "student")
        model, tok = load_saved(Path(student_dir) / "model", dtype=dtype)
        for s, rows in tests.items():
            preds += loglik_predictions(rows, [option_logprobs(model, tok, rows, batch_size=ev.batch_size)],
                                        [1.0], name, s)
            if ev.generation:
                dec = EnsembleDecoder([model], [1.0], tok, batch_size=ev.batch_size)
                preds += generation_predictions(rows, _generate(dec, rows, ev), name, s)
        info["student"] = read_json(Path(student_dir) / "student.json")
    summary = {}
    for model, split, method in sorted({(p["model"], p["split"], p["method"]) for p in preds}):
        summary[f"{model}|{split}|{method}"] = accuracy(
            [p for p in preds if p["model"] == model and p["split"] == split and p["method"] == method])
    info["accuracy"] = summary
    info["seconds"] = round(time.perf_counter() - t0, 2)
    write_jsonl(out_dir / "predictions.jsonl", preds)
    write_json(out_dir / "eval.json", info)
    io.publish({"eval": out_dir}, message=", ".join(f"{k}={v:.3f}" for k, v in summary.items()
                                                     if not k.startswith(("ensemble_r", "expert_r"))))
    return info


def main(argv=None) -> int:
    return step_main(build_parser(), argv, lambda a, cfg, **io: run(
        cfg.eval, cfg.ensemble, target=a.target, splits_dir=Path(a.splits), out_dir=Path(a.out),
        state_dir=optional_path(a.state), student_dir=optional_path(a.student), rounds=cfg.boosting.rounds,
        dtype=cfg.resources.dtype, single_dir=optional_path(a.single_expert), **io))


if __name__ == "__main__":
    raise SystemExit(main())
