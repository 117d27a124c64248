"""pseudo_label: answers for the hard pool, written by the ensemble, the single expert, or the gold labels.

``--source ensemble``: the alpha-weighted token-level ensemble of all experts with alpha > 0 (rounds 1..T with
T chosen on easy_val when ``ensemble.select_rounds`` is ``val``);
``--source single``: the single-weak-expert baseline alone (``ensemble.single``: ``full`` = the train_single expert,
fine-tuned on all of easy_train; ``round1`` = the round-1 boosting expert); ``--source gold``: the true answers
(ceiling).
``ensemble.pseudo_label_mode``: ``generate`` (greedy decoding, default) or ``options`` (the option with the
best mixture log-likelihood). Output ``labels/``: ``labels.jsonl`` ``{id, question, choices,
pseudo_answer, producer, chosen, correct}`` and ``labels.json`` (counts; accuracy against gold, for
diagnosis only — the student never sees it). LoRA experts of one base decode (or are scored) in one stacked
forward over the base (:mod:`ensemw2s.members`); ``dtype``: ``resources.dtype``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ensemw2s.config import EnsembleConfig, StorageConfig, config_hash
from ensemw2s.members import (
    baseline_member,
    chosen_members,
    ensemble_members,
    open_decoder,
    option_logprobs_by_round,
)
from ensemw2s.steps import keys
from ensemw2s.steps.stepio import (
    StepIO,
    base_parser,
    ensemble_label_settings,
    optional_path,
    read_json,
    step_main,
    write_json,
)

STEP = "pseudo_label"


def build_parser():
    p = base_parser(STEP, __doc__.splitlines()[0])
    p.add_argument("--source", choices=keys.SOURCES, required=True)
    p.add_argument("--splits", required=True)
    p.add_argument("--state", default=None, help="final boosting state (not needed for --source gold)")
    p.add_argument("--rounds", type=int, default=None, help="final round (to fetch the state from storage)")
    p.add_argument("--single-expert", default=None, help="the train_single expert (--source single)")
    p.add_argument("--labels", required=True, help="output folder")
    return p


def _read_settings(ens: EnsembleConfig, source: str) -> Optional[dict]:
    """The ensemble settings a label source reads (its resume key): none for gold, ``single`` only for single."""
    from ensemw2s.config import to_dict

    if source == "gold":
        return None
    d = to_dict(ens)
    return ensemble_label_settings(d) if source == "ensemble" else d


def run(ens: EnsembleConfig, *, source: str, splits_dir: Path, state_dir: Optional[Path], labels_dir: Path,
        rounds: Optional[int] = None, run_id: Optional[str] = None, storage: Optional[StorageConfig] = None,
        resume: bool = True, dtype: str = "float32", single_dir: Optional[Path] = None) -> dict:
    from ensemw2s.data import match_choice, read_jsonl, write_jsonl
    from ensemw2s.modeling import dtype_key

    if source not in keys.SOURCES:
        raise ValueError(f"source must be one of {', '.join(keys.SOURCES)}, got {source!r}")
    key = keys.pseudo_label(source)
    labels_dir = Path(labels_dir)
    io = StepIO(key, run_id=run_id, storage=storage, resume=resume,
                config_hash=config_hash({"ensemble": _read_settings(ens, source), "source": source,
                                         "rounds": rounds, **(dtype_key(dtype) if source != "gold" else {})}),
                inputs=((keys.SPLIT_DATA, "splits"),) + (() if source == "gold" else ((keys.state_after(rounds), "state"),))
                + (((keys.TRAIN_SINGLE, "expert"),) if source == "single" and ens.single == "full" else ()))
    if io.restore({"labels": labels_dir}):
        return read_json(labels_dir / "labels.json")
    splits_dir = io.fetch(splits_dir, keys.SPLIT_DATA, "splits")
    rows = read_jsonl(splits_dir / "hard_pool.jsonl")
    if source == "gold":
        answers = [r["answer"] for r in rows]
        producer = "gold"
    else:
        state_dir = io.fetch(state_dir, keys.state_after(rounds), "state")
        state = read_json(state_dir / "state.json")
        options = ens.pseudo_label_mode != "generate"
        lp_pool: dict[int, dict] = {}  # round -> option log-probs on hard_pool (options mode)
        lp_val: Optional[dict] = None
        if source == "ensemble":
            active = ensemble_members(state, io.fetch, "all")
            if options and ens.select_rounds == "val":
                # one load per expert scores both easy_val (to choose T) and hard_pool (the labels)
                lp = option_logprobs_by_round(active, {"val": read_jsonl(splits_dir / "easy_val.jsonl"),
                                                       "pool": rows}, ens.batch_size, dtype)
                lp_val = {r: d["val"] for r, d in lp.items()}
                lp_pool = {r: d["pool"] for r, d in lp.items()}
            members, _ = chosen_members(active, splits_dir, ens.select_rounds, ens.batch_size, lp_val, dtype)
        else:
            members = [baseline_member(state, io.fetch, ens.single, single_dir)]
        producer = f"{source}{':' + ens.single if source == 'single' else ''}:rounds={[m['round'] for m in members]}:alphas={[round(m['alpha'], 4) for m in members]}"
        if not options:
            dec = open_decoder(members, ens.combine, ens.batch_size, dtype)
            from ensemw2s.data import format_prompt

            answers = [a.split("\n")[0].strip() for a in
                       dec.generate([format_prompt(r) for r in rows], ens.max_new_tokens)]
        else:
            from ensemw2s.boosting import normalise_alphas
            from ensemw2s.evaluation import mixture_choice

            missing = [m for m in members if m["round"] not in lp_pool]
            if missing:
                lp_pool.update({r: d["pool"] for r, d in option_logprobs_by_round(missing, {"pool": rows},
                                                                                  ens.batch_size, dtype).items()})
            lps = [lp_pool[m["round"]] for m in members]
            w = normalise_alphas([m["alpha"] for m in members])
            answers = [r["choices"][mixture_choice([lp[r["id"]] for lp in lps], w)] for r in rows]
    out = []
    for r, a in zip(rows, answers):
        k = match_choice(a, r["choices"])
        out.append({"id": r["id"], "question": r["question"], "choices": r["choices"], "pseudo_answer": a,
                    **({"prompt": r["prompt"]} if "prompt" in r else {}),
                    "producer": producer, "chosen": k, "correct": bool(k is not None and k == r["answer_index"])})
    write_jsonl(labels_dir / "labels.jsonl", out)
    stats = {"source": source, "producer": producer, "n": len(out), "mode": ens.pseudo_label_mode,
             "accuracy_vs_gold": sum(o["correct"] for o in out) / len(out),
             "unmatched": sum(o["chosen"] is None for o in out), "empty": sum(not o["pseudo_answer"] for o in out)}
    write_json(labels_dir / "labels.json", stats)
    io.publish({"labels": labels_dir},
               message=f"{len(out)} labels, {stats['accuracy_vs_gold']:.3f} match the gold answer, "
                       f"{stats['unmatched']} match no option")
    return stats


def main(argv=None) -> int:
    return step_main(build_parser(), argv, lambda a, cfg, **io: run(
        cfg.ensemble, source=a.source, splits_dir=Path(a.splits), state_dir=optional_path(a.state),
        labels_dir=Path(a.labels), rounds=a.rounds or cfg.boosting.rounds, dtype=cfg.resources.dtype,
        single_dir=optional_path(a.single_expert), **io))


if __name__ == "__main__":
    raise SystemExit(main())
