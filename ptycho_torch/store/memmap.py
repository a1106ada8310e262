"""The diffraction stack as a plain float32 ``.npy`` memory map, copied once from the scan NPZ."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import get_type_hints

import numpy as np
from tqdm.auto import tqdm

from ptycho.scan_file import PatternLayout, ScanFile, ScanFileError
from ptycho.validation import (BadDiffractionError, amplitude_from_counts, bad_pattern_flags, check_amplitude_block, is_counts, looks_like_counts, pattern_energy,
                               units_setting)
from ptycho_torch.store.atomic import NotRegularFileError, atomic_path, read_regular, require_free_space, require_regular
from ptycho_torch.store.fingerprint import Fingerprint, sample_digest
from ptycho_torch.store.json_checks import has_type, parse_json_object
from ptycho_torch.store.version import library_version

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
HASH_CHUNK_BYTES = 8 * 2**20
MANIFEST = "manifest.json"
DIFFRACTION = "diffraction.npy"
ENERGY = "pattern_energy.npy"
GROUND_TRUTH = "Y.npy"
UNITS_SAMPLE_BYTES = 4 * 2**20  # the first patterns, read to tell float counts from amplitudes


@dataclass(frozen=True)
class Manifest:
    """What a memory map was built from; written last, so its presence means the map is complete."""

    format_version: int
    library_version: str
    source: str
    fingerprint: dict
    diffraction_key: str
    source_dtype: str
    counts_to_amplitude: bool
    n: int
    N: int
    diffraction_bytes: int
    diffraction_sample_sha256: str
    energy_sha256: str
    has_ground_truth: bool
    created: str
    map_id: str = ""
    file_identities: dict = field(default_factory=dict)
    diffraction_sha256: str = ""
    legacy_layout: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @staticmethod
    def from_json(text: str | bytes) -> Manifest:
        """Parse a manifest, raising ValueError unless it is a JSON object with exactly these fields in these types."""
        values = parse_json_object(text)
        expected = {f.name for f in fields(Manifest)}
        if set(values) != expected:
            missing, unknown = sorted(expected - set(values)), sorted(set(values) - expected)
            raise ValueError(f"not a manifest of this format (missing {missing}, unknown {unknown})")
        for name, kind in get_type_hints(Manifest).items():
            if not has_type(values[name], kind):
                raise ValueError(f"field {name!r} is {type(values[name]).__name__}, expected {getattr(kind, '__name__', kind)}")
        return Manifest(**values)


# the fields every manifest format has had: enough to tell one this library wrote from any other JSON file
MANIFEST_SIGNATURE = {
    "format_version": int, "library_version": str, "source": str, "fingerprint": dict, "n": int, "N": int,
    "diffraction_bytes": int, "energy_sha256": str, "has_ground_truth": bool,
}


class DiffractionMemmap:
    """A built memory map directory: ``diffraction.npy`` (n, N, N) float32, per-pattern energies, optional ``Y.npy``.

    Arrays are opened lazily and not pickled, so DataLoader workers reopen the map instead of copying it.
    Reopening checks that the file is still the one validated here (not rebuilt by another process since).
    """

    def __init__(self, directory: Path, manifest: Manifest, energy: np.ndarray, identities: dict | None = None):
        self.directory = Path(directory)
        self.manifest = manifest
        self.energy = energy
        self.identities = _identities(self.directory, manifest) if identities is None else identities
        self._diffraction = None
        self._ground_truth = None

    @property
    def diffraction(self) -> np.ndarray:
        if self._diffraction is None:
            self._diffraction = self._open(DIFFRACTION)
        return self._diffraction

    @property
    def ground_truth(self) -> np.ndarray | None:
        if not self.manifest.has_ground_truth:
            return None
        if self._ground_truth is None:
            self._ground_truth = self._open(GROUND_TRUTH)
        return self._ground_truth

    @property
    def identity(self) -> dict:
        """What a groups cache records of the map it was computed from: any rebuild or edit changes it."""
        return {
            "map_id": self.manifest.map_id,
            "counts_to_amplitude": self.manifest.counts_to_amplitude,
            "diffraction_file": self.manifest.file_identities.get(DIFFRACTION),
        }

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_diffraction": None, "_ground_truth": None}

    def _open(self, name: str) -> np.ndarray:
        path = self.directory / name
        if _identity(path) != self.identities.get(name):  # checked first too: a FIFO put there must not block np.load
            self._refuse_replaced(path)
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if _identity(path) != self.identities.get(name):
            self._refuse_replaced(path)
        return array

    @staticmethod
    def _refuse_replaced(path: Path):
        raise RuntimeError(
            f"{path} was replaced after this dataset checked it (another process rebuilt the memory map, "
            "e.g. because the scan file changed), so the groups no longer match it; create the dataset again"
        )

    @staticmethod
    def open_valid(
        directory: Path, fingerprint: Fingerprint, counts_to_amplitude: bool, legacy_layout: bool | None = None,
        report: bool = True,
    ) -> DiffractionMemmap | None:
        """The map in ``directory`` if it is complete and was built from this very file (and layout); else None.

        ``report=False`` logs why it is not at DEBUG only (a repeated check whose finding is reported elsewhere).
        """
        manifest = _read_manifest(Path(directory) / MANIFEST, report)
        if manifest is None:
            return None
        identities = _identities(Path(directory), manifest)
        reason, level = _staleness(Path(directory), manifest, fingerprint, counts_to_amplitude)
        if not reason and legacy_layout is not None and manifest.legacy_layout != legacy_layout:
            reason, level = "built with the other pattern layout (layout=)", logging.INFO
        if reason:
            logger.log(level if report else logging.DEBUG, "memory map in %s is not reusable (%s); rebuilding it", directory, reason)
            return None
        energy = np.load(Path(directory) / ENERGY, allow_pickle=False)  # a regular file: checked in _stale_reason
        return DiffractionMemmap(Path(directory), manifest, energy, identities)

    @staticmethod
    def build(
        directory: Path,
        scan_file: ScanFile,
        fingerprint: Fingerprint,
        counts_to_amplitude: bool,
        progress: bool = True,
        units_given: bool = False,
    ) -> DiffractionMemmap:
        """Copy the diffraction (and ``Y`` if present) into ``directory`` in bounded chunks; caller holds the lock.

        Unless ``units_given`` (the user chose the units), counts taken from an integer dtype, and float
        data that looks like counts, are warned about with the setting that decides.
        """
        directory = Path(directory)
        key = scan_file.diffraction_key()
        layout = scan_file.pattern_layout(key)
        has_y = "Y" in scan_file.headers
        needed = layout.n * layout.N**2 * (4 + (8 if has_y else 0)) + layout.n * 8
        (directory / MANIFEST).unlink(missing_ok=True)
        require_free_space(directory, needed)
        if not units_given:
            _warn_about_units(scan_file, key, layout, counts_to_amplitude)
        name = f"{scan_file.path} key {key!r}"
        with atomic_path(directory / DIFFRACTION, needed) as tmp:
            try:
                energy, diffraction_sha256 = _copy_patterns(scan_file, key, layout, tmp, counts_to_amplitude, name, progress)
            except BadDiffractionError as exc:
                raise exc.with_count(_bad_patterns(scan_file, key, layout)) from None
        with atomic_path(directory / ENERGY, energy.nbytes) as tmp:
            _save_npy(tmp, energy)
        if has_y:
            _copy_ground_truth(scan_file, layout, directory, progress)
        names = (DIFFRACTION, GROUND_TRUTH) if has_y else (DIFFRACTION,)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            library_version=library_version(),
            source=str(scan_file.path),
            fingerprint=fingerprint.as_dict(),
            diffraction_key=key,
            source_dtype=str(scan_file.headers[key].dtype),
            counts_to_amplitude=counts_to_amplitude,
            n=layout.n,
            N=layout.N,
            diffraction_bytes=(directory / DIFFRACTION).stat().st_size,
            diffraction_sample_sha256=sample_digest(directory / DIFFRACTION),
            energy_sha256=sha256_file(directory / ENERGY),
            has_ground_truth=has_y,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            map_id=secrets.token_hex(16),
            file_identities={name: file_identity(directory / name) for name in names},
            diffraction_sha256=diffraction_sha256,
            legacy_layout=layout.legacy,
        )
        text = manifest.to_json()
        with atomic_path(directory / MANIFEST, len(text)) as tmp:
            tmp.write_text(text)
        logger.info("memory-mapped %d patterns of %dx%d from %s into %s", layout.n, layout.N, layout.N, scan_file.path, directory)
        return DiffractionMemmap(directory, manifest, energy)


def _warn_about_units(scan_file: ScanFile, key: str, layout: PatternLayout, counts_to_amplitude: bool) -> None:
    dtype = scan_file.headers[key].dtype
    if counts_to_amplitude:
        logger.warning("%s: %r is %s, taken as photon counts and converted to amplitude (sqrt); if it already is amplitude "
                       "pass %s", scan_file.path, key, dtype, units_setting("amplitude"))
        return
    if dtype.kind != "f":
        return
    blocks = scan_file.iter_disk_blocks(key, UNITS_SAMPLE_BYTES)
    _, sample = next(blocks)
    blocks.close()
    if looks_like_counts(sample):
        logger.warning("%s: %r is %s but its values look like photon counts (whole numbers, mean %.3g, largest %.6g), not "
                       "amplitudes; they are taken as amplitudes: if they are counts pass %s (or %s to confirm and silence this)",
                       scan_file.path, key, dtype, float(sample.mean()), float(sample.max()), units_setting("counts"),
                       "--diffraction-units amplitude")


def _bad_patterns(scan_file: ScanFile, key: str, layout: PatternLayout) -> np.ndarray:
    """Indices of the patterns holding NaN, inf or negative values (read again: only when some are bad)."""
    bad = np.zeros(layout.n, dtype=bool)
    for start, block in scan_file.iter_disk_blocks(key):
        patterns = block.transpose(layout.perm)
        if layout.streams_by_pattern:
            bad[start : start + len(patterns)] |= bad_pattern_flags(patterns)
        else:
            bad |= bad_pattern_flags(patterns)  # each disk block holds a slice of every pattern
    return np.flatnonzero(bad)


def resolve_counts(scan_file: ScanFile, units: str) -> bool:
    """Whether the stored diffraction is photon counts to be square-rooted (``units``: auto, amplitude, counts)."""
    return is_counts(scan_file.headers[scan_file.diffraction_key()].dtype, units)


def _copy_patterns(scan_file, key, layout: PatternLayout, target: Path, counts: bool, name: str, progress: bool) -> tuple[np.ndarray, str]:
    """Per-pattern energies and the sha256 of the whole written ``.npy``."""
    header = scan_file.headers[key]
    with tqdm(total=header.nbytes, unit="B", unit_scale=True, desc="memory-mapping diffraction", disable=not progress, leave=False) as bar:
        if layout.streams_by_pattern:
            return _append_patterns(scan_file, key, layout, target, counts, name, bar)
        return _scatter_patterns(scan_file, key, layout, target, counts, name, bar, progress)


def _append_patterns(scan_file, key, layout: PatternLayout, target: Path, counts: bool, name: str, bar) -> tuple[np.ndarray, str]:
    """Write pattern blocks in order with plain writes: a full disk raises ENOSPC (a mapped write dies of SIGBUS)."""
    energy = np.empty(layout.n, dtype=np.float64)
    with open(target, "wb") as raw:
        handle = _HashingWriter(raw)  # the full checksum costs no second read
        _write_header(handle, np.float32, (layout.n, layout.N, layout.N))
        for start, block in scan_file.iter_disk_blocks(key):
            part = np.ascontiguousarray(_to_amplitude(block.transpose(layout.perm), start, counts, name))
            _write_block(handle, part)
            energy[start : start + len(part)] = np.einsum("ijk,ijk->i", part, part, dtype=np.float64)
            bar.update(block.nbytes)
    return energy, handle.digest.hexdigest()


class _HashingWriter:
    """A binary file that also feeds every byte written to a sha256 digest."""

    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.handle.write(data)


def _write_header(handle, dtype, shape: tuple[int, ...]) -> None:
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    np.lib.format.write_array_header_1_0(handle, {"descr": descr, "fortran_order": False, "shape": shape})


def _write_block(handle, part: np.ndarray) -> None:
    handle.write(memoryview(part).cast("B"))


def _scatter_patterns(scan_file, key, layout: PatternLayout, target: Path, counts: bool, name: str, bar, progress: bool) -> tuple[np.ndarray, str]:
    """Transposed layouts: each disk block lands across every pattern, so it is written through a memory map."""
    out = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=(layout.n, layout.N, layout.N))
    axis = layout.pattern_axis_of_disk_block
    for start, block in scan_file.iter_disk_blocks(key):
        pixel_origin = (start, 0) if axis == 1 else (0, start)
        part = _to_amplitude(block.transpose(layout.perm), 0, counts, name, pixel_origin)
        index = [slice(None)] * 3
        index[axis] = slice(start, start + block.shape[0])
        out[tuple(index)] = part
        bar.update(block.nbytes)
    out.flush()
    energy = pattern_energy(name, out, progress=progress)
    del out
    return energy, sha256_file(target, progress)


def _to_amplitude(part: np.ndarray, first: int, counts: bool, name: str, pixel_origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    amplitude = amplitude_from_counts(part, first, name, pixel_origin) if counts else part.astype(np.float32)
    check_amplitude_block(name, amplitude, first, pixel_origin)
    return amplitude


def check_ground_truth_header(scan_file: ScanFile, n: int, N: int) -> None:
    """Refuse (ScanFileError) a ``Y`` that is not ``(n, N, N)`` like the diffraction, or not complex; a file without ``Y``
    passes. Its header is all this reads, so callers check before any work."""
    header = scan_file.headers.get("Y")
    if header is None:
        return
    where = f"{scan_file.path} key 'Y'"
    if header.shape != (n, N, N):
        raise ScanFileError(f"{where} has shape {header.shape}; it must be ({n}, {N}, {N}) like the diffraction")
    if header.dtype.kind != "c":
        raise ScanFileError(f"{where} has real dtype {header.dtype}; ground truth must be complex (store the complex patches)")


def _copy_ground_truth(scan_file: ScanFile, layout: PatternLayout, directory: Path, progress: bool) -> None:
    check_ground_truth_header(scan_file, layout.n, layout.N)
    header = scan_file.headers["Y"]
    perm = (2, 1, 0) if header.fortran_order else (0, 1, 2)
    with atomic_path(directory / GROUND_TRUTH, header.nbytes) as tmp:
        if perm == (0, 1, 2):
            with open(tmp, "wb") as handle:
                _write_header(handle, np.complex64, header.shape)
                for _, block in tqdm(scan_file.iter_disk_blocks("Y"), desc="memory-mapping Y", disable=not progress, leave=False):
                    _write_block(handle, np.ascontiguousarray(block, dtype=np.complex64))
            return
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.complex64, shape=header.shape)
        for start, block in tqdm(scan_file.iter_disk_blocks("Y"), desc="memory-mapping Y", disable=not progress, leave=False):
            index = [slice(None)] * 3
            index[perm.index(0)] = slice(start, start + block.shape[0])
            out[tuple(index)] = block.transpose(perm)
        out.flush()
        del out


def _read_manifest(path: Path, report: bool = True) -> Manifest | None:
    try:
        return Manifest.from_json(read_regular(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.log(logging.WARNING if report else logging.DEBUG, "ignoring unreadable memory-map manifest %s (%s); it will be rebuilt", path, exc)
        return None


def stale_reason(directory: Path, manifest: Manifest, fingerprint: Fingerprint, counts: bool) -> str | None:
    """Why the map in ``directory`` must not be used for this scan file and these units (None: it may)."""
    return _staleness(Path(directory), manifest, fingerprint, counts)[0]


def _staleness(directory: Path, manifest: Manifest, fingerprint: Fingerprint, counts: bool) -> tuple[str | None, int]:
    """``(reason, log level)``: a changed scan or setting is routine (INFO), a changed map file is not (WARNING)."""
    if manifest.format_version != FORMAT_VERSION:
        return f"format version {manifest.format_version} (this library writes {FORMAT_VERSION})", logging.INFO
    if manifest.fingerprint != fingerprint.as_dict():
        return "the scan file changed since it was built", logging.INFO
    if manifest.counts_to_amplitude != counts:
        return "built with other diffraction units", logging.INFO
    diffraction = directory / DIFFRACTION
    try:
        for name in (DIFFRACTION, ENERGY, GROUND_TRUTH) if manifest.has_ground_truth else (DIFFRACTION, ENERGY):
            require_regular(directory / name)
        for name, recorded in sorted(manifest.file_identities.items()):
            current = file_identity(directory / name)
            if current is None:
                return f"{name} is missing", logging.WARNING
            if current != recorded:
                return f"{name} was modified after it was built (its size, mtime or inode changed)", logging.WARNING
        if diffraction.stat().st_size != manifest.diffraction_bytes:
            return f"{DIFFRACTION} has the wrong size (truncated?)", logging.WARNING
        if sample_digest(diffraction) != manifest.diffraction_sample_sha256:
            return f"{DIFFRACTION} content does not match its manifest (damaged?)", logging.WARNING
        if sha256_file(directory / ENERGY) != manifest.energy_sha256:
            return f"{ENERGY} does not match its manifest", logging.WARNING
        if manifest.has_ground_truth and not (directory / GROUND_TRUTH).exists():
            return f"{GROUND_TRUTH} is missing", logging.WARNING
    except FileNotFoundError as exc:
        return f"{Path(exc.filename).name} is missing", logging.WARNING
    except NotRegularFileError as exc:
        return f"{Path(exc.filename).name} is not a regular file", logging.WARNING
    return None, logging.INFO


def file_identity(path: Path) -> dict | None:
    """Size, mtime_ns and inode of ``path`` as recorded in the manifest (None if it is missing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """Device, inode, size and mtime: any replacement or rewrite of the file changes it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _identities(directory: Path, manifest: Manifest) -> dict[str, tuple[int, int, int, int] | None]:
    names = (DIFFRACTION, GROUND_TRUTH) if manifest.has_ground_truth else (DIFFRACTION,)
    return {name: _identity(directory / name) for name in names}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.lib.format.write_array(handle, array, allow_pickle=False)


def sha256_file(path: Path, progress: bool = False) -> str:
    """sha256 of a whole file, read in bounded chunks."""
    require_regular(path)  # a FIFO put there must not block the read
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as handle, tqdm(total=size, unit="B", unit_scale=True, desc="checksumming",
                                          disable=not progress or size < 2**30, leave=False) as bar:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()
