"""``.groups_cache.npz``: one scan's grouping on disk, keyed by its settings and checked on every read.

The file is a plain NPZ (no pickle): the arrays of :class:`ptycho.raw_data.Grouping` plus a
``metadata`` JSON string with the format, grouping-algorithm and library versions, the dataset
fingerprint, the identity of the memory map the norm was computed from, every grouping parameter
and a sha256 checksum of the arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ptycho.grouping import GROUPING_VERSION, GroupingSettings
from ptycho.raw_data import Grouping
from ptycho_torch.store.atomic import atomic_path, open_regular
from ptycho_torch.store.fingerprint import Fingerprint
from ptycho_torch.store.json_checks import has_signature, parse_json_object
from ptycho_torch.store.version import library_version

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
SUFFIX = ".groups_cache.npz"
ARRAY_NAMES = tuple(name for name in Grouping.__dataclass_fields__ if name != "norm")


@dataclass(frozen=True)
class GroupingKey:
    """Everything that decides a grouping: pattern size and the grouping settings."""

    N: int
    settings: GroupingSettings

    def __post_init__(self) -> None:
        if isinstance(self.N, np.integer):
            object.__setattr__(self, "N", int(self.N))

    def as_dict(self) -> dict:
        return {"N": self.N, **asdict(self.settings)}

    def file_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]
        return f"groups-{digest}{SUFFIX}"


def cache_path(directory: Path, key: GroupingKey) -> Path:
    return Path(directory) / key.file_name()


def write_cache(path: Path, grouping: Grouping, key: GroupingKey, fingerprint: Fingerprint, source: str, memory_map: dict) -> None:
    """Write atomically (temporary file, fsync, rename): readers see the old cache or the new one, never half.

    ``memory_map`` is :attr:`DiffractionMemmap.identity` of the map the grouping (its norm) was computed from.
    """
    arrays = {name: getattr(grouping, name) for name in ARRAY_NAMES}
    arrays["norm"] = np.float64(grouping.norm)
    metadata = {
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "grouping_version": GROUPING_VERSION,
        "memory_map": memory_map,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "fingerprint": fingerprint.as_dict(),
        "grouping": key.as_dict(),
        "n_groups": grouping.n_groups,
        "C": grouping.C,
        "checksum": _checksum(arrays),
    }
    expected = sum(np.asarray(a).nbytes for a in arrays.values())
    with atomic_path(path, expected) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, metadata=np.array(json.dumps(metadata, sort_keys=True)), **arrays)


# the metadata fields every cache format has had, with their types: anything else is not a cache of ours
METADATA_SIGNATURE = {"format_version": int, "library_version": str, "fingerprint": dict, "grouping": dict, "checksum": str}


def read_metadata(path: Path) -> dict:
    """The metadata of a cache file (raises OSError or ValueError on a damaged file, or one that is not a cache)."""
    with open_regular(path) as handle, np.load(handle, allow_pickle=False) as cache:
        return parse_metadata(cache)


def parse_metadata(cache) -> dict:
    """The ``metadata`` member of an opened cache, checked for the shape this library writes (ValueError if not)."""
    try:
        values = parse_json_object(str(cache["metadata"]))
    except KeyError:
        raise ValueError("no 'metadata' member") from None
    if not has_signature(values, METADATA_SIGNATURE):
        raise ValueError(f"metadata lacks or mistypes one of {sorted(METADATA_SIGNATURE)}")
    return values


def read_cache(
    path: Path, key: GroupingKey, fingerprint: Fingerprint, memory_map: dict, n_points: int | None = None,
    report: bool = True,
) -> Grouping | None:
    """The cached grouping if it is intact and was made from this data, map and settings, else None.

    A missing cache is silent; stale ones are logged at INFO (a changed scan file or format) or WARNING
    (made from another memory map or by another grouping algorithm); damaged or tampered ones at WARNING.
    With ``n_points``, shapes and index ranges are checked too (a cache is data, not trusted code).
    ``report=False`` logs at DEBUG only (a repeated check whose finding is reported elsewhere).
    """
    warning = logging.WARNING if report else logging.DEBUG
    path = Path(path)
    if memory_map is None:
        raise ValueError("read_cache needs the identity of the memory map the cache must have been computed from")
    if not path.exists():
        return None
    try:
        with open_regular(path) as handle, np.load(handle, allow_pickle=False) as cache:
            metadata = parse_metadata(cache)
            reason, level = _staleness(metadata, key, fingerprint, memory_map)
            if reason:
                logger.log(level if report else logging.DEBUG, "groups cache %s is stale (%s); regrouping", path, reason)
                return None
            arrays = {name: cache[name] for name in ARRAY_NAMES + ("norm",)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.log(warning, "groups cache %s is damaged (%s: %s); rebuilding it", path, type(exc).__name__, exc)
        return None
    if _checksum(arrays) != metadata.get("checksum"):
        logger.log(warning, "groups cache %s does not match its checksum (damaged or edited); rebuilding it", path)
        return None
    problem = None if n_points is None else _shape_problem(arrays, key.settings.C, n_points)
    if problem:
        logger.log(warning, "groups cache %s is inconsistent (%s); rebuilding it", path, problem)
        return None
    norm = float(arrays.pop("norm"))
    return Grouping(**arrays, norm=norm)


def _shape_problem(arrays: dict[str, np.ndarray], C: int, n_points: int) -> str | None:
    nn = arrays["nn_indices"]
    if nn.ndim != 2 or nn.shape[1] != C or nn.dtype != np.int32:
        return f"nn_indices is {nn.dtype} {nn.shape}, expected int32 (B, {C})"
    if nn.size and (nn.min() < 0 or nn.max() >= n_points):
        return f"nn_indices point outside the scan's {n_points} patterns"
    for name in ARRAY_NAMES:
        if name == "nn_indices":
            continue
        expected = (nn.shape[0], 1, 2, 1 if name.endswith("offsets") else C)
        if arrays[name].shape != expected or arrays[name].dtype != np.float64:
            return f"{name} is {arrays[name].dtype} {arrays[name].shape}, expected float64 {expected}"
    norm = arrays["norm"]
    if norm.shape != () or not (np.isfinite(norm) and norm > 0):
        return f"norm is {norm!r}, expected a positive scalar"
    return None


def stale_reason(metadata: dict, key: GroupingKey, fingerprint: Fingerprint, memory_map: dict | None) -> str | None:
    """Why a cache with this metadata must not be used for ``key`` on data with ``fingerprint`` in map ``memory_map``.

    ``memory_map=None`` leaves the map out (to report a changed scan file before a map that no longer exists).
    """
    return _staleness(metadata, key, fingerprint, memory_map)[0]


def _staleness(metadata: dict, key: GroupingKey, fingerprint: Fingerprint, memory_map: dict | None) -> tuple[str | None, int]:
    if metadata.get("format_version") != FORMAT_VERSION:
        return f"cache format {metadata.get('format_version')}, this library reads {FORMAT_VERSION}", logging.INFO
    if metadata.get("grouping") != key.as_dict():
        return "made with other grouping settings", logging.INFO
    if metadata.get("fingerprint") != fingerprint.as_dict():
        return "the scan file changed since it was grouped", logging.INFO
    if metadata.get("grouping_version") != GROUPING_VERSION:
        return (f"made by grouping algorithm version {metadata.get('grouping_version')}, "
                f"this library groups with version {GROUPING_VERSION}"), logging.WARNING
    if memory_map is not None and metadata.get("memory_map") != memory_map:
        return _map_change(metadata.get("memory_map"), memory_map), logging.WARNING
    return None, logging.INFO


def _map_change(recorded, current: dict) -> str:
    if isinstance(recorded, dict) and recorded.get("counts_to_amplitude") != current.get("counts_to_amplitude"):
        return "computed from a memory map with other diffraction units than the current one"
    return "computed from another memory map than the current one (rebuilt or edited since)"


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
