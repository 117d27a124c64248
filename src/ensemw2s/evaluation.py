"""Accuracy by option log-likelihood and by generation, PGR, paired statistics, and the report.

Option scoring of an ensemble uses the token-level alpha-mixture of its experts' probabilities:
``log p_mix(option) = sum_j log sum_t a_t p_t(y_j | x, y_<j)``, length-normalised. The per-token
log-probabilities of each expert are computed once and stored, so every prefix ensemble (rounds 1..t)
is scored without another model pass.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ensemw2s.boosting import normalise_alphas
from ensemw2s.data import format_prompt, match_choice
from ensemw2s.diagnostics import diagnostics_metrics, render_diagnostics
from ensemw2s.stats import paired_test
from ensemw2s.training import Encoded, encode_pair, teacher_forced

# weak_single: the baseline under ensemble.single; weak_round1 / weak_full: the other definition, for reference
MODELS = ("weak_single", "weak_round1", "weak_full", "ensemble", "ensemble_uniform", "student_single",
          "student_ensemble", "ceiling")
SPLIT_KEYS = {"easy_test": "id", "hard_test": "ood"}


# --------------------------------------------------------------------------- scoring


def option_logprobs(model, tok, rows: Sequence[dict], *, batch_size: int, max_length: int = 512,
                    adapters=None, desc: str = "option scoring"):
    """``{row_id: [[logp of each token of option k] for k in options]}``.

    The prompt is run once per question and its KV cache shared by all options (a question's options
    differ only in their few answer tokens). :func:`option_logprobs_reference` is the plain version.

    ``adapters``: a :class:`~ensemw2s.modeling.MultiAdapter` over K LoRA adapters of ``model`` (a peft
    model): every batch is stacked K times and all K experts are scored in one forward over the shared base;
    returns a list of K such dicts, in the order of ``adapters.names``. ``desc``: the label of its progress bar
    (over batches; off with ``ENSEMW2S_PROGRESS=0``).
    """
    import contextlib

    import torch

    from ensemw2s.modeling import cache_keyword, decoder_parts
    from ensemw2s.training import pad_batch, progress_bar

    K = len(adapters) if adapters is not None else 1

    def routed(rows_per_block):
        return adapters.active(rows_per_block) if adapters is not None else contextlib.nullcontext()

    dev = next(model.parameters()).device
    trunk, head, cap = decoder_parts(model)
    outs: list[dict] = [{} for _ in range(K)]
    order = sorted(range(len(rows)), key=lambda i: len(format_prompt(rows[i])))
    with torch.inference_mode():
        for b in progress_bar(range(0, len(order), batch_size), desc):
            batch = [rows[i] for i in order[b: b + batch_size]]
            prompts, options, owner = [], [], []
            for qi, r in enumerate(batch):
                prompt = format_prompt(r)
                for k, choice in enumerate(r["choices"]):
                    ids_k, start_k = encode_pair(tok, prompt, choice, max_length, add_eos=False)
                    if k == 0:
                        prompts.append(ids_k[:start_k])
                    options.append(ids_k[start_k:])
                    owner.append((qi, k))
            p_ids, p_mask = pad_batch(prompts, tok.pad_token_id, left=True)
            # K experts: K blocks of rows, block e through adapter e (one forward for all of them)
            p_ids, p_mask = p_ids.repeat(K, 1).to(dev), p_mask.repeat(K, 1).to(dev)
            p_pos = (torch.cumsum(p_mask, -1) - 1).clamp_min(0)
            with routed(len(prompts)):
                res = trunk(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True)
            cache, last_h = res.past_key_values, res.last_hidden_state[:, -1]
            rep = torch.tensor([q for q, _ in owner], device=dev)
            rep = (torch.arange(K, device=dev)[:, None] * len(prompts) + rep[None]).reshape(-1)
            _repeat_cache(cache, rep)
            o_ids, o_mask = pad_batch(options, tok.pad_token_id)
            o_ids, o_mask = o_ids.repeat(K, 1).to(dev), o_mask.repeat(K, 1).to(dev)
            mask = torch.cat([p_mask[rep], o_mask], dim=1)
            o_pos = p_mask[rep].sum(-1, keepdim=True) + torch.arange(o_ids.shape[1], device=dev)[None]
            with routed(len(options)):
                h = trunk(input_ids=o_ids, attention_mask=mask, position_ids=o_pos, use_cache=True,
                          **{cache_keyword(trunk): cache}).last_hidden_state
            # token j of an option is predicted by the hidden state before it: the prompt's last, then option j-1
            hs = torch.cat([last_h[rep][:, None], h[:, :-1]], dim=1)[o_mask.bool()]
            with routed(hs.shape[0] // K):  # equal blocks: every block has the same option tokens
                logits = head(hs).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            lp = torch.log_softmax(logits, -1).gather(1, o_ids[o_mask.bool()][:, None])[:, 0].cpu()
            for out, lp_e in zip(outs, lp.view(K, -1).tolist()):  # block e = expert e
                pos = 0
                for (qi, k), opt in zip(owner, options):
                    rid = batch[qi]["id"]
                    out.setdefault(rid, [None] * len(batch[qi]["choices"]))[k] = lp_e[pos: pos + len(opt)]
                    pos += len(opt)
    return outs if adapters is not None else outs[0]


def _repeat_cache(cache, index) -> None:
    """Select batch rows ``index`` of every layer of a DynamicCache in place (rows may repeat)."""
    for layer in cache.layers:
        layer.keys = layer.keys[index]
        layer.values = layer.values[index]


def option_logprobs_reference(model, tok, rows: Sequence[dict], *, batch_size: int, max_length: int = 512) -> dict:
    """Plain version of :func:`option_logprobs`: every (prompt, option) pair is its own sequence."""
    enc = []
    for r in rows:
        prompt = format_prompt(r)
        for k, choice in enumerate(r["choices"]):
            ids, start = encode_pair(tok, prompt, choice, max_length, add_eos=False)
            enc.append(Encoded(f"{r['id']}\x1f{k}", ids, start))
    scored = teacher_forced(model, tok, enc, batch_size=batch_size, desc="option scoring")
    out = {}
    for r in rows:
        out[r["id"]] = [scored[f"{r['id']}\x1f{k}"]["logprob"] for k in range(len(r["choices"]))]
    return out


def mixture_scores(per_expert: Sequence[Sequence[Sequence[float]]], weights: Sequence[float]) -> list[float]:
    """Each option's length-normalised log-likelihood under the alpha-mixture of experts' token probabilities.

    ``per_expert[t][k]`` = token log-probs of option k under expert t; ``weights`` sum to 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    logw = np.log(w)
    scores = []
    for k in range(len(per_expert[0])):
        lp = np.asarray([per_expert[t][k] for t in range(len(per_expert))], dtype=np.float64)  # (T, n_tok)
        mix = np.logaddexp.reduce(lp + logw[:, None], axis=0)
        scores.append(float(mix.sum() / max(1, mix.shape[0])))
    return scores


def mixture_choice(per_expert: Sequence[Sequence[Sequence[float]]], weights: Sequence[float]) -> int:
    """Pick an option by :func:`mixture_scores` (the first of equal best scores)."""
    return int(np.argmax(mixture_scores(per_expert, weights)))


def loglik_predictions(rows, lp_by_expert: Sequence[dict], alphas, model_name: str, split: str, *,
                       with_scores: bool = False) -> list[dict]:
    """One prediction per row; ``with_scores``: also ``scores``, each option's length-normalised
    log-likelihood (the evaluate step keeps them for each expert alone, for the diagnostics)."""
    w = normalise_alphas(alphas)
    preds = []
    for r in rows:
        scores = mixture_scores([lp[r["id"]] for lp in lp_by_expert], w)
        k = int(np.argmax(scores))
        preds.append({"id": r["id"], "model": model_name, "split": split, "method": "loglik",
                      "output": r["choices"][k], "chosen": k, "correct": bool(k == r["answer_index"]),
                      **({"scores": [round(x, 5) for x in scores]} if with_scores else {})})
    return preds


def generation_predictions(rows, texts: Sequence[str], model_name: str, split: str) -> list[dict]:
    preds = []
    for r, text in zip(rows, texts):
        k = match_choice(text, r["choices"])
        preds.append({"id": r["id"], "model": model_name, "split": split, "method": "generation",
                      "output": text, "chosen": k, "correct": bool(k is not None and k == r["answer_index"])})
    return preds


def select_rounds(val_rows: Sequence[dict], lp_by_round: dict, members: Sequence[dict]) -> tuple[int, list]:
    """T of the ensemble, chosen on easy_val (never on a test set).

    ``members``: the usable experts ``[{round, alpha}]``; ``lp_by_round[t]``: expert t's option log-probs on
    ``val_rows``. Each prefix ensemble (members of rounds 1..t) is scored by option log-likelihood; the best
    t wins, ties going to the smaller t. Returns ``(t, [val accuracy of rounds 1..max, None where empty])``.
    """
    accs: list = []
    best_t, best = None, -1.0
    for t in range(1, max(lp_by_round) + 1):
        ms = [m for m in members if m["round"] <= t]
        if not ms:
            accs.append(None)
            continue
        acc = accuracy(loglik_predictions(val_rows, [lp_by_round[m["round"]] for m in ms],
                                          [m["alpha"] for m in ms], "val", "easy_val"))
        accs.append(acc)
        if acc > best:
            best, best_t = acc, t
    if best_t is None:
        raise ValueError("select_rounds: no usable expert")
    return best_t, accs


def accuracy(preds: Sequence[dict]) -> float:
    if not preds:
        raise ValueError("no predictions to score")
    return float(np.mean([p["correct"] for p in preds]))


def pgr(acc_student: float, acc_weak: float, acc_ceiling: float) -> Optional[float]:
    """Performance gap recovered; None when the ceiling is not above the weak model (undefined)."""
    gap = acc_ceiling - acc_weak
    if gap <= 0:
        return None
    return (acc_student - acc_weak) / gap


def paired(preds: Sequence[dict], model_a: str, model_b: str, split: str, method: str) -> Optional[dict]:
    pa = {p["id"]: p["correct"] for p in preds if p["model"] == model_a and p["split"] == split
          and p["method"] == method}
    pb = {p["id"]: p["correct"] for p in preds if p["model"] == model_b and p["split"] == split
          and p["method"] == method}
    ids = sorted(set(pa) & set(pb))
    if not ids:
        return None
    return paired_test([pa[i] for i in ids], [pb[i] for i in ids])


# --------------------------------------------------------------------------- metrics + report


# the paired differences of a run, ``paired_<name>_<id|ood>_<diff|ci_low|ci_high|n|mcnemar_p>`` in metrics.json;
# the two ceiling gaps decide whether a PGR means anything (:func:`pgr_shown`)
PAIRED = (("ensemble", "weak_single", "ensemble_minus_single"),
          ("student_ensemble", "student_single", "student_ensemble_minus_single"),
          ("ceiling", "weak_single", "ceiling_minus_single"),
          ("ceiling", "ensemble", "ceiling_minus_ensemble"))
# PGR name -> (its weak model, the paired gap ceiling - weak that it divides by)
PGR_GAPS = {"pgr_single": ("weak_single", "ceiling_minus_single"), "pgr_ens": ("ensemble", "ceiling_minus_ensemble")}


def build_metrics(preds: Sequence[dict], *, primary: str, extra: dict) -> dict:
    """Flat metrics: ``<model>_acc_<id|ood>[_ll|_gen]``, by-round lists, PGRs, paired differences."""
    m: dict = {}
    suffix = {"loglik": "ll", "generation": "gen"}
    for model in sorted({p["model"] for p in preds}):
        for split, tag in SPLIT_KEYS.items():
            for method, suf in suffix.items():
                sel = [p for p in preds if p["model"] == model and p["split"] == split and p["method"] == method]
                if sel:
                    m[f"{model}_acc_{tag}_{suf}"] = accuracy(sel)
                    m[f"n_{tag}"] = len(sel)
            prim = m.get(f"{model}_acc_{tag}_{suffix[primary]}")
            if prim is not None:
                m[f"{model}_acc_{tag}"] = prim
    rounds = extra.get("rounds", 0)
    for tag in ("id", "ood"):
        m[f"ensemble_acc_{tag}_by_round"] = [m.get(f"ensemble_r{t}_acc_{tag}_ll") for t in range(1, rounds + 1)]
    ceiling = m.get("ceiling_acc_ood")
    if ceiling is not None:
        m["pgr_single"] = pgr(m.get("student_single_acc_ood", float("nan")), m["weak_single_acc_ood"], ceiling)
        m["pgr_ens"] = pgr(m.get("student_ensemble_acc_ood", float("nan")), m["ensemble_acc_ood"], ceiling)
    method = primary
    for a, b, name in PAIRED:
        for split, tag in SPLIT_KEYS.items():
            res = paired(preds, a, b, split, method)
            if res:
                for k, v in res.items():
                    m[f"paired_{name}_{tag}_{k}"] = v
    m.update(diagnostics_metrics(preds, method=primary))
    m.update(extra)
    return m


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3f}"


MODEL_LABELS = {"weak_single": "weak single expert (the baseline)",
                "weak_round1": "round-1 boosting expert alone", "weak_full": "weak expert on all easy data",
                "ensemble": "EnsemW2S ensemble",
                "ensemble_uniform": "same experts, uniform weights",
                "student_single": "student ← single", "student_ensemble": "student ← ensemble",
                "ceiling": "strong ceiling (gold)"}
REPORT_COLUMNS = ("model", "ID", "OOD", "ID ll", "OOD ll", "ID gen", "OOD gen")


def acc_with_interval(acc: Optional[float], n: Optional[int]) -> str:
    """``0.410 [0.319, 0.508]``: an accuracy with its 95 % Wilson interval (:func:`ensemw2s.stats.wilson_interval`)
    on ``n`` questions; the bare accuracy when ``n`` is unknown, ``—`` when there is none."""
    from ensemw2s.stats import wilson_interval

    if acc is None:
        return "—"
    if not n:
        return f"{acc:.3f}"
    lo, hi = wilson_interval(acc, int(n))
    return f"{acc:.3f} [{lo:.3f}, {hi:.3f}]"


def _paired(metrics: dict, name: str, tag: str) -> Optional[tuple[float, float, float, int]]:
    """``(diff, ci_low, ci_high, n)`` of a stored paired difference, None if the run has none."""
    d = metrics.get(f"paired_{name}_{tag}_diff")
    if d is None:
        return None
    return (d, metrics[f"paired_{name}_{tag}_ci_low"], metrics[f"paired_{name}_{tag}_ci_high"],
            metrics.get(f"paired_{name}_{tag}_n") or metrics.get(f"n_{tag}"))


def _diff_text(p: tuple) -> str:
    return f"{p[0]:+.3f} [{p[1]:+.3f}, {p[2]:+.3f}]"


def pgr_shown(metrics: dict, name: str) -> tuple[Optional[float], str]:
    """A PGR (``pgr_single`` or ``pgr_ens``, OOD) only where there is a gap to recover: ``(value, sentence)`` when
    the paired ceiling − weak difference is > 0 with its 95 % interval above 0, else ``(None, sentence saying
    why)``. Every surface (report, run page, ``runs show`` / ``list``, the site index) shows this decision."""
    weak, gap_name = PGR_GAPS[name]
    label = {"pgr_single": "PGR_single", "pgr_ens": "PGR_ens"}[name]
    value = metrics.get(name)
    gap = _paired(metrics, gap_name, "ood")
    if gap is None:
        if metrics.get("ceiling_acc_ood") is None:
            return None, f"{label}: no ceiling in this run"
        return None, (f"{label}: not shown — the paired interval of ceiling − {weak} was not recorded for this run "
                      f"(unguarded value {_fmt(value)})")
    if not _gap_clear(gap):
        return None, f"{label}: no gap to recover (ceiling − {weak} = {_diff_text(gap)}, OOD, n={gap[3]})"
    if value is None or not math.isfinite(value):  # build_metrics gives NaN when the student is missing
        return None, f"{label}: no student in this run (gap ceiling − {weak} = {_diff_text(gap)})"
    return value, f"{label} = {value:.3f} (OOD; gap ceiling − {weak} = {_diff_text(gap)})"


def _gap_clear(gap: tuple) -> bool:
    """A paired ceiling − weak difference (:func:`_paired`) above 0 with its 95 % interval above 0."""
    return gap[0] > 0 and gap[1] > 0


NO_GAP = "no gap"  # what a one-cell surface (runs list / compare, the site index) shows for a guarded PGR


def guarded(metrics: dict, key: str):
    """``metrics[key]`` for a table cell; a PGR goes through :func:`pgr_shown` and reads :data:`NO_GAP` where
    the ceiling − weak gap is noise (None when there is no PGR to show for another reason)."""
    if key not in PGR_GAPS:
        return metrics.get(key)
    value, _ = pgr_shown(metrics, key)
    if value is not None:
        return value
    gap = _paired(metrics, PGR_GAPS[key][1], "ood")
    return NO_GAP if gap is not None and not _gap_clear(gap) else None


VERDICTS = (("ensemble_minus_single", "ensemble vs single expert"),
            ("student_ensemble_minus_single", "student←ensemble vs student←single"),
            ("ceiling_minus_single", "ceiling vs single expert"))


def verdict_lines(metrics: dict) -> list[str]:
    """One sentence in plain words per comparison and test split, from its paired 95 % interval."""
    lines = []
    for name, what in VERDICTS:
        for tag in ("ood", "id"):
            p = _paired(metrics, name, tag)
            if p is None:
                continue
            if p[1] > 0:
                word = "a gap to recover" if name.startswith("ceiling") else "the first is better"
                text = f"{word}: {_diff_text(p)}"
            elif p[2] < 0:
                word = "the ceiling is below the weak model" if name.startswith("ceiling") else "the first is worse"
                text = f"{word}: {_diff_text(p)}"
            else:
                text = f"no difference detectable at n={p[3]} ({_diff_text(p)})"
            lines.append(f"{what} ({tag.upper()}): {text}")
    return lines


# the lines above the PGRs and above the verdicts, in report.md and on the run page (ensemw2s.site)
PGR_NOTE = ("Accuracies with their 95 % Wilson interval. PGR = (student − weak) / (ceiling − weak), shown only where "
            "the paired ceiling − weak gap is above 0 beyond noise:")
VERDICTS_TITLE = "Verdicts (paired, same questions, 95 % bootstrap interval):"

# shown under a run whose ceiling has no gap over the weak model (the default setting's case; docs/results.md)
NO_GAP_HINT = ("This setting shows no weak-to-strong gap at this size, so PGR and the students say nothing about "
               "the method here. The setting measured with a real gap is configs/science_1p5b.yaml (SmolLM2 experts, "
               "Qwen2.5-Coder-1.5B student, an opt-in 7.1 GB asset): ceiling − single = +0.107 [+0.077, +0.138] OOD "
               "over 3 seeds of n=300, about 33 min per seed on 2 CPU cores (docs/results.md, measured 2026-12-01): "
               "make science-assets && .venv/bin/ensemw2s run --config configs/science_1p5b.yaml")


def no_gap(metrics: dict) -> bool:
    """True when the run has a ceiling and its OOD gap over the single expert is not above 0 beyond noise."""
    gap = _paired(metrics, "ceiling_minus_single", "ood")
    return gap is not None and not _gap_clear(gap)


def report_rows(metrics: dict) -> list[list[str]]:
    """The results table (:data:`REPORT_COLUMNS`): one row per model present in ``metrics``, accuracies as
    text (the primary ones with their 95 % interval). Shared by the Markdown report and the HTML page
    (:mod:`ensemw2s.site`), so they never differ."""
    rows = []
    for model in MODELS:
        if not any(k.startswith(model + "_acc") for k in metrics):
            continue
        cells = [acc_with_interval(metrics.get(f"{model}_acc_{s}"), metrics.get(f"n_{s}")) for s in ("id", "ood")]
        cells += [_fmt(metrics.get(f"{model}_acc_{s}_{m}")) for m in ("ll", "gen") for s in ("id", "ood")]
        rows.append([MODEL_LABELS[model], *cells])
    return rows


def paired_lines(metrics: dict) -> list[str]:
    """The paired differences of a run, one sentence each (ensemble − single, student ← ensemble − ← single)."""
    lines = []
    for name in ("ensemble_minus_single", "student_ensemble_minus_single"):
        for tag in ("id", "ood"):
            d = metrics.get(f"paired_{name}_{tag}_diff")
            if d is not None:
                lines.append(f"paired {name.replace('_', ' ')} ({tag.upper()}): {d:+.3f} "
                             f"[95% CI {metrics[f'paired_{name}_{tag}_ci_low']:+.3f}, "
                             f"{metrics[f'paired_{name}_{tag}_ci_high']:+.3f}], McNemar p = "
                             f"{metrics[f'paired_{name}_{tag}_mcnemar_p']:.3f}")
    return lines


def render_report(metrics: dict, plot_name: Optional[str] = None) -> str:
    """Markdown results table (report.md; the HTML page with the same table is :func:`ensemw2s.site.run_page`)."""
    n_id, n_ood = metrics.get("n_id"), metrics.get("n_ood")
    lines = [
        f"# EnsemW2S results — run `{metrics.get('run_id', '?')}`, seed {metrics.get('seed')}, "
        f"T = {metrics.get('rounds')}",
        "",
        f"Primary accuracy: **{metrics.get('primary', 'loglik')}** (option log-likelihood = `ll`, generation = "
        f"`gen`). ID = easy_test (n={n_id}), OOD = hard_test (n={n_ood}).",
        "",
        f"Weak experts: {metrics.get('weak_model') or '?'}; strong student: "
        + ("none (student.enabled: false, the experts alone)" if metrics.get("students") is False
           else f"{metrics.get('strong_model') or '?'}") + ".",
        "",
        "| " + " | ".join(REPORT_COLUMNS) + " |",
        "|" + "---|" * len(REPORT_COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in report_rows(metrics)]
    if metrics.get("students") is False:
        lines += ["", "No student stage in this run (student.enabled: false): no students, ceiling or PGR."]
    else:
        lines += ["", PGR_NOTE, ""]
        lines += [f"- {pgr_shown(metrics, name)[1]}" for name in PGR_GAPS]
    verdicts = verdict_lines(metrics)
    if verdicts:
        lines += ["", VERDICTS_TITLE, ""]
        lines += [f"- {v}" for v in verdicts]
    if no_gap(metrics):
        lines += ["", f"**{NO_GAP_HINT}**"]
    lines.append("")
    lines.append("Alphas by round: " + ", ".join(_fmt(a) for a in metrics.get("alphas", [])))
    if metrics.get("val_acc_by_round"):
        lines.append("")
        lines.append(f"Ensemble rounds used: T = {metrics['chosen_rounds']} (chosen on easy_val; val accuracy by "
                     "round " + ", ".join(_fmt(a) for a in metrics["val_acc_by_round"]) + ")")
    lines.append("")
    lines.append("Ensemble accuracy by round (option log-likelihood), OOD: "
                 + ", ".join(_fmt(a) for a in metrics.get("ensemble_acc_ood_by_round", [])))
    lines += [f"- {line}" for line in paired_lines(metrics)]
    if plot_name:
        lines += ["", f"![accuracy by round]({plot_name})"]
    lines += [""] + render_diagnostics(metrics)
    return "\n".join(lines) + "\n"


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=False))
