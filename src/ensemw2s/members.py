"""Ensemble membership: which experts of a boosting state form an ensemble, their weights, and opening them.

- :func:`ensemble_members`: the experts of a state (the EnsemW2S ensemble, or the round-1 expert alone);
- :func:`chosen_members`: rounds 1..T with T chosen on easy_val (never on a test set);
- :func:`open_decoder`: an :class:`~ensemw2s.ensemble.EnsembleDecoder` over them (LoRA experts of one base
  share its weights and decode in one stacked forward);
- :func:`option_logprobs_by_round`: every expert scored on every split given (LoRA experts of one base: the
  base loaded once; on a CPU each expert merged into it in turn, elsewhere all in one stacked forward).

Used by the ``pseudo_label`` and ``evaluate`` steps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ensemw2s.errors import ConfigError

Fetch = Callable[[Optional[str], str, str], Path]


def ensemble_members(state: dict, fetch: Fetch, members: str, upto: Optional[int] = None) -> list[dict]:
    """Experts of a boosting state as ``[{round, alpha, path, lora, base_model}]``.

    ``members``: ``all`` = every expert with alpha > 0 (the EnsemW2S ensemble), ``first`` = the round-1
    expert alone (the single-weak-expert baseline, whatever its alpha). ``upto``: only rounds <= upto.
    ``fetch(local path or None, producer step, output)``: the local folder of an expert's artifact
    (:meth:`ensemw2s.steps.stepio.StepIO.fetch`).
    """
    experts = [e for e in state["experts"] if upto is None or e["round"] <= upto]
    if members == "first":
        chosen = [e for e in experts if e["round"] == 1]
        if chosen and chosen[0]["alpha"] <= 0:
            chosen = [{**chosen[0], "alpha": 1.0}]
    elif members == "all":
        chosen = [e for e in experts if not e["skipped"] and e["alpha"] > 0]
    else:
        raise ValueError(f"members must be 'all' or 'first', got {members!r}")
    if not chosen:
        raise ValueError(f"no usable expert in the boosting state (rounds {[e['round'] for e in experts]}, "
                         "all with alpha <= 0?)")
    # a recorded path is only usable on the machine (or pod) that wrote it; elsewhere fetch into the cache
    return [{**e, "path": str(fetch(e["path"] if Path(e["path"]).is_dir() else None, e["step"], e["output"])
                              / "model")} for e in chosen]


def single_member(expert_dir: Path) -> dict:
    """The single-expert baseline (step ``train_single``, fetched to ``expert_dir``) as a member: weight 1,
    listed as round 0 (it is no boosting round); ``info``: its ``expert.json``."""
    import json

    meta = json.loads((Path(expert_dir) / "expert.json").read_text())
    return {"round": 0, "alpha": 1.0, "path": str(Path(expert_dir) / "model"), "lora": meta.get("lora"),
            "base_model": meta["base_model"], "skipped": False, "single": True, "info": meta}


def baseline_member(state: dict, fetch: Fetch, single: str, single_dir: Optional[Path]) -> dict:
    """The single-weak-expert baseline under ``ensemble.single``: ``full`` = the train_single expert,
    ``round1`` = the round-1 boosting expert (the definition before)."""
    from ensemw2s.steps import keys

    if single == "full":
        return single_member(fetch(single_dir, keys.TRAIN_SINGLE, "expert"))
    if single == "round1":
        return ensemble_members(state, fetch, "first")[0]
    raise ConfigError(f"ensemble.single: {single!r} is not allowed; allowed values: full, round1")


# experts scored in one stacked forward at most (activations grow with K x batch)
STACK_MAX = 8


def shared_lora_base(members: list[dict]) -> bool:
    """Whether the members are LoRA adapters of one base model (then they share its weights)."""
    return all(m.get("lora") for m in members) and len({m["base_model"] for m in members}) == 1


def open_decoder(members: list[dict], combine: str, batch_size: int, dtype=None):
    """An EnsembleDecoder over the members. LoRA experts of one base share its weights and run in one stacked
    forward per token (``EnsembleDecoder.from_lora_adapters``); full models run one forward each. ``dtype``:
    ``resources.dtype`` (:func:`ensemw2s.modeling.load_causal_lm`)."""
    from ensemw2s.ensemble import EnsembleDecoder
    from ensemw2s.modeling import load_causal_lm, load_saved

    alphas = [m["alpha"] for m in members]
    if shared_lora_base(members):
        base, tok = load_causal_lm(members[0]["base_model"], dtype=dtype)
        return EnsembleDecoder.from_lora_adapters(base, [m["path"] for m in members], alphas, tok,
                                                  combine=combine, batch_size=batch_size)
    loaded = [load_saved(m["path"], dtype=dtype) for m in members]
    return EnsembleDecoder([m for m, _ in loaded], alphas, loaded[0][1], combine=combine, batch_size=batch_size)


SCORING_WAYS = ("merged", "stacked")


def scoring_way(device_type: str) -> str:
    """How K LoRA experts of one base are scored, per call (docs/performance.md §1, benchmarks/bench_scoring.py):
    ``merged`` (one expert after another, each merged into the base) where the forward is compute-bound, i.e. on
    a CPU: there stacking gains nothing (K=3 SmolLM2 experts: 0.94-1.00 x one expert at a time in fp32,
    0.74-0.84 x in bf16) and merging drops the LoRA term (1.05-1.13 x, 1.08-1.35 x; answers as one at a time);
    ``stacked`` (all K in one forward, the base weights read once) on an accelerator, where the forward is bound
    by reading the weights (not measured here: no GPU)."""
    return "merged" if device_type == "cpu" else "stacked"


def option_logprobs_by_round(members: list[dict], splits: dict[str, list[dict]], batch_size: int,
                             dtype=None, way: Optional[str] = None) -> dict[int, dict[str, dict]]:
    """Every member scored on every split given: ``{round: {split: {id: per-option token log-probs}}}``.

    LoRA experts of one base: the base is loaded once with every adapter; ``way`` (default
    :func:`scoring_way` of the device): ``merged`` = each expert merged into the base in turn
    (:func:`ensemw2s.modeling.merged_adapter`, the base restored exactly after each), ``stacked`` = up to
    :data:`STACK_MAX` experts in ONE forward per batch (:class:`ensemw2s.modeling.MultiAdapter`). Otherwise each
    member is loaded and scored on its own."""
    from ensemw2s.evaluation import option_logprobs
    from ensemw2s.modeling import (
        MultiAdapter,
        load_causal_lm,
        load_lora_adapters,
        load_saved,
        merged_adapter,
        torch_device,
    )

    out: dict[int, dict[str, dict]] = {}
    if len(members) > 1 and shared_lora_base(members):
        way = way or scoring_way(torch_device().type)
        if way not in SCORING_WAYS:
            raise ValueError(f"way must be one of {', '.join(SCORING_WAYS)}; got {way!r}")
        base, tok = load_causal_lm(members[0]["base_model"], dtype=dtype)
        names = [f"round_{m['round']}" for m in members]
        model = load_lora_adapters(base, [m["path"] for m in members], names)
        if way == "merged":
            for i, (m, name) in enumerate(zip(members, names), 1):
                with merged_adapter(model, name):  # the progress bar says which expert of how many
                    out[m["round"]] = {split: option_logprobs(model, tok, rows, batch_size=batch_size,
                                                              desc=f"option scoring {split}, expert {i}/{len(members)}")
                                       for split, rows in splits.items()}
            return out
        for i in range(0, len(members), STACK_MAX):
            multi = MultiAdapter(model, names[i: i + STACK_MAX])
            for name, rows in splits.items():
                for m, lp in zip(members[i: i + STACK_MAX],
                                 option_logprobs(model, tok, rows, batch_size=batch_size, adapters=multi)):
                    out.setdefault(m["round"], {})[name] = lp
        return out
    for m in members:
        model, tok = load_saved(m["path"], dtype=dtype)
        out[m["round"]] = {name: option_logprobs(model, tok, rows, batch_size=batch_size)
                           for name, rows in splits.items()}
        del model
    return out


def chosen_members(active: list[dict], splits_dir: Path, select: str, batch_size: int,
                   lp_val: Optional[dict] = None, dtype=None) -> tuple[list[dict], dict]:
    """The EnsemW2S ensemble under ``ensemble.select_rounds``, from ``active`` = ``ensemble_members(state, io,
    "all")``: ``all`` = every one of them; ``val`` = rounds 1..T with T chosen by option log-likelihood accuracy
    on easy_val. ``lp_val``: the experts' option log-probs on easy_val by round when the caller has them.
    Returns ``(members, {chosen_rounds, val_acc_by_round})``."""
    if select == "all":
        return active, {"chosen_rounds": max(m["round"] for m in active), "val_acc_by_round": None}
    if select != "val":
        raise ConfigError(f"ensemble.select_rounds: {select!r} is not allowed; allowed values: all, val")
    from ensemw2s.data import read_jsonl
    from ensemw2s.evaluation import select_rounds

    val = read_jsonl(Path(splits_dir) / "easy_val.jsonl")
    if lp_val is None:
        lp_val = {r: lp["easy_val"] for r, lp in option_logprobs_by_round(active, {"easy_val": val},
                                                                          batch_size, dtype).items()}
    t, accs = select_rounds(val, lp_val, active)
    return [m for m in active if m["round"] <= t], {"chosen_rounds": t, "val_acc_by_round": accs}
