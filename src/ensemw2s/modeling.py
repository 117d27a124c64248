"""Models: loading and saving (with weight checks before a long load), and what the rest of the code needs to
know about a loaded model whatever wraps it (a peft LoRA wrapper, the transformers version's keywords).

One home for: resolving a model name to a folder, checking a weights folder (safetensors only, truncation),
loading a causal LM (optionally with a LoRA adapter), saving/loading an ensemw2s model folder, the tokenizer
fingerprint, unwrapping peft, the KV-cache keyword of a forward, the compute precision (``resources.dtype``:
:func:`resolve_dtype`, :func:`describe_dtype`) and K LoRA adapters of one base in one forward
(:class:`MultiAdapter`).
"""
from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path
from typing import Any, Optional

from ensemw2s.errors import ConfigError, ModelError

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
    """Load (model, tokenizer). ``adapter``: a LoRA adapter folder applied on top (kept unmerged; its weights stay
    float32 whatever the base's dtype). ``dtype``: a torch dtype, a ``resources.dtype`` name (:data:`DTYPES`) or
    None (bfloat16 on a GPU, float32 on a CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if Path(path).is_dir():
        check_weights_folder(Path(path))
    dev = torch_device()
    if isinstance(dtype, str):
        dtype = torch_dtype(resolve_dtype(dtype, dev.type))
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


def load_lora_adapters(base_model, adapter_dirs, names):
    """One ``PeftModel`` holding the LoRA adapters ``adapter_dirs`` under ``names`` (inference only), on top of
    ``base_model`` (wrapped in place; a PeftModel gets the adapters added). The base weights are in memory once.
    The adapters' weights are float32 whatever the base's dtype (peft's default)."""
    from peft import PeftModel

    dirs = [str(d) for d in adapter_dirs]
    names = list(names)
    if not dirs or len(names) != len(dirs) or len(set(names)) != len(names):
        raise ValueError(f"need one unique adapter name per adapter folder; got {names} for {len(dirs)} folders")
    for d in dirs:
        if Path(d).is_dir():
            check_weights_folder(Path(d))
    if isinstance(base_model, PeftModel):
        model = base_model
        todo = list(zip(names, dirs))
    else:
        model = PeftModel.from_pretrained(base_model, dirs[0], adapter_name=names[0], is_trainable=False)
        todo = list(zip(names[1:], dirs[1:]))
    for name, d in todo:
        model.load_adapter(d, adapter_name=name, is_trainable=False)
    model.eval()
    return model


@contextlib.contextmanager
def merged_adapter(peft_model, name: str):
    """Within: ``peft_model`` runs adapter ``name`` merged into the base weights (no LoRA term in the forward).
    On the way out the base weights are restored exactly (a copy taken before the merge, written back after
    peft's unmerge): merging rounds ``W + s B A`` to the weights' dtype, and in bfloat16 unmerging does not give
    ``W`` back (measured: up to 0.004), so merging one expert after another would otherwise drift."""
    import torch
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer) and name in m.lora_A]
    if not layers:
        raise ModelError(f"no LoRA layer of {type(peft_model).__name__} holds adapter {name!r}")
    saved = [(m.get_base_layer().weight, m.get_base_layer().weight.detach().clone()) for m in layers]
    peft_model.set_adapter(name)
    peft_model.merge_adapter()
    try:
        yield peft_model
    finally:
        peft_model.unmerge_adapter()
        with torch.no_grad():
            for weight, copy in saved:
                weight.copy_(copy)


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


# --------------------------------------------------------------------------- precision (resources.dtype)

DTYPES = ("auto", "float32", "bfloat16")
# What ``auto`` picks on a CPU with native bf16 matmuls (avx512_bf16 / amx_bf16): measured in
# docs/performance.md §5 (bf16 vs fp32: forward, decode, LoRA SFT, accuracy).
CPU_AUTO_BF16 = True


def cpu_bf16_feature() -> Optional[str]:
    """The CPU flag that gives native bf16 matmuls here (``amx_bf16`` or ``avx512_bf16``), or None."""
    flags: set = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    for flag in ("amx_bf16", "avx512_bf16"):
        if flag in flags:
            return flag
    try:  # no /proc (macOS, some containers): ask torch
        import torch

        if torch.cpu._is_amx_tile_supported():
            return "amx_bf16"
        if torch.cpu._is_avx512_bf16_supported():
            return "avx512_bf16"
    except (AttributeError, ImportError, RuntimeError):
        pass
    return None


def check_dtype(name: str, key: str = "resources.dtype") -> str:
    if name not in DTYPES:
        raise ConfigError(f"{key}: {name!r} is not allowed; allowed values: {', '.join(DTYPES)}")
    return name


def resolve_dtype(name: str = "auto", device: Optional[str] = None) -> str:
    """``float32`` or ``bfloat16`` for a ``resources.dtype`` value on ``device`` (``cuda``/``cpu``; default: this
    machine's). ``auto``: bfloat16 on a GPU; on a CPU bfloat16 where it has native bf16 matmuls
    (:func:`cpu_bf16_feature`, and :data:`CPU_AUTO_BF16`), else float32."""
    check_dtype(name)
    if name != "auto":
        return name
    if device is None:
        device = torch_device().type
    if device == "cuda":
        return "bfloat16"
    return "bfloat16" if CPU_AUTO_BF16 and cpu_bf16_feature() else "float32"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def dtype_key(name: str) -> dict:
    """What a step adds to its resume key for ``resources.dtype = name``: nothing for float32 (the keys of runs
    made before the setting existed stay valid), ``{"dtype": "bfloat16"}`` otherwise. The *resolved* dtype is
    used, so an ``auto`` run on a machine without bf16 reuses float32 results and never the other way round."""
    resolved = resolve_dtype(name)
    return {} if resolved == "float32" else {"dtype": resolved}


def describe_dtype(cfg_or_name: Any = "auto") -> str:
    """One line for a run header: the precision the model steps will use here and why. Takes a Config, its
    ``resources`` section or a ``resources.dtype`` value."""
    name = getattr(getattr(cfg_or_name, "resources", cfg_or_name), "dtype", cfg_or_name)
    check_dtype(name)
    device = torch_device().type
    resolved = resolve_dtype(name, device)
    if name != "auto":
        why = "set by resources.dtype"
    elif device == "cuda":
        why = "auto: GPU"
    else:
        feature = cpu_bf16_feature()
        why = f"auto: the CPU has {feature}" if feature and resolved == "bfloat16" else (
            "auto: the CPU has no native bf16 (avx512_bf16/amx_bf16)" if not feature else "auto")
    return f"precision: {resolved} on {device} ({why}; resources.dtype=float32 forces full precision)"


# --------------------------------------------------------------------------- K LoRA adapters in one forward


class MultiAdapter:
    """K LoRA adapters of one peft model applied in ONE forward over the shared base.

    The batch is K equal blocks of rows: rows ``k*n .. (k+1)*n - 1`` go through adapter ``names[k]``. Inside
    :meth:`active`, every LoRA layer adds ``scaling_k * B_k A_k x`` to block k of the base layer's output; the
    base weights are read once for all K experts, and a KV cache built inside is one cache for the stacked
    batch (select its rows with :meth:`block_rows`).

    ``impl``: ``"grouped"`` (default): our own grouped LoRA matmul, ``bmm`` + ``baddbmm`` over the K blocks
    (the blocks are contiguous, so no gather; 2 kernels per LoRA layer); ``"peft"``: peft's mixed-adapter
    batches (``adapter_names=``: a gather, two matmuls, a scaling and an indexed add per adapter per layer).
    benchmarks/bench_decode.py measures both (docs/performance.md §1).
    """

    IMPLS = ("grouped", "peft")

    def __init__(self, peft_model, names, impl: str = "grouped"):
        import torch
        from peft.tuners.lora import LoraLayer

        if impl not in self.IMPLS:
            raise ValueError(f"impl must be one of {', '.join(self.IMPLS)}; got {impl!r}")
        self.model, self.names, self.impl = peft_model, list(names), impl
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"need unique adapter names; got {self.names}")
        self._layers = []
        for mod in peft_model.modules():
            if not isinstance(mod, LoraLayer) or not any(n in mod.lora_A for n in self.names):
                continue
            missing = [n for n in self.names if n not in mod.lora_A]
            variants = [n for n in self.names if n in getattr(mod, "lora_variant", {})]
            if missing or variants or getattr(mod, "merged", False):
                raise ModelError(f"LoRA layer {type(mod).__name__} cannot run adapters {self.names} in one "
                                 f"forward (missing {missing}, variants {variants}, merged "
                                 f"{getattr(mod, 'merged', False)}): use one forward per expert")
            if impl == "grouped":
                # (K, in, r) and (K, r, out): x_k @ A_k^T @ B_k^T, the product peft computes for one adapter
                a = torch.stack([mod.lora_A[n].weight.t() for n in self.names]).contiguous()
                b = torch.stack([mod.lora_B[n].weight.t() for n in self.names]).contiguous()
                s = torch.tensor([float(mod.scaling[n]) for n in self.names], dtype=a.dtype,
                                 device=a.device).view(-1, 1, 1)
                self._layers.append((mod, a, b, s, (b * s).contiguous()))  # the scaling folded into B too
            else:
                self._layers.append((mod, None, None, None, None))
        if not self._layers:
            raise ModelError(f"no LoRA layer of {type(peft_model).__name__} holds adapters {self.names}")

    def __len__(self) -> int:
        return len(self.names)

    @staticmethod
    def block_rows(keep, n: int, k: int):
        """Indices into a K-block batch of ``n`` rows per block that keep rows ``keep`` of every block."""
        import torch

        return (torch.arange(k, device=keep.device)[:, None] * n + keep[None, :]).reshape(-1)

    @contextlib.contextmanager
    def active(self, rows_per_block: int, block: Optional[int] = None):
        """Within: forwards of ``self.model`` (or of its trunk) on a batch of K x ``rows_per_block`` rows; with
        ``block`` = k, on ``rows_per_block`` rows that all go through adapter k (one block on its own)."""
        if self.model.training:
            raise RuntimeError("MultiAdapter is for inference: put the model in eval() first")
        names = self.names if block is None else [self.names[block]]
        if self.impl == "peft":
            rows = [n for n in names for _ in range(rows_per_block)]
            with self.model.base_model._enable_peft_forward_hooks(adapter_names=rows):
                yield
            return
        sel = slice(None) if block is None else slice(block, block + 1)
        for mod, a, b, s, bs in self._layers:
            mod.forward = _grouped_forward(mod.base_layer, a[sel], b[sel], s[sel], bs[sel], len(names))
        try:
            yield
        finally:
            for mod, *_ in self._layers:
                del mod.forward  # back to the class's forward


def _grouped_forward(base_layer, a, b, s, b_scaled, k: int):
    """The forward of a LoRA layer under :meth:`MultiAdapter.active`: ``y + s_k (x_k A_k^T) B_k^T`` per block.
    Same dtype everywhere (float32): the base output is updated in one ``baddbmm`` with the scaling folded into B
    (two kernels per layer). A bf16 base with float32 adapters computes the LoRA term in float32, as peft does."""
    import torch

    def forward(x, *args, **kwargs):
        y = base_layer(x, *args, **kwargs)
        if x.shape[0] % k:
            raise RuntimeError(f"a MultiAdapter batch must hold {k} equal blocks of rows; got {x.shape[0]} rows")
        xs = x.reshape(k, -1, x.shape[-1])
        if y.dtype == a.dtype and xs.dtype == a.dtype:
            return torch.baddbmm(y.view(k, -1, y.shape[-1]), torch.bmm(xs, a), b_scaled).view(y.shape)
        delta = torch.bmm(torch.bmm(xs.to(a.dtype), a), b) * s
        return (y + delta.view(y.shape)).to(y.dtype)

    return forward
