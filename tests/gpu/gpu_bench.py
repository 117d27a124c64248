"""GPU smoke benchmark (run by tests/gpu/smoke.sh): SFT MFU, K=5 ensemble decoding and the multi-adapter
forward on a random-init Qwen2-style model of about 0.5B parameters (Qwen2-0.5B shapes), bf16, no downloads,
no tokenizer files. Prints ONE table at the end (also written as JSON when ``ENSEMW2S_GPU_SMOKE_JSON`` names a
file). Plan: < 8 minutes on one H100/H200 from a fresh machine (``ENSEMW2S_GPU_SMOKE_BUDGET_S``, default 420 s,
skips optional variants once spent).

1. SFT: ``Qwen2ForCausalLM`` (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936,
   tied embeddings), bf16 parameters, fused AdamW, SDPA attention (flash / cuDNN kernels on a GPU), causal-LM
   loss on random token ids (full-length rows: packed, no padding). Variants (``ENSEMW2S_GPU_SMOKE_PLAN``, e.g.
   ``c16x1024,c16x1024f``: e = eager, c = ``torch.compile``, batch x seq, suffix f = **fused linear +
   cross-entropy**: the trunk is compiled and the LM head + CE run chunk by chunk in one autograd function that
   never materialises the [tokens, vocab] logits nor their fp32 copy; it computes the gradients of the hidden
   states and of the head weight in the forward pass, like Liger's fused linear cross-entropy). A compile failure
   or OOM is reported and the other variants still run. MFU = 6 * N * tokens / time / peak (N = all
   parameters; with tied embeddings the LM head is the embedding matrix, so 6N counts its matmul); the PaLM-style
   figure that adds the attention matmuls (12 * layers * hidden * seq per token) is printed next to it.
2. Decode: ``ensemw2s.ensemble.EnsembleDecoder`` over K = 5 random-init copies (different seeds), 64
   random-token prompts (64..256 tokens, left-padded in one batch), 64 new tokens, no EOS (every row decodes
   the full length); baseline: HF ``generate`` (greedy, KV cache) of one copy on the same batch. Target:
   ensemble tokens/s >= 0.8 x HF tokens/s / K. Peak memory: ``max_memory_allocated`` during decoding vs the
   experts' weights + their KV caches.
3. Multi-adapter (issue 15, item 1): one base + K = 5 random LoRA adapters (r=16, all projections), the same
   prompts: ``EnsembleDecoder.from_lora_adapters`` stacked (all experts in one forward per token, our grouped
   LoRA matmul) vs ``mode="switch"`` (one forward per expert), tokens/s against HF ``generate`` of one model
   (target on the CPU: K=3 >= 0.5 x single; here reported for K=5), token ids stacked == switch; and one
   prefill forward of the 5 experts stacked vs one forward per expert (tokens/s).

``ENSEMW2S_GPU_SMOKE_TINY=1`` shrinks every size (and allows CPU) to check the script itself in seconds (run by
``tests/test_gpu_smoke_cpu.py`` in ``make test``). ``ENSEMW2S_GPU_SMOKE_COMPILE=0`` skips torch.compile. The GPU
peak table below is bf16 dense, no sparsity.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
import traceback

import torch

TINY = os.environ.get("ENSEMW2S_GPU_SMOKE_TINY", "0") == "1"
TRY_COMPILE = os.environ.get("ENSEMW2S_GPU_SMOKE_COMPILE", "1") != "0"
BUDGET_S = float(os.environ.get("ENSEMW2S_GPU_SMOKE_BUDGET_S", "420"))  # soft: skip optional variants after
# SFT variants, e.g. "e16x1024,c16x1024,c16x1024f" (e = eager, c = torch.compile; batch x seq; f = fused
# linear + cross-entropy with a compiled trunk)
PLAN = os.environ.get("ENSEMW2S_GPU_SMOKE_PLAN",
                      "e2x64,c2x64,c2x64f" if TINY else "c16x1024,c16x1024f,c32x1024f,e16x1024f")
MULTI = os.environ.get("ENSEMW2S_GPU_SMOKE_MULTI", "1") != "0"  # the multi-adapter part
JSON_OUT = os.environ.get("ENSEMW2S_GPU_SMOKE_JSON")
PROFILE = os.environ.get("ENSEMW2S_GPU_SMOKE_PROFILE", "0") == "1"  # top kernels of each SFT variant
DECODE = os.environ.get("ENSEMW2S_GPU_SMOKE_DECODE", "1") != "0"
T_START = time.perf_counter()

# bf16 dense peak (TFLOP/s), by device name
PEAKS = [("h200", "H200", 989e12), ("h100 pcie", "H100 PCIe", 756e12), ("h100 nvl", "H100 NVL", 835e12),
         ("h100", "H100 SXM", 989e12), ("a100", "A100", 312e12), ("l40s", "L40S", 362e12)]


def elapsed() -> float:
    return time.perf_counter() - T_START


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def qwen2_config(vocab: int | None = None):
    from transformers import Qwen2Config

    if TINY:
        kw = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "vocab_size": vocab or 1000}
    else:
        kw = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
              "intermediate_size": 4864, "vocab_size": vocab or 151936}
    cfg = Qwen2Config(max_position_embeddings=4096, tie_word_embeddings=True, use_cache=False,
                      pad_token_id=0, bos_token_id=None, eos_token_id=None, **kw)
    cfg._attn_implementation = "sdpa"
    return cfg


def build_model(cfg, device, seed: int):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    return model.to(torch.bfloat16)


def device_peak(device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu (no peak table)", None
    name = torch.cuda.get_device_name(device)
    low = name.lower()
    for key, label, peak in PEAKS:
        if key in low:
            return f"{name} -> {label} bf16 dense {peak / 1e12:.0f} TFLOP/s", peak
    return f"{name} (not in the peak table)", None


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device) -> float:
    n = 256 if TINY else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    iters = 3 if TINY else 30
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n ** 3 * iters / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ SFT


class FusedLinearCrossEntropy(torch.autograd.Function):
    """mean CE of ``h @ w.T`` against ``targets``, chunk by chunk over the rows: the [rows, vocab] logits exist
    for one chunk at a time (fp32 only there), and the gradients of ``h`` and ``w`` are computed in the forward
    (the backward only scales them), so nothing of vocabulary size is kept for the backward pass."""

    @staticmethod
    def forward(ctx, h, w, targets, chunk: int):
        n = h.shape[0]
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, n, chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk]
            logits = (hc @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, tc[:, None])[:, 0]).sum()
            # d loss_sum / d logits = softmax - onehot; the mean's 1/n is applied here
            g = torch.exp_(logits.sub_(lse[:, None]))
            g[torch.arange(tc.shape[0], device=g.device), tc] -= 1.0
            g = g.mul_(1.0 / n).to(h.dtype)
            grad_h[s:s + chunk] = g @ w
            grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w.to(w.dtype))
        return loss / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None


def fused_linear_cross_entropy(h, w, targets, chunk: int = 4096):
    return FusedLinearCrossEntropy.apply(h, w, targets, chunk)


def sft_variant(device, *, compiled: bool, fused: bool, batch: int, seq: int, steps: int, warmup: int) -> dict:
    cfg = qwen2_config()
    model = build_model(cfg, device, seed=0)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    if compiled:
        torch._dynamo.reset()  # a fresh graph per variant: no automatic dynamic shapes from a previous one
    if fused:
        trunk = torch.compile(model.model, dynamic=False) if compiled else model.model
        head_w = model.get_output_embeddings().weight
        chunk = 64 if TINY else 4096
    else:
        fwd = torch.compile(model, dynamic=False) if compiled else model
    gen = torch.Generator(device="cpu").manual_seed(1)
    data = [torch.randint(1, cfg.vocab_size, (batch, seq), generator=gen).to(device) for _ in range(4)]

    def step(i):
        x = data[i % len(data)]
        if fused:
            h = trunk(input_ids=x).last_hidden_state
            loss = fused_linear_cross_entropy(h[:, :-1].reshape(-1, h.shape[-1]), head_w, x[:, 1:].reshape(-1), chunk)
        else:
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_warm = time.perf_counter()
    for i in range(warmup):
        loss = step(i)
    sync(device)
    warm_s = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(i)
    sync(device)
    dt = time.perf_counter() - t0
    tokens = batch * seq * steps
    flops_6n = 6 * n_params * tokens
    attn = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq * tokens
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if PROFILE:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for i in range(2):
                step(i)
            sync(device)
        key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=70), flush=True)
    return {"variant": _variant_name(compiled, fused), "batch": batch, "seq": seq, "steps": steps,
            "params_M": n_params / 1e6, "step_s": dt / steps, "tokens_per_s": tokens / dt,
            "flops_6n": flops_6n / dt, "flops_palm": (flops_6n + attn) / dt, "warmup_s": warm_s,
            "loss": float(loss.detach()), "peak_mem_gib": peak_mem}


def _variant_name(compiled: bool, fused: bool) -> str:
    return ("compiled" if compiled else "eager") + (" + fused CE" if fused else "")


def run_sft(device) -> list[dict]:
    plan = []
    for item in PLAN.split(","):
        item = item.strip()
        fused = item.endswith("f")
        b, s = item[1:].rstrip("f").split("x")
        plan.append((item[0] == "c", fused, int(b), int(s)))
    steps, warmup = (2, 1) if TINY else (15, 3)
    results = []
    for i, (compiled, fused, batch, seq) in enumerate(plan):
        name = _variant_name(compiled, fused)
        if compiled and not TRY_COMPILE:
            continue
        if i >= 2 and elapsed() > BUDGET_S * 0.5:
            log(f"skip SFT variant {name} b={batch} s={seq}: time budget")
            results.append({"variant": name, "batch": batch, "seq": seq, "failed": "skipped (time budget)"})
            continue
        log(f"SFT {name} batch={batch} seq={seq} ...")
        try:
            r = sft_variant(device, compiled=compiled, fused=fused, batch=batch, seq=seq, steps=steps, warmup=warmup)
        except Exception as exc:  # noqa: BLE001 - report, keep going (compile failure, OOM)
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(f"  FAILED: {msg}")
            traceback.print_exc(limit=3)
            r = {"variant": name, "batch": batch, "seq": seq, "failed": msg}
        else:
            log(f"  {r['tokens_per_s']:,.0f} tok/s, step {r['step_s'] * 1e3:.1f} ms, "
                f"{r['flops_6n'] / 1e12:.1f} TFLOP/s (6N), warm-up {r['warmup_s']:.1f} s, loss {r['loss']:.3f}, "
                f"peak {r['peak_mem_gib']:.1f} GiB")
        gc.collect()  # the variant's model and optimizer are garbage now
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results.append(r)
    return results


# --------------------------------------------------------------------------------------------- decode


def make_tokenizer(vocab: int):
    """Word-level tokenizer over "t<id>" words: a prompt of random ids is " ".join(f"t{i}")."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<unk>": 1}
    words.update({f"t{i}": i for i in range(2, vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


def _decode_inputs(cfg, device):
    """Random-token prompts as text for the word-level tokenizer, and the same batch left-padded as tensors."""
    n_prompts = 8 if TINY else 64
    lo, hi = (8, 24) if TINY else (64, 256)
    tok = make_tokenizer(cfg.vocab_size)
    gen = torch.Generator(device="cpu").manual_seed(2)
    lengths = torch.randint(lo, hi + 1, (n_prompts,), generator=gen).tolist()
    ids = [torch.randint(2, cfg.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    prompts = [" ".join(f"t{i}" for i in row) for row in ids]
    assert tok(prompts[0])["input_ids"] == ids[0]
    width = max(lengths)
    x = torch.zeros((n_prompts, width), dtype=torch.long)
    mask = torch.zeros((n_prompts, width), dtype=torch.long)
    for r, row in enumerate(ids):
        x[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    return tok, prompts, lengths, x.to(device), mask.to(device)


def _timed(device, fn, reps: int = 2):
    fn()  # warm-up (kernels, allocator)
    sync(device)
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _hf_generate(model, x, mask, new):
    with torch.inference_mode():
        return model.generate(input_ids=x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=0, use_cache=True)


def run_decode(device, K: int = 5) -> dict:
    from ensemw2s.ensemble import EnsembleDecoder

    new = 8 if TINY else 64
    cfg = qwen2_config()
    cfg.use_cache = True
    tok, prompts, lengths, x, mask = _decode_inputs(cfg, device)
    n_prompts = len(prompts)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    mem0 = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    models = [build_model(cfg, device, seed=10 + k).eval() for k in range(K)]
    for m in models:
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
    weights_bytes = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    res: dict = {"K": K, "prompts": n_prompts, "new_tokens": new, "weights_gib": weights_bytes / 2**30}
    total = n_prompts * new
    t_hf, hf_out = _timed(device, lambda: _hf_generate(models[0], x, mask, new))
    res["hf_tok_s"] = total / t_hf
    log(f"  HF generate K=1: {res['hf_tok_s']:,.0f} tok/s")

    dec1 = EnsembleDecoder(models[:1], [1.0], tok, batch_size=n_prompts)
    dec1.eos_ids = []  # no EOS: every row decodes `new` tokens, like the HF run
    t1, ours1 = _timed(device, lambda: dec1.generate_ids(prompts, new))
    res["ens1_tok_s"] = total / t1
    hf_new = hf_out[:, x.shape[1]:].tolist()
    res["k1_match_hf"] = sum(a == b for a, b in zip(ours1, hf_new)) / n_prompts
    log(f"  EnsembleDecoder K=1: {res['ens1_tok_s']:,.0f} tok/s; identical to HF for "
        f"{res['k1_match_hf']:.0%} of prompts")

    decK = EnsembleDecoder(models, [1.0 + 0.1 * k for k in range(K)], tok, batch_size=n_prompts)
    decK.eos_ids = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    tK, _ = _timed(device, lambda: decK.generate_ids(prompts, new))
    res["ensK_tok_s"] = total / tK
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - mem0
        L, kvh = cfg.num_hidden_layers, cfg.num_key_value_heads
        hd = cfg.hidden_size // cfg.num_attention_heads
        kv = K * L * 2 * kvh * hd * n_prompts * (max(lengths) + new) * 2  # bf16
        res.update(peak_gib=peak / 2**30, kv_gib=kv / 2**30, mem_ratio=peak / (weights_bytes + kv))
    log(f"  EnsembleDecoder K={K}: {res['ensK_tok_s']:,.0f} tok/s")
    return res


def run_multi(device, K: int = 5) -> dict:
    """One base + K random LoRA adapters: stacked decoding / prefill vs one forward per expert."""
    from peft import LoraConfig, get_peft_model

    from ensemw2s.ensemble import EnsembleDecoder
    from ensemw2s.modeling import MultiAdapter, load_lora_adapters

    new = 8 if TINY else 64
    cfg = qwen2_config()
    cfg.use_cache = True
    tok, prompts, lengths, x, mask = _decode_inputs(cfg, device)
    n_prompts = len(prompts)
    total = n_prompts * new
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    res: dict = {"K": K, "prompts": n_prompts, "new_tokens": new}
    with tempfile.TemporaryDirectory(prefix="ensemw2s-gpu-smoke-") as tmp:
        dirs = []
        for k in range(K):
            torch.manual_seed(100 + k)
            pm = get_peft_model(build_model(cfg, device, seed=0), LoraConfig(r=16, lora_alpha=32,
                                                                              target_modules=targets))
            with torch.no_grad():
                for name, prm in pm.named_parameters():
                    if "lora_B" in name:
                        prm.normal_(0.0, 0.01)
            pm.save_pretrained(f"{tmp}/a{k}")
            dirs.append(f"{tmp}/a{k}")
            del pm
        base = build_model(cfg, device, seed=0).eval()
        base.generation_config.eos_token_id = None
        t_hf, _ = _timed(device, lambda: _hf_generate(base, x, mask, new))
        res["hf_tok_s"] = total / t_hf
        alphas = [1.0 + 0.1 * k for k in range(K)]
        out = {}
        for mode in ("stacked", "switch"):
            dec = EnsembleDecoder.from_lora_adapters(build_model(cfg, device, seed=0), dirs, alphas, tok,
                                                     batch_size=n_prompts, mode=mode)
            dec.eos_ids = []
            t, out[mode] = _timed(device, lambda d=dec: d.generate_ids(prompts, new))
            res[f"{mode}_tok_s"] = total / t
            log(f"  {mode} LoRA K={K}: {res[f'{mode}_tok_s']:,.0f} tok/s")
            del dec
            gc.collect()
        res["same_ids"] = sum(a == b for a, b in zip(out["stacked"], out["switch"])) / n_prompts
        # one prefill forward of K experts: stacked vs one forward per expert (no cache, last logits only)
        names = [f"e{k}" for k in range(K)]
        model = load_lora_adapters(build_model(cfg, device, seed=0), dirs, names)
        multi = MultiAdapter(model, names)
        inner = model.get_base_model()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)

        def stacked():
            with torch.inference_mode(), multi.active(n_prompts):
                return inner(input_ids=x.repeat(K, 1), attention_mask=mask.repeat(K, 1),
                             position_ids=pos.repeat(K, 1), use_cache=False, logits_to_keep=1).logits

        def one_by_one():
            outs = []
            with torch.inference_mode():
                for name in names:
                    model.set_adapter(name)
                    outs.append(model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=False,
                                      logits_to_keep=1).logits)
            return torch.cat(outs)

        t_s, lg_s = _timed(device, stacked)
        t_o, lg_o = _timed(device, one_by_one)
        n_tok = int(mask.sum()) * K
        res.update(prefill_stacked_tok_s=n_tok / t_s, prefill_switch_tok_s=n_tok / t_o,
                   prefill_max_abs_diff=float((lg_s.float() - lg_o.float()).abs().max()))
        log(f"  prefill K={K}: stacked {res['prefill_stacked_tok_s']:,.0f} tok/s, one forward per expert "
            f"{res['prefill_switch_tok_s']:,.0f} tok/s")
    return res


# ---------------------------------------------------------------------------------------------- main


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def summary_rows(sft: list[dict], dec: dict, multi: dict, peak: float | None) -> list[list[str]]:
    """The one table: [check, measured, value, target, verdict] per row."""
    rows = []
    for r in sft:
        name = f"SFT {r['variant']} {r['batch']}x{r['seq']}"
        if "failed" in r:
            rows.append([name, "FAILED: " + r["failed"][:60], "", ">= 45 % MFU", "FAIL"])
            continue
        mfu = r["flops_6n"] / peak if peak else None
        mem = f"{r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] == r["peak_mem_gib"] else "peak n/a"
        rows.append([name, f"{r['tokens_per_s']:,.0f} tok/s, {r['step_s'] * 1e3:.1f} ms/step, {mem}",
                     f"MFU {_fmt(mfu, '.1%') or 'n/a'} (+attn {_fmt(r['flops_palm'] / peak if peak else None, '.1%') or 'n/a'})",
                     ">= 45 % MFU", ("PASS" if mfu >= 0.45 else "FAIL") if mfu is not None else "n/a"])
    if "failed" in dec:
        rows.append([f"decode K={dec.get('K', 5)} merged models", "FAILED: " + dec["failed"][:60], "",
                     ">= 0.8 x HF/K", "FAIL"])
    else:
        K = dec["K"]
        ratio = dec["ensK_tok_s"] / (dec["hf_tok_s"] / K)
        rows.append([f"decode K={K} separate models / (HF/K)",
                     f"HF {dec['hf_tok_s']:,.0f}, K=1 {dec['ens1_tok_s']:,.0f} (= HF ids {dec['k1_match_hf']:.0%}), "
                     f"K={K} {dec['ensK_tok_s']:,.0f} tok/s", f"{ratio:.2f}", ">= 0.8", "PASS" if ratio >= 0.8 else "FAIL"])
        if "mem_ratio" in dec:
            rows.append([f"decode K={K} memory / (weights + KV)",
                         f"peak {dec['peak_gib']:.2f} GiB, weights {dec['weights_gib']:.2f} + KV {dec['kv_gib']:.2f}",
                         f"{dec['mem_ratio']:.2f}", "<= 1.25", "PASS" if dec["mem_ratio"] <= 1.25 else "FAIL"])
    if "failed" in multi:
        rows.append(["multi-adapter (stacked LoRA)", "FAILED: " + multi["failed"][:60], "", "", "FAIL"])
    else:
        K = multi["K"]
        rows.append([f"multi-adapter decode K={K} stacked / single model",
                     f"HF {multi['hf_tok_s']:,.0f}, stacked {multi['stacked_tok_s']:,.0f}, switch "
                     f"{multi['switch_tok_s']:,.0f} tok/s", f"{multi['stacked_tok_s'] / multi['hf_tok_s']:.2f}",
                     "report (CPU: K=3 >= 0.5)", "n/a"])
        rows.append([f"multi-adapter decode K={K} stacked / switch", f"same ids {multi['same_ids']:.0%}",
                     f"{multi['stacked_tok_s'] / multi['switch_tok_s']:.2f}", "report", "n/a"])
        rows.append([f"multi-adapter prefill K={K} stacked / one forward per expert",
                     f"{multi['prefill_stacked_tok_s']:,.0f} vs {multi['prefill_switch_tok_s']:,.0f} tok/s, "
                     f"max |d logit| {multi['prefill_max_abs_diff']:.2g}",
                     f"{multi['prefill_stacked_tok_s'] / multi['prefill_switch_tok_s']:.2f}", "report", "n/a"])
    return rows


def print_table(rows: list[list[str]]) -> None:
    headers = ["check", "measured", "value", "target", "verdict"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def main() -> int:
    cuda = torch.cuda.is_available()
    if not cuda and not TINY:
        print("no CUDA GPU: nothing to benchmark (set ENSEMW2S_GPU_SMOKE_TINY=1 to check the script on CPU)")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    import transformers

    dev_desc, peak = device_peak(device)
    log(f"device: {dev_desc}; torch {torch.__version__}, transformers {transformers.__version__}"
        f"{' (TINY sizes)' if TINY else ''}")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    mm = matmul_tflops(device)
    log(f"measured bf16 matmul: {mm / 1e12:.1f} TFLOP/s")
    sft = run_sft(device)
    parts = {}
    for name, enabled, fn in (("decode", DECODE, run_decode), ("multi", MULTI, run_multi)):
        if not enabled:
            parts[name] = {"failed": f"skipped (ENSEMW2S_GPU_SMOKE_{name.upper()}=0)"}
            continue
        if elapsed() > BUDGET_S * 0.9:
            parts[name] = {"failed": "skipped (time budget)"}
            continue
        log(f"{name} K=5 ...")
        try:
            parts[name] = fn(device, K=5)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(limit=5)
            parts[name] = {"failed": f"{type(exc).__name__}: {exc}"}
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    rows = summary_rows(sft, parts["decode"], parts["multi"], peak)
    print("\n=== GPU smoke summary " + "=" * 60)
    print(f"device: {dev_desc}; measured bf16 matmul {mm / 1e12:.1f} TFLOP/s; torch {torch.__version__}; "
          f"elapsed {elapsed():.0f} s")
    print_table(rows)
    if JSON_OUT:
        with open(JSON_OUT, "w", encoding="utf-8") as fh:
            json.dump({"device": dev_desc, "matmul_flops": mm, "sft": sft, "decode": parts["decode"],
                       "multi": parts["multi"], "rows": rows, "elapsed_s": elapsed()}, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
