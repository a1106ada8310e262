"""A cheap identity of a scan file: size, mtime and a hash of its coordinates and sampled bytes."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SAMPLE_COUNT = 32
SAMPLE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Fingerprint:
    """Changes whenever the file is rewritten, touched, resized or its coordinates change."""

    size: int
    mtime_ns: int
    content_sha256: str

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(values: dict) -> Fingerprint:
        return Fingerprint(size=int(values["size"]), mtime_ns=int(values["mtime_ns"]), content_sha256=str(values["content_sha256"]))


def fingerprint_file(path, coordinates: tuple[np.ndarray, ...]) -> Fingerprint:
    """Fingerprint ``path`` reading only ``SAMPLE_COUNT`` blocks of it, never the whole file."""
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256()
    for array in coordinates:
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    _hash_samples(digest, path, stat.st_size)
    return Fingerprint(size=stat.st_size, mtime_ns=stat.st_mtime_ns, content_sha256=digest.hexdigest())


def sample_offsets(size: int) -> list[int]:
    """Evenly spaced block offsets covering the start and the end of a file of ``size`` bytes."""
    if size <= SAMPLE_COUNT * SAMPLE_BYTES:
        return list(range(0, size, SAMPLE_BYTES))
    last = size - SAMPLE_BYTES
    return [round(i * last / (SAMPLE_COUNT - 1)) for i in range(SAMPLE_COUNT)]


def sample_digest(path, size: int | None = None) -> str:
    """sha256 of the sampled blocks of ``path`` (used to spot a damaged memory map cheaply)."""
    digest = hashlib.sha256()
    _hash_samples(digest, path, os.path.getsize(path) if size is None else size)
    return digest.hexdigest()


def _hash_samples(digest, path, size: int) -> None:
    with open(path, "rb") as handle:
        for offset in sample_offsets(size):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE_BYTES))
