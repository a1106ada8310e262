"""One scan file made ready for training: small arrays in memory, diffraction memory-mapped, groups cached."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ptycho.grouping import check_group_request
from ptycho.raw_data import Grouping
from ptycho.scan_file import Scan, ScanFile, ScanFileError
from ptycho.scan_geometry import check_scan_geometry
from ptycho.validation import probe_size_problem, probe_value_problem, require_complex_image
from ptycho_torch.raw_data_bridge import RawDataTorch
from ptycho_torch.store.atomic import ensure_directory, missing_directories, remove_empty_directories, remove_stale_temporaries
from ptycho_torch.store.fingerprint import Fingerprint, fingerprint_file
from ptycho_torch.store.groups_cache import GroupingKey, cache_path, read_cache, write_cache
from ptycho_torch.store.inventory import is_ours
from ptycho_torch.store.locks import LOCK_NAME, directory_lock
from ptycho_torch.store.memmap import DiffractionMemmap, check_ground_truth_header, resolve_counts

logger = logging.getLogger(__name__)


class LazyObjectGuess:
    """A scan file's ``objectGuess``, read on first use only; never pickled (a worker that needs it reads it)."""

    def __init__(self, path: Path, present: bool):
        self.path, self.present = Path(path), present
        self._array: np.ndarray | None = None

    @property
    def loaded(self) -> bool:
        return self._array is not None

    def get(self) -> np.ndarray | None:
        """The object (complex, 2-D), or None when the file has none."""
        if self.present and self._array is None:
            with ScanFile(self.path) as scan_file:
                self._array = require_complex_image(f"{self.path} key 'objectGuess'", scan_file.load("objectGuess"))
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


@dataclass(frozen=True, eq=False)
class Experiment:
    """A scan ready to serve groups: everything a dataset or the bridge reads at batch time.

    ``scan.objectGuess`` is None here: the object is read through ``object_guess`` when used.
    """

    scan: Scan
    store: DiffractionMemmap
    grouping: Grouping
    key: GroupingKey
    cache_path: Path
    regrouped: bool
    object_guess: LazyObjectGuess

    @property
    def n_groups(self) -> int:
        return self.grouping.n_groups


def dataset_directory(data_dir, npz_path) -> Path:
    """``data_dir/<file stem>-<hash of its absolute path>``: always inside ``data_dir``, one per scan file."""
    resolved = Path(npz_path).resolve()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", resolved.stem).strip("._-")[:60] or "scan"
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return Path(data_dir) / f"{stem}-{digest}"


def prepare_experiment(
    npz_path,
    data_dir,
    key: GroupingKey,
    *,
    diffraction_units: str = "auto",
    layout: str = "auto",
    remake: bool = False,
    build: bool = True,
    progress: bool = True,
    lock_timeout: float | None = None,
) -> Experiment:
    """Reuse the memory map and groups cache of ``npz_path`` or build what is missing or stale.

    A valid cache is read without any lock or write access. Building happens under an exclusive
    lock on the scan's directory, so concurrent processes build once and all read the same result.
    ``build=False`` (other DDP ranks) refuses to build and expects a valid cache. ``lock_timeout``
    (seconds, None: no limit) bounds the wait for another process building the same scan. ``layout``
    settles an ambiguous ``(N, N, N)`` diffraction cube (``ptycho.scan_file.PATTERN_LAYOUTS``).
    Paths are made absolute here, so a later ``os.chdir`` (or a worker started elsewhere) still finds them.
    """
    npz_path, data_dir = Path(npz_path).resolve(), Path(data_dir).absolute()
    with ScanFile(npz_path, layout) as scan_file:
        scan = scan_file.read_scan(load_diffraction=False, load_object=False)
        object_guess = LazyObjectGuess(npz_path, "objectGuess" in scan_file.headers)
        counts = resolve_counts(scan_file, diffraction_units)
        check_ground_truth_header(scan_file, scan.n, scan.N)
    if key.N != scan.N:
        raise ValueError(
            f"{npz_path}: N={key.N} does not match the {scan.N} x {scan.N} diffraction patterns of key {scan.diffraction_key!r}; "
            f"set N={scan.N} (model.N) or resample the patterns"
        )
    problem = probe_size_problem(scan.probeGuess, scan.N) or probe_value_problem(scan.probeGuess)
    if problem:
        raise ScanFileError(f"{npz_path} key 'probeGuess': {problem}")
    check_scan_geometry(str(npz_path), scan.xcoords, scan.ycoords, scan.probeGuess, scan.N, refuse=False)  # the commands refuse
    if key.settings.nsamples is None:
        key = GroupingKey(key.N, replace(key.settings, nsamples=scan.n))
    try:
        check_group_request(scan.n, key.settings)
    except ValueError as exc:
        raise ValueError(f"{npz_path}: {exc}") from exc
    fingerprint = fingerprint_file(npz_path, (scan.xcoords, scan.ycoords, scan.xcoords_start, scan.ycoords_start))
    directory = dataset_directory(data_dir, npz_path)
    path = cache_path(directory, key)
    if not remake:
        # reported under the lock, where the decision to rebuild is made (so once, not twice)
        ready = _reuse(scan, directory, path, key, fingerprint, counts, object_guess, report=not build)
        if ready is not None:
            logger.info("reusing %s (%d groups)", path, ready.n_groups)
            return ready
    if not build:
        raise RuntimeError(f"no valid groups cache at {path} after rank 0 prepared it; check that every rank sees the same data_dir")
    new_directories = missing_directories(directory)
    ensure_directory(directory)
    with directory_lock(directory, lock_timeout):
        remove_stale_temporaries(directory)
        if not remake:
            ready = _reuse(scan, directory, path, key, fingerprint, counts, object_guess)
            if ready is not None:
                logger.info("another process built %s meanwhile; reusing it", path)
                return ready
        return _build(npz_path, scan, directory, path, key, fingerprint, counts, remake, progress, object_guess,
                      units_given=diffraction_units != "auto", new_directories=new_directories)


def _reuse(scan, directory, path, key, fingerprint, counts, object_guess, report: bool = True) -> Experiment | None:
    store = DiffractionMemmap.open_valid(directory, fingerprint, counts, legacy_layout=scan.layout.legacy, report=report)
    if store is None:
        return None
    grouping = read_cache(path, key, fingerprint, store.identity, n_points=store.manifest.n, report=report)
    if grouping is None:
        return None
    return Experiment(scan=scan, store=store, grouping=grouping, key=key, cache_path=path, regrouped=False, object_guess=object_guess)


def _build(npz_path, scan, directory, path, key, fingerprint: Fingerprint, counts, remake, progress, object_guess,
           units_given: bool = False, new_directories: list[Path] = ()) -> Experiment:
    """Build what is missing under the lock. When this run created ``directory`` (``new_directories``: it and the parents it
    made) and builds its memory map, a failure removes them again: a refused scan (ValueError) leaves nothing behind, and
    any other failure (a full disk, an interruption) nothing half-made; a map completed before such a failure is kept."""
    # checked (and reported) just before by _reuse under the same lock
    store = None if remake else DiffractionMemmap.open_valid(
        directory, fingerprint, counts, legacy_layout=scan.layout.legacy, report=False
    )
    if store is None and not new_directories and _holds_only_the_lock(directory):  # e.g. remade by a waiting process after
        new_directories = [directory]  # another's refused build removed it: nothing in it predates this run
    built_here = bool(new_directories) and store is None  # never a map another process completed meanwhile
    try:
        if store is None:
            settled = "NNn" if scan.layout.legacy else "nNN"  # decided (and any ambiguity warned about) when the scan was read
            with ScanFile(npz_path, settled) as scan_file:
                store = DiffractionMemmap.build(directory, scan_file, fingerprint, counts, progress=progress, units_given=units_given)
        try:
            grouping = group_with_raw_data(scan, store, key)
        except ValueError as exc:
            raise ValueError(f"{npz_path}: {exc}") from exc
        write_cache(path, grouping, key, fingerprint, str(npz_path), store.identity)
    except BaseException as exc:
        if built_here and (store is None or isinstance(exc, ValueError)):
            _remove_failed_build(directory, new_directories)
        raise
    logger.info("grouped %s into %d groups of %d; cache %s", npz_path.name, grouping.n_groups, grouping.C, path)
    return Experiment(scan=scan, store=store, grouping=grouping, key=key, cache_path=path, regrouped=True, object_guess=object_guess)


def _holds_only_the_lock(directory: Path) -> bool:
    return all(path.name == LOCK_NAME for path in directory.iterdir())


def _remove_failed_build(directory: Path, new_directories: list[Path]) -> None:
    """Remove the files of ours a failed build left in ``directory``, which this run created (call while holding its lock:
    the lock file goes last, and a process waiting for it locks a new one), then ``new_directories`` where empty."""
    for path in sorted(directory.iterdir(), key=lambda p: p.name == LOCK_NAME):
        if is_ours(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
    remove_empty_directories(new_directories)
    logger.info("removed what this run wrote in %s, which it created for a scan it could not prepare", directory)


def group_with_raw_data(scan: Scan, store: DiffractionMemmap, key: GroupingKey) -> Grouping:
    """Group through :class:`RawDataTorch` over the memory map; only per-pattern energies are read."""
    raw = RawDataTorch(
        scan.xcoords,
        scan.ycoords,
        store.diffraction,
        scan.probeGuess,
        scan.scan_index,
        None,  # the grouping never reads the object
        xcoords_start=scan.xcoords_start,
        ycoords_start=scan.ycoords_start,
        pattern_energy=store.energy,
        diffraction_units="amplitude",
    )
    return raw.grouping(key.N, key.settings)
