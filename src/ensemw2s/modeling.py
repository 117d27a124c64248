"""Models: loading and saving (with weight checks before a long load), and what the rest of the code needs to
know about a loaded model whatever wraps it (a peft LoRA wrapper, the transformers version's keywords).

One home for: resolving a model name to a folder, checking a weights folder (safetensors only, truncation),
loading a causal LM (optionally with a LoRA adapter), saving/loading an ensemw2s model folder, the tokenizer
fingerprint, unwrapping peft, and the KV-cache keyword of a forward.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional

from ensemw2s.errors import ModelError

MODEL_INFO_FILE = "ensemw2s_model.json"


# --------------------------------------------------------------------------- loading


def check_weights_folder(path: Path) -> None:
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise ModelError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise ModelError(f"model folder {path} has no weights (*.safetensors)")
    if not list(path.glob("*.safetensors")):
        # never unpickle: *.bin files are pickles and can run code on load
        raise ModelError(f"model folder {path} holds only pickled weights (*.bin); only safetensors are loaded")
    for f in path.glob("*.safetensors"):
        _check_safetensors(f)


def _check_safetensors(path: Path) -> None:
    """Cheap header check so a corrupt or truncated file is named before a long load."""
    import struct

    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelError(f"corrupt safetensors file {path}: shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size:
            raise ModelError(f"corrupt safetensors file {path}: header length {n} exceeds file size {size}")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise ModelError(f"corrupt safetensors file {path}: header is not JSON (is it a pickle?)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ModelError(f"corrupt safetensors file {path}: truncated ({size} bytes, needs {8 + n + end})")


def resolve_model_path(name_or_path: str) -> str:
    """Registry name / local folder / s3:// folder / hub id -> something ``from_pretrained`` loads."""
    if name_or_path.startswith("s3://"):
        from ensemw2s import storage

        return str(storage.fetch_uri_folder(name_or_path))
    from ensemw2s import assets

    return assets.resolve_model(name_or_path)


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, *, adapter: Optional[str] = None, dtype=None):
    """Load (model, tokenizer). ``adapter``: a LoRA adapter folder applied on top (kept unmerged)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if Path(path).is_dir():
        check_weights_folder(Path(path))
    dev = torch_device()
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager"
                                                 if dev.type == "cpu" else "sdpa")
    tok = load_tokenizer(path)
    if adapter:
        from peft import PeftModel

        check_weights_folder(Path(adapter))
        model = PeftModel.from_pretrained(model, adapter)
    model.to(dev)
    model.eval()
    return model, tok


def save_model(model, tokenizer, out: Path, *, base_model: str, lora: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / MODEL_INFO_FILE).write_text(json.dumps({"base_model": base_model, "lora": lora}, indent=1))


def load_saved(folder: str | Path, *, dtype=None):
    """Load a model saved by :func:`save_model` (a full model, or a LoRA adapter on its base)."""
    folder = Path(folder)
    info_file = folder / MODEL_INFO_FILE
    if not info_file.is_file():
        raise ModelError(f"{folder} is not a saved ensemw2s model (no {MODEL_INFO_FILE})")
    info = json.loads(info_file.read_text())
    if info["lora"]:
        return load_causal_lm(info["base_model"], adapter=str(folder), dtype=dtype)
    return load_causal_lm(str(folder), dtype=dtype)


def tokenizer_signature(tok) -> str:
    """A fingerprint of a tokenizer's vocabulary: experts must share one tokenizer."""
    import hashlib

    vocab = tok.get_vocab()
    items = sorted(vocab.items(), key=lambda kv: kv[1])
    return hashlib.sha1(json.dumps(items[:5000] + [len(vocab)]).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- what a loaded model is made of


def unwrap_peft(model):
    """The transformers model inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        try:
            return get_base()
        except (AttributeError, NotImplementedError):  # pragma: no cover - defensive
            return model
    return model


def decoder_parts(model):
    """(decoder trunk, lm_head, softcap) of a causal LM, through a peft wrapper if present."""
    base = unwrap_peft(model)
    trunk = getattr(base, "model", None)
    head = base.get_output_embeddings()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if trunk is None or head is None:
        raise ModelError(f"unsupported model class {type(base).__name__}: no .model trunk / output embeddings")
    return trunk, head, cap


def accepts(fn: Any, name: str) -> bool:
    """Whether callable ``fn`` takes a parameter ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def cache_keyword(module) -> str:
    """The KV-cache keyword of ``module.forward`` (peft unwrapped): transformers 5.x renamed
    ``past_key_values`` to ``cache`` in some forwards; use what this one takes."""
    return "cache" if accepts(unwrap_peft(module).forward, "cache") else "past_key_values"
