"""update_weights: D_{t+1} ∝ D_t · exp(alpha_t · wrong_t), and the ensemble so far.

Under ``boosting.method: bagging`` (the control) D stays uniform: every round resamples D_1 with its own seed.

Inputs: ``state/`` after round t-1 and ``expert/`` of round t. Output ``state/`` for round t+1: the new
``weights.jsonl`` and ``state.json`` whose ``experts`` list names every expert so far (round, alpha, where
it is stored) — pseudo_label and evaluate read the ensemble from it. An expert with alpha <= 0 leaves the
weights unchanged and is left out of the ensemble; with ``on_nonpositive_alpha: stop`` later rounds are
skipped too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ensemw2s.config import BoostingConfig, StorageConfig, config_hash
from ensemw2s.steps import keys
from ensemw2s.steps.stepio import StepIO, base_parser, read_json, step_main, write_json

STEP = "update_weights"


def build_parser():
    p = base_parser(STEP, __doc__.splitlines()[0])
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--state", required=True, help="state after round t-1")
    p.add_argument("--expert", required=True, help="expert of round t")
    p.add_argument("--out-state", required=True, help="output folder: state after round t")
    return p


def run(boosting_cfg: BoostingConfig, *, round_: int, state_dir: Path, expert_dir: Path, out_state_dir: Path,
        run_id: Optional[str] = None, storage: Optional[StorageConfig] = None, resume: bool = True) -> dict:
    import numpy as np

    from ensemw2s import boosting
    from ensemw2s.data import read_jsonl, write_jsonl

    key = keys.update_weights(round_)
    out_state_dir = Path(out_state_dir)
    prev = keys.state_after(round_ - 1)
    io = StepIO(key, run_id=run_id, storage=storage, resume=resume,
                config_hash=config_hash({"boosting": boosting_cfg, "round": round_}),
                inputs=((prev, "state"), (keys.train_expert(round_), "expert")))
    if io.restore({"state": out_state_dir}):
        return read_json(out_state_dir / "state.json")
    state_dir = io.fetch(state_dir, prev, "state")
    expert_dir = io.fetch(expert_dir, keys.train_expert(round_), "expert")
    state = read_json(state_dir / "state.json")
    meta = read_json(expert_dir / "expert.json")
    if meta["round"] != round_ or state["round"] != round_:
        raise ValueError(f"{key}: expert round {meta['round']} / state round {state['round']} != {round_}")
    wrows = read_jsonl(state_dir / "weights.jsonl", validate=False)
    alpha = float(meta["alpha"])
    stopped = state["stopped"]
    if meta.get("skipped"):
        new_rows = wrows
        if boosting_cfg.on_nonpositive_alpha == "stop":
            stopped = True
    else:
        wrong = {r["id"]: r["wrong"] for r in read_jsonl(expert_dir / "wrong.jsonl", validate=False)}
        flat_w = np.concatenate([np.asarray(r["weights"], dtype=np.float64) for r in wrows])
        flat_wrong = np.concatenate([np.asarray(wrong[r["id"]], dtype=np.float64) for r in wrows])
        new = boosting.next_weights(flat_w, flat_wrong, alpha, boosting_cfg.method)
        new_rows, k = [], 0
        for r in wrows:
            n = len(r["weights"])
            new_rows.append({**r, "weights": new[k: k + n].tolist()})
            k += n
    entry = {"round": round_, "alpha": alpha, "eps": meta.get("eps"), "eps_prior": meta.get("eps_prior"),
             "skipped": bool(meta.get("skipped")), "step": keys.train_expert(round_), "output": "expert",
             "path": str(expert_dir), "lora": meta.get("lora"), "base_model": meta.get("base_model"),
             "weights_ess": meta.get("weights_ess"), "drawn_fraction": meta.get("drawn_fraction")}
    new_state = {**state, "round": round_ + 1, "stopped": stopped, "experts": state["experts"] + [entry]}
    write_jsonl(out_state_dir / "weights.jsonl", new_rows)
    write_json(out_state_dir / "state.json", new_state)
    flat = np.concatenate([np.asarray(r["weights"]) for r in new_rows])
    io.publish({"state": out_state_dir}, message=f"alpha={alpha:.4f} ({boosting_cfg.method}) max weight = {flat.max() * flat.size:.2f} × "
                                                 "uniform" + ("; stopped" if stopped else ""))
    return new_state


def main(argv=None) -> int:
    return step_main(build_parser(), argv, lambda a, cfg, **io: run(
        cfg.boosting, round_=a.round, state_dir=Path(a.state), expert_dir=Path(a.expert),
        out_state_dir=Path(a.out_state), **io))


if __name__ == "__main__":
    raise SystemExit(main())
