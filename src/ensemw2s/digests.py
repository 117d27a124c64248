"""File checksums: sha256 (a file's identity: wheel pins, manifests, resume keys) and CRC32C (checked on every
download while the bytes arrive). The one home of these helpers; it imports nothing of the project.
"""
from __future__ import annotations

import hashlib
import os

MiB = 1024 * 1024


class _Crc32c:
    """CRC32C (Castagnoli) with hashlib's ``update``/``hexdigest`` interface (google-crc32c, C/SSE4.2)."""

    def __init__(self):
        import google_crc32c

        self._c = google_crc32c.Checksum()

    def update(self, data) -> None:
        self._c.update(data)

    def hexdigest(self) -> str:
        return self._c.hexdigest().decode()


HASHES = {"sha256": hashlib.sha256, "crc32c": _Crc32c}


def file_digests(path: str | os.PathLike, algos: tuple[str, ...] = ("sha256",), *,
                 chunk_size: int = MiB) -> dict[str, str]:
    """``{algo: hex digest}`` of a file for each of ``algos`` (names in :data:`HASHES`), in one read
    (constant memory)."""
    hs = {a: HASHES[a]() for a in algos}
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            for h in hs.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hs.items()}


def sha256_file(path: str | os.PathLike, *, chunk_size: int = MiB) -> str:
    """Hex sha256 of a file, read in chunks (constant memory)."""
    return file_digests(path, ("sha256",), chunk_size=chunk_size)["sha256"]
