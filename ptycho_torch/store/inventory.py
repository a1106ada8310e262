"""The memory maps and groups caches in a data directory: what they hold, whether they are valid, which files are ours."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ptycho.grouping import GroupingSettings
from ptycho.raw_data import Grouping
from ptycho.scan_file import read_scan
from ptycho_torch.store import groups_cache
from ptycho_torch.store.atomic import is_temporary, open_regular, read_regular, refuse_symlinked_directory
from ptycho_torch.store.fingerprint import Fingerprint, fingerprint_file
from ptycho_torch.store.locks import LOCK_NAME, is_lock_file
from ptycho_torch.store.groups_cache import GroupingKey, read_cache, read_metadata, stale_reason
from ptycho_torch.store.json_checks import has_signature, parse_json_object
from ptycho_torch.store.memmap import (
    DIFFRACTION, ENERGY, GROUND_TRUTH, MANIFEST, MANIFEST_SIGNATURE, DiffractionMemmap, Manifest,
)
from ptycho_torch.store.memmap import stale_reason as memmap_stale_reason

logger = logging.getLogger(__name__)

MEMORY_MAP = "memory map"
GROUPS = "groups"

_DATASET_DIRECTORY = re.compile(r"^.+-[0-9a-f]{12}$")
_GROUPS_CACHE = re.compile(r"^groups-[0-9a-f]{16}" + re.escape(groups_cache.SUFFIX) + "$")
_FIXED_NAMES = frozenset({MANIFEST, DIFFRACTION, ENERGY, GROUND_TRUTH, LOCK_NAME})
_DAMAGE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)
_TEMPORARY_BASE = re.compile(r"^\.(.+)\.tmp-\d+-[0-9a-f]{8}$")


@dataclass(frozen=True)
class CacheEntry:
    """One memory map (``manifest.json`` and its arrays) or one ``.groups_cache.npz`` file."""

    kind: str
    path: Path
    source: str | None
    parameters: dict
    size_bytes: int
    modified: float
    problem: str | None = None

    @property
    def valid(self) -> bool:
        return self.problem is None

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.modified)

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "source": self.source,
            "parameters": self.parameters,
            "size_bytes": self.size_bytes,
            "modified": self.modified,
            "age_seconds": round(self.age_seconds, 1),
            "valid": self.valid,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class OwnedFiles:
    """The files of one dataset directory that this package wrote, and the ones it must leave alone."""

    directory: Path
    ours: tuple[Path, ...]
    others: tuple[Path, ...] = field(default=())

    @property
    def size_bytes(self) -> int:
        return sum(_size(path) for path in self.ours)


def list_caches(data_dir) -> list[CacheEntry]:
    """Every memory map and groups cache under ``data_dir/<dataset>/``, each checked against its scan file."""
    data_dir = Path(data_dir)
    fingerprints = _SourceFingerprints()
    entries = [_memory_map_entry(path, fingerprints) for path in sorted(data_dir.glob(f"*/{MANIFEST}"))]
    entries += [_groups_entry(path, fingerprints) for path in sorted(data_dir.glob(f"*/*{groups_cache.SUFFIX}"))]
    return sorted(entries, key=lambda e: (str(e.path.parent), e.kind != MEMORY_MAP, e.path.name))


def check_groups_cache(
    path: Path, fingerprint: Fingerprint, key: GroupingKey | None = None, memory_map: dict | None = None
) -> tuple[Grouping | None, str | None]:
    """``(grouping, None)`` when the cache at ``path`` is valid for this data (and ``key``), else ``(None, why not)``.

    ``memory_map`` is the identity of the valid map it must have been computed from; None: the map of
    the cache's directory, which must itself be valid.
    """
    path = Path(path)
    if not path.exists():
        return None, f"no groups cache at {path}"
    try:
        metadata = read_metadata(path)
        key = key or grouping_key_of(metadata)
    except _DAMAGE as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    reason = stale_reason(metadata, key, fingerprint, None)
    if reason:
        return None, reason
    if memory_map is None:
        memory_map = current_map_identity(path.parent, fingerprint)
        if memory_map is None:
            return None, "its memory map is missing, stale or damaged, so it was computed from other data"
    reason = stale_reason(metadata, key, fingerprint, memory_map)
    if reason:
        return None, reason
    with _silenced(groups_cache.logger):
        grouping = read_cache(path, key, fingerprint, memory_map)
    if grouping is None:
        return None, "damaged or edited: its arrays do not match the recorded checksum"
    return grouping, None


def current_map_identity(directory: Path, fingerprint: Fingerprint) -> dict | None:
    """:attr:`DiffractionMemmap.identity` of the map in ``directory`` if it is valid for this scan file, else None."""
    try:
        manifest = Manifest.from_json(read_regular(Path(directory) / MANIFEST))
    except (OSError, ValueError):
        return None
    with _silenced(logging.getLogger(DiffractionMemmap.__module__)):
        store = DiffractionMemmap.open_valid(directory, fingerprint, manifest.counts_to_amplitude)
    return None if store is None else store.identity


def grouping_key_of(metadata: dict) -> GroupingKey:
    """The grouping key recorded in a cache's metadata."""
    values = dict(metadata["grouping"])
    N = int(values.pop("N"))
    return GroupingKey(N=N, settings=GroupingSettings(**values))


def owned_files(data_dir) -> list[OwnedFiles]:
    """The dataset directories of ``data_dir`` this package made, with the files in them that it provably wrote.

    A directory counts as ours when its name is ``<stem>-<12 hex digits>``, it is not a symbolic link and
    it holds at least one file of ours; anything else in it belongs to the user (see :func:`owned_in`).
    """
    found = []
    for directory in sorted(p for p in Path(data_dir).iterdir() if p.is_dir() and not p.is_symlink()):
        if _DATASET_DIRECTORY.match(directory.name):
            files = owned_in(directory)
            if files.ours:
                found.append(files)
    return found


def owned_in(directory: Path) -> OwnedFiles:
    """Split one dataset directory into the files whose contents prove this package wrote them, and the rest.

    Ours: a ``manifest.json`` with the fields and types of a manifest; the ``diffraction.npy`` of its
    size, the ``pattern_energy.npy`` of its sha256 and a ``Y.npy`` it announces, of its shape;
    ``groups-<16 hex>.groups_cache.npz`` files whose metadata parses as a cache's; a ``.lock`` holding
    nothing or a holder's ``<pid> <host>``; temporaries of these names. Never a link or a non-regular file.
    """
    directory = Path(directory)
    manifest = _our_manifest(directory / MANIFEST)
    ours, others = [], []
    for path in sorted(directory.iterdir()):
        (ours if _written_by_us(path, manifest) else others).append(path)
    return OwnedFiles(directory=directory, ours=tuple(ours), others=tuple(others))


def is_ours(name: str) -> bool:
    """Whether a file name is one this package writes in a dataset directory (its contents decide, see :func:`owned_in`)."""
    return name in _FIXED_NAMES or bool(_GROUPS_CACHE.match(name)) or is_temporary(name)


def remove_owned(directory: Path) -> list[Path]:
    """Delete what :func:`owned_in` proves ours, the lock file last, then the directory if it is empty.

    Call while holding the directory's lock: files are checked again here, so a build finished
    since the listing is judged on what it wrote. A builder waiting for the removed lock locks a new one.
    """
    refuse_symlinked_directory(directory)
    files = owned_in(directory)
    removed = []
    for path in sorted(files.ours, key=lambda p: p.name == LOCK_NAME):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    if not files.others:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only succeeds when empty
    return removed


def _our_manifest(path: Path) -> dict | None:
    """The manifest's values if ``path`` is a regular file holding a manifest this package wrote, else None."""
    if path.is_symlink():
        return None
    try:
        values = parse_json_object(read_regular(path))
    except (OSError, ValueError):
        return None
    return values if has_signature(values, MANIFEST_SIGNATURE) else None


def _written_by_us(path: Path, manifest: dict | None) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    name = path.name
    temporary = _TEMPORARY_BASE.match(name)
    if temporary:
        return is_ours(temporary.group(1))
    try:
        if name == MANIFEST:
            return manifest is not None
        if name == LOCK_NAME:
            return is_lock_file(path)
        if _GROUPS_CACHE.match(name):
            read_metadata(path)
            return True
        if manifest is None:
            return False
        if name == DIFFRACTION:
            return path.stat().st_size == manifest["diffraction_bytes"]
        if name == ENERGY:
            return hashlib.sha256(read_regular(path)).hexdigest() == manifest["energy_sha256"]
        if name == GROUND_TRUTH:
            return manifest["has_ground_truth"] and _npy_header(path) == ((manifest["n"], manifest["N"], manifest["N"]), "<c8")
    except _DAMAGE:
        return False
    return False


def _npy_header(path: Path) -> tuple[tuple[int, ...], str]:
    with open_regular(path) as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
    return shape, dtype.str


class _SourceFingerprints:
    """Fingerprints of scan files, each computed once; a missing or unreadable file gives its reason."""

    def __init__(self):
        self._known: dict[str, Fingerprint | str] = {}

    def get(self, source) -> Fingerprint | str:
        if not source or not isinstance(source, str):
            return "no source file recorded"
        if source not in self._known:
            self._known[source] = self._compute(Path(source))
        return self._known[source]

    @staticmethod
    def _compute(path: Path) -> Fingerprint | str:
        if not path.is_file():
            return f"its scan file {path} no longer exists"
        try:
            scan = read_scan(path, load_diffraction=False)
        except (OSError, ValueError) as exc:
            return f"its scan file {path} cannot be read ({exc})"
        return fingerprint_file(path, (scan.xcoords, scan.ycoords, scan.xcoords_start, scan.ycoords_start))


def _memory_map_entry(manifest_path: Path, fingerprints: _SourceFingerprints) -> CacheEntry:
    directory = manifest_path.parent
    size = sum(_size(directory / name) for name in (MANIFEST, DIFFRACTION, ENERGY, GROUND_TRUTH))
    modified = manifest_path.stat().st_mtime
    try:
        manifest = Manifest.from_json(read_regular(manifest_path))
    except (OSError, ValueError) as exc:
        return CacheEntry(MEMORY_MAP, directory, None, {}, size, modified, f"unreadable manifest ({exc})")
    parameters = {
        "n": manifest.n,
        "N": manifest.N,
        "diffraction_key": manifest.diffraction_key,
        "counts_to_amplitude": manifest.counts_to_amplitude,
        "ground_truth": manifest.has_ground_truth,
    }
    fingerprint = fingerprints.get(manifest.source)
    if isinstance(fingerprint, str):
        problem = fingerprint
    elif manifest.fingerprint != fingerprint.as_dict():
        problem = "the scan file changed since it was built"
    else:
        problem = memmap_stale_reason(directory, manifest, fingerprint, manifest.counts_to_amplitude)
    return CacheEntry(MEMORY_MAP, directory, manifest.source, parameters, size, modified, problem)


def _groups_entry(path: Path, fingerprints: _SourceFingerprints) -> CacheEntry:
    size, modified = _size(path), path.stat().st_mtime
    try:
        metadata = read_metadata(path)
        key = grouping_key_of(metadata)
    except _DAMAGE as exc:
        return CacheEntry(GROUPS, path, None, {}, size, modified, f"unreadable ({type(exc).__name__}: {exc})")
    parameters = {**key.as_dict(), "groups": metadata.get("n_groups")}
    fingerprint = fingerprints.get(metadata.get("source"))
    if isinstance(fingerprint, str):
        return CacheEntry(GROUPS, path, metadata.get("source"), parameters, size, modified, fingerprint)
    _, problem = check_groups_cache(path, fingerprint, key)
    return CacheEntry(GROUPS, path, metadata.get("source"), parameters, size, modified, problem)


@contextlib.contextmanager
def _silenced(target: logging.Logger) -> Iterator[None]:
    """Mute a library logger whose advice ("rebuilding it") does not apply to a read-only inspection."""
    previous = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(previous)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
