"""Ensemble decoding throughput and memory: the stacked LoRA decoder vs HF generate vs today's decoders vs a
naive no-cache ensemble; and option scoring of K LoRA experts in one forward.

Greedy decoding of ARC-Easy test prompts (the pipeline's prompt format), 32 new tokens, K = 1, 3, 5 experts.
Experts: SmolLM2-135M-Instruct (dequantised, fp32, eager attention as ``load_causal_lm`` loads it on CPU), each
with its own small random LoRA adapter (r=16 on all projections, lora_B ~ N(0, 0.005)) so the copies differ.

* (s) ``EnsembleDecoder.from_lora_adapters`` (default ``mode="stacked"``): one base + K adapters, ALL K experts
  in ONE forward per token (the batch holds every prompt once per expert, block k through adapter k, our
  grouped LoRA matmul), one KV cache for the stacked batch. What pseudo_label and evaluate use. Also at K = 3
  with peft's mixed-adapter batches (``lora_impl="peft"``) instead of our grouped matmul.
* today's decoders: (m) ``EnsembleDecoder`` over K *merged* copies (K separate models, one forward each) and
  (w) ``from_lora_adapters(mode="switch")`` (base once, one forward per expert with its adapter switched on,
  one KV cache per expert; the LoRA path before the stacked one), K = 3.
* (b) HF ``generate`` (greedy, KV cache) of one merged copy, same prompts, same batches of 16 (longest first,
  left padding): the single-model throughput. Run first and again last; the faster run is the baseline (a
  load change on a shared machine between the two would otherwise move every ratio).
* (b') the same HF ``generate`` over the stacked batch's rows: batches of K x 16 rows, each prompt K times (K =
  3): one model's cost for as many rows as the stacked decoder runs, so (b') / K is the most stacking can reach
  where the forward is compute-bound (on this CPU it is: see docs/performance.md §1).
* (c) ``reference_generate_ids`` (one prompt at a time, no cache, full prefix recomputed for every token) at
  K = 3 on 2 questions; (c') a batched no-cache variant (one left-padded batch of 4 questions, full prefix
  every token). Both only decode 8 new tokens (their cost grows with the prefix, so this favours them); their
  per-token rates are compared with (m)'s over all questions and 32 tokens.

Rows (w) and (s' = peft's mixed batches) run only with ``ENSEMW2S_BENCH_DECODE_EXTRA=1`` (about 2.5 min more):
they compared the stacked decoder with the paths it replaced and chose our grouped matmul over peft's (recorded
in docs/performance.md §1). Option scoring of K LoRA experts is measured by benchmarks/bench_scoring.py.

All decoders run at the pipeline's batch size (16). EOS is disabled everywhere (tokenizer without EOS,
``generation_config.eos_token_id = None``), so every method decodes exactly ``new`` tokens per question and
tokens/s compare like for like (tokens = questions x new). Each measurement runs in a fresh interpreter: one
warm-up decode (2 prompts x 2 tokens) after loading, then one timed decode. Memory: peak RSS during the timed
decode above the RSS after loading (``VmHWM`` reset through ``/proc/self/clear_refs``) plus the weights in
memory (exact parameter bytes: K merged copies, or the base + K adapters) vs weights + the KV caches
(analytic: K x layers x 2 x kv_heads x head_dim x fp32 x rows x (longest prompt + new) of the largest batch;
batches decode one after the other).
"""
from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

MODEL = "smollm2-135m"
N_Q, NEW, BATCH = (4, 4, 2) if C.QUICK else (64, 32, 16)
KS = (1, 2) if C.QUICK else (1, 3, 5)
K_NAIVE = 2 if C.QUICK else 3  # also the K of the switch decoder and peft's mixed batches
N_REF = 1 if C.QUICK else 2  # questions for (c), one prompt at a time
N_NOCACHE = 2 if C.QUICK else 4  # questions for (c')
NEW_NAIVE = 4 if C.QUICK else 8  # new tokens for (c) and (c'): short prefixes, which favours them
EXTRA = os.environ.get("ENSEMW2S_BENCH_DECODE_EXTRA", "0") == "1"  # rows (w) and (s'): see the docstring
LORA_STD = 0.005


# ------------------------------------------------------------------------------------------- child side


class NoEos:
    """A tokenizer view without EOS: decoders then always produce max_new_tokens tokens."""

    eos_token_id = None

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, *a, **kw):
        return self._tok(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def _load_base():
    from ensemw2s.modeling import load_causal_lm

    model, tok = load_causal_lm(MODEL)
    model.generation_config.eos_token_id = None
    return model, tok


def _merged(adapter_dir: str):
    from peft import PeftModel

    base, tok = _load_base()
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()
    model.generation_config.eos_token_id = None
    return model, tok


def _param_bytes(models) -> int:
    seen, total = set(), 0
    for m in models:
        for p in m.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total


def _kv_bytes(cfg, K: int, lengths: list[int], new: int, batch: int) -> int:
    """KV caches alive at once: batches decode one after the other, so the largest batch's (the first:
    longest prompts first) K caches of rows x (longest prompt + new) positions."""
    order = sorted(lengths, reverse=True)
    tokens = max(len(order[i:i + batch]) * (order[i] + new) for i in range(0, len(order), batch))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return K * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * 4 * tokens


def _hf_generate(model, tok, prompts, new, batch):
    import torch

    from ensemw2s.training import pad_batch

    enc = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    out = [None] * len(enc)
    with torch.inference_mode():
        for b in range(0, len(order), batch):
            idx = order[b:b + batch]
            ids, mask = pad_batch([enc[i] for i in idx], tok.pad_token_id, left=True)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                 pad_token_id=tok.pad_token_id, use_cache=True)
            for i, row in zip(idx, gen[:, ids.shape[1]:].tolist()):
                out[i] = row
    return out


def _nocache_batched(models, weights, tok, prompts, new):
    """Batched ensemble without a KV cache: the whole left-padded prefix is recomputed for every token."""
    import torch

    from ensemw2s.ensemble import mixture_next_token_scores
    from ensemw2s.training import pad_batch

    enc = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    ids, mask = pad_batch(enc, tok.pad_token_id, left=True)
    with torch.inference_mode():
        for _ in range(new):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = [m(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                        logits_to_keep=1).logits[:, -1, :] for m in models]
            nxt = mixture_next_token_scores(logits, weights).argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=-1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=-1)
    return ids[:, -new:].tolist()


def child(spec: dict) -> dict:
    C.quiet_hf()
    import torch

    from ensemw2s.ensemble import EnsembleDecoder, reference_generate_ids

    rss0 = C.rss_bytes()
    mode, K, n, new, batch = spec["mode"], spec["K"], spec["n"], spec["new"], spec["batch"]
    adapters = spec["adapters"][:K]
    alphas = [1.0 + 0.25 * k for k in range(K)]  # unequal weights, like boosting's
    prompts = C.arc_prompts(n)
    if spec.get("repeat"):  # every prompt `repeat` times in a row: HF at the stacked batch's rows and lengths
        prompts = [p for p in prompts for _ in range(spec["repeat"])]
    t_load = time.perf_counter()
    if mode in ("stacked", "switch"):
        base, tok = _load_base()
        dec = EnsembleDecoder.from_lora_adapters(base, adapters, alphas, NoEos(tok), batch_size=batch, mode=mode,
                                                 lora_impl=spec.get("impl", "grouped"))
        models = [dec.models[0]]
    else:
        loaded = [_merged(a) for a in adapters]
        models, tok = [m for m, _ in loaded], loaded[0][1]
        dec = EnsembleDecoder(models, alphas, NoEos(tok), batch_size=batch)
    load_s = time.perf_counter() - t_load
    lengths = [len(tok(p, add_special_tokens=True)["input_ids"]) for p in prompts]

    if mode in ("merged", "stacked", "switch"):
        def fn(ps, k):
            return dec.generate_ids(ps, k)
    elif mode == "hf":
        def fn(ps, k):
            return _hf_generate(models[0], tok, ps, k, batch)
    elif mode == "ref":
        def fn(ps, k):
            return reference_generate_ids(models, alphas, NoEos(tok), ps, k)
    elif mode == "nocache":
        from ensemw2s.boosting import normalise_alphas

        w = normalise_alphas(alphas)

        def fn(ps, k):
            return _nocache_batched(models, w, tok, ps, k)
    else:
        raise ValueError(mode)

    fn(prompts[:2], 2)  # warm-up
    gc.collect()
    rss_loaded = C.rss_bytes()
    can_reset = C.reset_peak_rss()
    t0 = time.perf_counter()
    ids = fn(prompts, new)
    seconds = time.perf_counter() - t0
    hwm = C.peak_rss_bytes()
    tokens = sum(len(r) for r in ids)
    cfg = (models[0].get_base_model() if hasattr(models[0], "get_base_model") else models[0]).config
    return {"mode": mode, "K": K, "n": n, "new": new, "batch": batch, "impl": spec.get("impl"),
            "seconds": seconds, "tokens": tokens,
            "tok_s": tokens / seconds, "load_s": load_s, "prompt_len_mean": sum(lengths) / len(lengths),
            "prompt_len_max": max(lengths), "rss_start": rss0, "rss_loaded": rss_loaded,
            "decode_peak_extra": (hwm - rss_loaded) if can_reset else None,
            "weights_bytes": _param_bytes(models), "kv_bytes": _kv_bytes(cfg, K, lengths, new, batch),
            "threads": torch.get_num_threads(), "ids": ids}


# ------------------------------------------------------------------------------------------ parent side


def main() -> int:
    if C.answer_as_child(__doc__, child):
        return 0

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ensemw2s-bench-decode-") as tmp:
        print(f"making {max(KS)} random LoRA adapters of {MODEL} ...", flush=True)
        adapters = C.random_lora_adapters(MODEL, Path(tmp), max(KS), LORA_STD, seed=100)
        base = {"n": N_Q, "new": NEW, "batch": BATCH, "adapters": adapters}
        runs: dict[str, dict] = {}

        def run(key, **spec):
            r = C.run_child(Path(__file__), {**base, **spec})
            runs[key] = r
            print(f"  {key:16s} {r['tok_s']:8.1f} tok/s  ({r['tokens']} tokens in {r['seconds']:.1f} s, "
                  f"load {r['load_s']:.1f} s)", flush=True)
            return r

        run("hf", mode="hf", K=1)
        for K in KS:
            run(f"stacked_K{K}", mode="stacked", K=K)
            run(f"merged_K{K}", mode="merged", K=K)
        if EXTRA:
            run(f"switch_K{K_NAIVE}", mode="switch", K=K_NAIVE)
        # the compute ceiling of stacking: one model over the stacked batch's rows (K_NAIVE x BATCH, each prompt
        # K_NAIVE times); stacked K experts cannot beat this rate / K (same rows, the LoRA terms on top)
        run(f"hfrows_K{K_NAIVE}", mode="hf", K=1, batch=BATCH * K_NAIVE, repeat=K_NAIVE)
        if EXTRA:
            run(f"stackedpeft_K{K_NAIVE}", mode="stacked", K=K_NAIVE, impl="peft")
        run(f"ref_K{K_NAIVE}", mode="ref", K=K_NAIVE, n=N_REF, new=NEW_NAIVE)
        run(f"nocache_K{K_NAIVE}", mode="nocache", K=K_NAIVE, n=N_NOCACHE, batch=N_NOCACHE, new=NEW_NAIVE)
        # the single-model baseline again at the end: the children run one after the other, so a load change on a
        # shared machine moves the baseline; the faster of the two runs is the one the ratios use
        run("hf_end", mode="hf", K=1)
        if runs["hf_end"]["tok_s"] > runs["hf"]["tok_s"]:
            runs["hf_start"], runs["hf"] = runs["hf"], runs["hf_end"]

    def same(a, b):  # share of a's prompts whose ids equal b's (b cut to a's length)
        ia, ib = runs[a]["ids"], runs[b]["ids"]
        return sum(x == y[:len(x)] for x, y in zip(ia, ib)) / len(ia)

    kn = K_NAIVE
    for key in (f"ref_K{kn}", f"nocache_K{kn}"):
        runs[key]["same_ids_as_merged"] = same(key, f"merged_K{kn}")
    for K in KS:
        runs[f"stacked_K{K}"]["same_ids_as_merged"] = same(f"stacked_K{K}", f"merged_K{K}")
    if EXTRA:
        runs[f"stacked_K{kn}"]["same_ids_as_switch"] = same(f"stacked_K{kn}", f"switch_K{kn}")
        runs[f"stackedpeft_K{kn}"]["same_ids_as_switch"] = same(f"stackedpeft_K{kn}", f"switch_K{kn}")
    runs["stacked_K1"]["same_ids_as_hf"] = same("stacked_K1", "hf")
    runs["merged_K1"]["same_ids_as_hf"] = same("merged_K1", "hf")

    hf = runs["hf"]["tok_s"]
    lens = runs["hf"]
    print(f"\nbench_decode: {MODEL} fp32, {N_Q} ARC-Easy test prompts (mean {lens['prompt_len_mean']:.0f}, max "
          f"{lens['prompt_len_max']} tokens), {NEW} new tokens, batch {BATCH}, {runs['hf']['threads']} threads; "
          f"stacked K=1 gives HF's token ids for {runs['stacked_K1']['same_ids_as_hf']:.0%} of prompts"
          + (f", stacked K={kn} the switch decoder's for {runs[f'stacked_K{kn}']['same_ids_as_switch']:.0%}"
             if EXTRA else ""))
    verdicts = {}
    rows = []
    for K in KS:
        st, me = runs[f"stacked_K{K}"], runs[f"merged_K{K}"]
        ratio = st["tok_s"] / hf
        verdicts[f"stacked_vs_single_K{K}"] = (ratio >= 0.5) if K == kn else None
        mem = st["weights_bytes"] + (st["decode_peak_extra"] or 0)
        bound = st["weights_bytes"] + st["kv_bytes"]
        mem_ok = mem <= 1.25 * bound if st["decode_peak_extra"] is not None else None
        verdicts[f"stacked_memory_K{K}"] = mem_ok
        rows.append([f"(s) stacked LoRA K={K}", st["tok_s"], ratio, C.verdict(verdicts[f"stacked_vs_single_K{K}"]),
                     st["tok_s"] / me["tok_s"], mem / 2**20, bound / 2**20, mem / bound, C.verdict(mem_ok),
                     f"{st['same_ids_as_merged']:.0%}"])
    for K in KS:
        me = runs[f"merged_K{K}"]
        ratio = me["tok_s"] / (hf / K)
        verdicts[f"merged_vs_hf_over_K_K{K}"] = ratio >= 0.8
        mem = me["weights_bytes"] + (me["decode_peak_extra"] or 0)
        bound = me["weights_bytes"] + me["kv_bytes"]
        rows.append([f"(m) today: K={K} merged models", me["tok_s"], me["tok_s"] / hf,
                     f"{ratio:.2f} x HF/K {C.verdict(ratio >= 0.8)}", 1.0, mem / 2**20, bound / 2**20, mem / bound,
                     "", ""])
    st = runs[f"stacked_K{kn}"]
    extra_title = ""
    if EXTRA:
        sw, sp = runs[f"switch_K{kn}"], runs[f"stackedpeft_K{kn}"]
        rows.append([f"(w) today: K={kn} switch LoRA", sw["tok_s"], sw["tok_s"] / hf, "",
                     sw["tok_s"] / runs[f"merged_K{kn}"]["tok_s"],
                     (sw["weights_bytes"] + (sw["decode_peak_extra"] or 0)) / 2**20,
                     (sw["weights_bytes"] + sw["kv_bytes"]) / 2**20, "", "", ""])
        rows.append([f"(s') stacked K={kn}, peft mixed batches", sp["tok_s"], sp["tok_s"] / hf, "",
                     sp["tok_s"] / runs[f"merged_K{kn}"]["tok_s"], "", "", "", "", ""])
        extra_title = (f"; stacked / switch at K={kn} = {st['tok_s'] / sw['tok_s']:.2f}, grouped / peft's mixed "
                       f"batches = {st['tok_s'] / sp['tok_s']:.2f}")
    rows.append(["(b) HF generate, 1 model", hf, 1.0, "", "", "", "", "", "", ""])
    hr = runs[f"hfrows_K{kn}"]
    rows.append([f"(b') HF generate, 1 model, {kn}x{BATCH} rows, / {kn}", hr["tok_s"] / kn, hr["tok_s"] / kn / hf,
                 f"stacked = {st['tok_s'] / (hr['tok_s'] / kn):.2f} x this", "", "", "", "", "", ""])
    print(C.table(["decoder", "tok/s", "/ single", "K=3 >= 0.5", "/ merged", "mem MiB", "w+KV MiB", "ratio",
                   "<=1.25", "ids = merged"], rows,
                  title=f"\ntokens/s side by side{extra_title}; memory = weights + measured peak extra during "
                        "decode"))

    ref, noc = runs[f"ref_K{kn}"], runs[f"nocache_K{kn}"]
    ours_n = runs[f"merged_K{kn}"]
    r_ref, r_noc = ours_n["tok_s"] / ref["tok_s"], ours_n["tok_s"] / noc["tok_s"]
    verdicts["vs_naive_ref"] = r_ref >= 5
    verdicts["vs_naive_batched"] = r_noc >= 5
    print(C.table([f"naive decoder (K={kn}, {NEW_NAIVE} new tokens)", "questions", "tok/s", "ours tok/s",
                   "ours/naive", ">=5", "same ids as ours"],
                  [["(c) reference, 1 prompt, no cache", ref["n"], ref["tok_s"], ours_n["tok_s"], r_ref,
                    C.verdict(r_ref >= 5), f"{ref['same_ids_as_merged']:.0%}"],
                   ["(c') batched, no cache", noc["n"], noc["tok_s"], ours_n["tok_s"], r_noc,
                    C.verdict(r_noc >= 5), f"{noc['same_ids_as_merged']:.0%}"]],
                  title=f"\n(m) vs (c): per-token rates (ours = K merged models on all {N_Q} questions)"))

    total = time.perf_counter() - t_all
    print(f"load average at the end: {C.loadavg()} (1/5/15 min; {C.machine()['nproc']} CPUs)")
    print(f"\nbench_decode finished in {total:.0f} s; targets: "
          + ", ".join(f"{k} {C.verdict(v)}" for k, v in verdicts.items() if v is not None))
    for r in runs.values():
        r.pop("ids", None)
    path = C.save("bench_decode", {"runs": runs, "verdicts": verdicts, "seconds": total,
                                   "settings": {"n": N_Q, "new": NEW, "batch": BATCH, "ks": KS, "k_naive": kn,
                                                "extra": EXTRA}})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
