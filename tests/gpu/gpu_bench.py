"""GPU smoke benchmark (run by tests/gpu/smoke.sh): SFT MFU and K=5 ensemble decoding on a random-init
Qwen2-style model of about 0.5B parameters (Qwen2-0.5B shapes), bf16, no downloads, no tokenizer files.

1. SFT: ``Qwen2ForCausalLM`` (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936,
   tied embeddings), bf16 parameters, fused AdamW, SDPA attention, standard causal-LM loss on random token
   ids. Variants: eager and ``torch.compile`` (a compile failure is reported and the eager number is kept).
   MFU = 6 * N * tokens / time / peak (N = all parameters; with tied embeddings the LM head is the
   embedding matrix, so 6N counts its matmul); the PaLM-style figure that adds the attention matmuls
   (12 * layers * hidden * seq per token) is printed next to it.
2. Decode: ``ensemw2s.ensemble.EnsembleDecoder`` over K = 5 random-init copies (different seeds), 64
   random-token prompts (64..256 tokens, left-padded in one batch), 64 new tokens, no EOS (every row decodes
   the full length); baseline: HF ``generate`` (greedy, KV cache) of one copy on the same batch. Target:
   ensemble tokens/s >= 0.8 x HF tokens/s / K. Peak memory: ``max_memory_allocated`` during decoding vs the
   experts' weights + their KV caches.

``ENSEMW2S_GPU_SMOKE_TINY=1`` shrinks every size (and allows CPU) to check the script itself in seconds.
``ENSEMW2S_GPU_SMOKE_COMPILE=0`` skips torch.compile. The GPU peak table below is bf16 dense, no sparsity.
"""
from __future__ import annotations

import gc
import os
import sys
import time
import traceback

import torch

TINY = os.environ.get("ENSEMW2S_GPU_SMOKE_TINY", "0") == "1"
TRY_COMPILE = os.environ.get("ENSEMW2S_GPU_SMOKE_COMPILE", "1") != "0"
BUDGET_S = float(os.environ.get("ENSEMW2S_GPU_SMOKE_BUDGET_S", "270"))  # soft: skip optional variants after
# SFT variants, e.g. "e16x1024,c16x1024,c32x1024" (e = eager, c = torch.compile; batch x seq)
PLAN = os.environ.get("ENSEMW2S_GPU_SMOKE_PLAN", "e2x64,c2x64" if TINY else "e16x1024,c16x1024,c32x1024")
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


def sft_variant(device, *, compiled: bool, batch: int, seq: int, steps: int, warmup: int) -> dict:
    cfg = qwen2_config()
    model = build_model(cfg, device, seed=0)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    fwd = model
    note = ""
    if compiled:
        torch._dynamo.reset()  # a fresh graph per variant: no automatic dynamic shapes from a previous one
        fwd = torch.compile(model, dynamic=False)
    gen = torch.Generator(device="cpu").manual_seed(1)
    data = [torch.randint(1, cfg.vocab_size, (batch, seq), generator=gen).to(device) for _ in range(4)]

    def step(i):
        x = data[i % len(data)]
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
    out = {"variant": ("compiled" if compiled else "eager"), "batch": batch, "seq": seq, "steps": steps,
           "params_M": n_params / 1e6, "step_s": dt / steps, "tokens_per_s": tokens / dt,
           "flops_6n": flops_6n / dt, "flops_palm": (flops_6n + attn) / dt, "warmup_s": warm_s,
           "loss": float(loss.detach()), "peak_mem_gib": peak_mem, "note": note}
    return out


def run_sft(device) -> list[dict]:
    plan = []
    for item in PLAN.split(","):
        b, s = item.strip()[1:].split("x")
        plan.append((item.strip()[0] == "c", int(b), int(s)))
    steps, warmup = (2, 1) if TINY else (15, 3)
    results = []
    for i, (compiled, batch, seq) in enumerate(plan):
        if compiled and not TRY_COMPILE:
            continue
        if i >= 2 and elapsed() > BUDGET_S * 0.45:
            log(f"skip SFT variant compiled={compiled} b={batch} s={seq}: time budget")
            continue
        log(f"SFT {'compiled' if compiled else 'eager'} batch={batch} seq={seq} ...")
        try:
            r = sft_variant(device, compiled=compiled, batch=batch, seq=seq, steps=steps, warmup=warmup)
            gc.collect()  # the variant's model and optimizer are garbage now
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - report, keep going (compile failure, OOM)
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(f"  FAILED: {msg}")
            traceback.print_exc(limit=3)
            r = {"variant": ("compiled" if compiled else "eager"), "batch": batch, "seq": seq, "failed": msg}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        else:
            log(f"  {r['tokens_per_s']:,.0f} tok/s, step {r['step_s'] * 1e3:.1f} ms, "
                f"{r['flops_6n'] / 1e12:.1f} TFLOP/s (6N), warm-up {r['warmup_s']:.1f} s, loss {r['loss']:.3f}, "
                f"peak {r['peak_mem_gib']:.1f} GiB")
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


def run_decode(device, K: int = 5) -> dict:
    from ensemw2s.ensemble import EnsembleDecoder

    n_prompts, new = (8, 8) if TINY else (64, 64)
    lo, hi = (8, 24) if TINY else (64, 256)
    cfg = qwen2_config()
    cfg.use_cache = True
    tok = make_tokenizer(cfg.vocab_size)
    gen = torch.Generator(device="cpu").manual_seed(2)
    lengths = torch.randint(lo, hi + 1, (n_prompts,), generator=gen).tolist()
    ids = [torch.randint(2, cfg.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    prompts = [" ".join(f"t{i}" for i in row) for row in ids]
    assert tok(prompts[0])["input_ids"] == ids[0]

    if device.type == "cuda":
        torch.cuda.empty_cache()
    mem0 = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    models = [build_model(cfg, device, seed=10 + k).eval() for k in range(K)]
    for m in models:
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
    weights_bytes = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    res: dict = {"K": K, "prompts": n_prompts, "new_tokens": new, "weights_gib": weights_bytes / 2**30}

    def timed(fn, reps=2):
        fn()  # warm-up (kernels, allocator)
        sync(device)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        return best, out

    total = n_prompts * new
    # HF generate, one model, same batch, left padding
    width = max(lengths)
    x = torch.zeros((n_prompts, width), dtype=torch.long)
    mask = torch.zeros((n_prompts, width), dtype=torch.long)
    for r, row in enumerate(ids):
        x[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    x, mask = x.to(device), mask.to(device)

    def hf():
        with torch.inference_mode():
            return models[0].generate(input_ids=x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False, pad_token_id=0, use_cache=True)

    t_hf, hf_out = timed(hf)
    res["hf_tok_s"] = total / t_hf
    log(f"  HF generate K=1: {res['hf_tok_s']:,.0f} tok/s")

    dec1 = EnsembleDecoder(models[:1], [1.0], tok, batch_size=n_prompts)
    dec1.eos_ids = []  # no EOS: every row decodes `new` tokens, like the HF run
    t1, ours1 = timed(lambda: dec1.generate_ids(prompts, new))
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
    tK, _ = timed(lambda: decK.generate_ids(prompts, new))
    res["ensK_tok_s"] = total / tK
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - mem0
        L, kvh = cfg.num_hidden_layers, cfg.num_key_value_heads
        hd = cfg.hidden_size // cfg.num_attention_heads
        kv = K * L * 2 * kvh * hd * n_prompts * (max(lengths) + new) * 2  # bf16
        res.update(peak_gib=peak / 2**30, kv_gib=kv / 2**30, mem_ratio=peak / (weights_bytes + kv))
    log(f"  EnsembleDecoder K={K}: {res['ensK_tok_s']:,.0f} tok/s")
    return res


# ---------------------------------------------------------------------------------------------- main


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
    dec = {"failed": "skipped (ENSEMW2S_GPU_SMOKE_DECODE=0)"}
    if DECODE:
        log("decode K=5 ...")
        try:
            dec = run_decode(device, K=5)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(limit=5)
            dec = {"failed": f"{type(exc).__name__}: {exc}"}

    ok_sft = [r for r in sft if "failed" not in r]
    best = max(ok_sft, key=lambda r: r["tokens_per_s"]) if ok_sft else None
    print("\n=== GPU smoke summary " + "=" * 60)
    print(f"device: {dev_desc}; measured bf16 matmul {mm / 1e12:.1f} TFLOP/s; elapsed {elapsed():.0f} s")
    print(f"{'SFT variant':22s} {'tok/s':>10s} {'step ms':>8s} {'TFLOP/s':>8s} {'MFU(6N)':>8s} "
          f"{'MFU(+attn)':>10s} {'peak GiB':>8s}")
    for r in sft:
        name = f"{r['variant']} b{r['batch']}x{r['seq']}"
        if "failed" in r:
            print(f"{name:22s} FAILED: {r['failed']}")
            continue
        mfu = f"{r['flops_6n'] / peak:8.1%}" if peak else f"{'n/a':>8s}"
        mfu2 = f"{r['flops_palm'] / peak:10.1%}" if peak else f"{'n/a':>10s}"
        print(f"{name:22s} {r['tokens_per_s']:10,.0f} {r['step_s'] * 1e3:8.1f} {r['flops_6n'] / 1e12:8.1f} "
              f"{mfu} {mfu2} {r['peak_mem_gib']:8.1f}")
    if best is not None and peak:
        mfu = best["flops_6n"] / peak
        print(f"SFT MFU target >= 45 % (6N, best variant {best['variant']} b{best['batch']}x{best['seq']}): "
              f"{mfu:.1%} -> {'PASS' if mfu >= 0.45 else 'FAIL'}")
    elif best is not None:
        print("SFT MFU: no bf16 peak known for this device (n/a)")
    else:
        print("SFT MFU: every variant failed -> FAIL")
    if "failed" in dec:
        print(f"decode K=5: FAILED: {dec['failed']}")
    else:
        K = dec["K"]
        ratio = dec["ensK_tok_s"] / (dec["hf_tok_s"] / K)
        print(f"decode ({dec['prompts']} prompts x {dec['new_tokens']} new tokens, batch {dec['prompts']}): "
              f"HF generate K=1 {dec['hf_tok_s']:,.0f} tok/s | EnsembleDecoder K=1 {dec['ens1_tok_s']:,.0f} "
              f"tok/s (same tokens as HF for {dec['k1_match_hf']:.0%} of prompts) | K={K} "
              f"{dec['ensK_tok_s']:,.0f} tok/s")
        print(f"decode K={K} target ensemble >= 0.8 x HF/K: ratio {ratio:.2f} -> {'PASS' if ratio >= 0.8 else 'FAIL'}")
        if "mem_ratio" in dec:
            print(f"decode K={K} memory: peak {dec['peak_gib']:.2f} GiB vs weights {dec['weights_gib']:.2f} + KV "
                  f"{dec['kv_gib']:.2f} GiB: ratio {dec['mem_ratio']:.2f} -> "
                  f"{'PASS' if dec['mem_ratio'] <= 1.25 else 'FAIL'} (target <= 1.25)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
