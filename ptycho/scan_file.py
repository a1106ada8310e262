"""Scan NPZ files: schema and key aliases, safe loading, and block-wise reading of large members."""

from __future__ import annotations

import json
import logging
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ptycho.validation import REAL_GROUND_TRUTH_FIX, coordinate_problem

logger = logging.getLogger(__name__)

DIFFRACTION_KEYS = ("diffraction", "diff3d")
REQUIRED_KEYS = ("xcoords", "ycoords", "probeGuess")
SMALL_OPTIONAL_KEYS = ("xcoords_start", "ycoords_start", "scan_index", "objectGuess", "bad_pixels")
BLOCK_BYTES = 32 * 2**20
# How a 3-D stack is laid out: "auto" guesses (a cube with n == N is ambiguous and warned about),
# "nNN" is (n, N, N) with patterns first, "NNn" the legacy (N, N, n) with patterns last.
PATTERN_LAYOUTS = ("auto", "nNN", "NNn")

METADATA_KEY = "_metadata"
# A member every reconstruction ptycho-reconstruct writes holds: scan discovery skips such files (by content, not name).
RECONSTRUCTION_MARKER = "ptychopinn_reconstruction"
_NPZ_FIX = "re-export the scan with numpy.savez / savez_compressed (plain arrays, no Python objects)"


class ScanFileError(ValueError):
    """A scan file that cannot be used as it is; the message names the file, key and fix."""


@dataclass(frozen=True)
class MemberHeader:
    """The ``.npy`` header of one NPZ member: shape, dtype and memory order, read without its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: a hostile header cannot overflow it

    @property
    def disk_shape(self) -> tuple[int, ...]:
        """Shape of the C-ordered array the bytes on disk spell out."""
        return tuple(reversed(self.shape)) if self.fortran_order else self.shape


@dataclass(frozen=True)
class PatternLayout:
    """How a stored 3-D stack maps onto the ``(n, N, N)`` pattern stack.

    ``perm`` transposes an array in disk order to pattern order: ``patterns = disk.transpose(perm)``.
    """

    n: int
    N: int
    legacy: bool
    perm: tuple[int, int, int]

    @property
    def streams_by_pattern(self) -> bool:
        """True when consecutive disk blocks are consecutive patterns."""
        return self.perm[0] == 0

    @property
    def pattern_axis_of_disk_block(self) -> int:
        """Axis of the pattern-ordered block that the disk's first axis became."""
        return self.perm.index(0)


@dataclass(frozen=True, eq=False)
class Scan:
    """The arrays of one scan file (``diffraction`` is None when it was not loaded)."""

    path: Path
    xcoords: np.ndarray
    ycoords: np.ndarray
    xcoords_start: np.ndarray
    ycoords_start: np.ndarray
    scan_index: np.ndarray
    probeGuess: np.ndarray
    objectGuess: np.ndarray | None
    bad_pixels: np.ndarray | None
    diffraction_key: str
    layout: PatternLayout
    diffraction_dtype: np.dtype
    diffraction: np.ndarray | None = None
    Y: np.ndarray | None = None
    metadata: dict | None = None

    @property
    def n(self) -> int:
        return self.layout.n

    @property
    def N(self) -> int:
        return self.layout.N


class ScanFile:
    """An open scan NPZ: headers of every member, small arrays on demand, big ones block by block."""

    def __init__(self, path, layout: str = "auto"):
        if layout not in PATTERN_LAYOUTS:
            raise ValueError(f"layout must be one of {PATTERN_LAYOUTS}, got {layout!r}: 'nNN' for (n, N, N) stacks, 'NNn' for legacy (N, N, n)")
        self.path = Path(path)
        self.layout = layout
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(f"scan file {self.path} does not exist; check the path") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ScanFileError(f"{self.path} is not a readable NPZ (truncated or not a zip archive: {exc}); {_NPZ_FIX}") from exc
        self._members = {name[:-4]: name for name in self._zip.namelist() if name.endswith(".npy")}
        self._skip_pickled_metadata()
        self.headers = {key: self._read_header(key) for key in self._members}
        self._diffraction_key: str | None = None

    def __enter__(self) -> ScanFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._members)

    def require(self, key: str, fix: str) -> MemberHeader:
        if key not in self.headers:
            raise ScanFileError(f"{self.path} has no key {key!r} (keys: {', '.join(sorted(self.keys)) or 'none'}); {fix}")
        return self.headers[key]

    def load(self, key: str) -> np.ndarray:
        """Read one member whole, never unpickling."""
        self.require(key, "add it to the file")
        try:
            with self._zip.open(self._members[key]) as stream:
                return np.lib.format.read_array(stream, allow_pickle=False)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise ScanFileError(f"{self.path}: cannot read key {key!r} ({exc}); the file may be truncated; {_NPZ_FIX}") from exc

    def iter_disk_blocks(self, key: str, block_bytes: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, rows)`` of a member in disk order, each block about ``block_bytes`` (default ``BLOCK_BYTES``)."""
        block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
        header = self.headers[key]
        disk_shape = header.disk_shape
        row_bytes = max(1, header.nbytes // max(1, disk_shape[0]))
        rows_per_block = max(1, block_bytes // row_bytes)
        try:
            with self._zip.open(self._members[key]) as stream:
                _skip_header(stream)
                for start in range(0, disk_shape[0], rows_per_block):
                    rows = min(rows_per_block, disk_shape[0] - start)
                    data = _read_exact(stream, rows * row_bytes)
                    if len(data) != rows * row_bytes:
                        raise EOFError(f"member ends after row {start + len(data) // row_bytes} of {disk_shape[0]}")
                    yield start, np.frombuffer(data, dtype=header.dtype).reshape((rows,) + disk_shape[1:])
                stream.read()  # reaching the end makes zipfile verify the CRC
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise ScanFileError(f"{self.path}: key {key!r} is damaged ({exc}); the file may be truncated; {_NPZ_FIX}") from exc

    def diffraction_key(self) -> str:
        """``diffraction`` if present, else legacy ``diff3d``; both present must hold the same data (compared once)."""
        if self._diffraction_key is None:
            self._diffraction_key = self._find_diffraction_key()
        return self._diffraction_key

    def _find_diffraction_key(self) -> str:
        present = [key for key in DIFFRACTION_KEYS if key in self.headers]
        if not present:
            self.require("diffraction", "store the (n, N, N) amplitude stack under 'diffraction' (or legacy 'diff3d')")
        if len(present) == 2 and not self.members_equal(*present):
            raise ScanFileError(
                f"{self.path} holds both 'diffraction' and 'diff3d' and they differ; "
                "keep only one diffraction stack in the file (drop the stale one)"
            )
        return present[0]

    def members_equal(self, a: str, b: str) -> bool:
        """Whether two members hold arrays of equal values (dtypes may differ), compared block by block."""
        ha, hb = self.headers[a], self.headers[b]
        if (ha.shape, ha.fortran_order) != (hb.shape, hb.fortran_order):
            return False
        row_bytes = [max(1, h.nbytes // max(1, h.disk_shape[0])) for h in (ha, hb)]
        rows = max(1, BLOCK_BYTES // max(row_bytes))  # the same rows per block in both members
        blocks_a = self.iter_disk_blocks(a, rows * row_bytes[0])
        blocks_b = self.iter_disk_blocks(b, rows * row_bytes[1])
        return all(np.array_equal(block_a, block_b, equal_nan=True) for (_, block_a), (_, block_b) in zip(blocks_a, blocks_b))

    def pattern_layout(self, key: str) -> PatternLayout:
        """Validate the stored stack's shape and dtype and return how it maps to ``(n, N, N)``."""
        header = self.headers[key]
        shape, dtype = header.shape, header.dtype
        where = f"{self.path} key {key!r}"
        if dtype.kind == "c":
            raise ScanFileError(f"{where} is complex ({dtype}); diffraction must be real amplitudes (take abs() of the field, or store counts)")
        if dtype.kind not in "fiu":
            raise ScanFileError(f"{where} has dtype {dtype}; diffraction must be float amplitudes or integer counts")
        if len(shape) != 3:
            raise ScanFileError(f"{where} has shape {shape}; diffraction must be a 3-D stack (n, N, N) (or legacy (N, N, n))")
        legacy = self._is_legacy(where, shape, ptychodus_export=key == "diff3d" and "bad_pixels" in self.headers)
        n, height, width = (shape[2], shape[0], shape[1]) if legacy else shape
        if height != width:
            raise ScanFileError(f"{where}: patterns are {height} x {width}; they must be square N x N (crop or pad them)")
        if n == 0:
            raise ScanFileError(f"{where} holds no patterns")
        logical = (2, 0, 1) if legacy else (0, 1, 2)
        perm = tuple(2 - axis for axis in logical) if header.fortran_order else logical
        if legacy:
            logger.info("%s: legacy (N, N, n) stack of %d patterns, transposed to (n, N, N)", where, n)
        return PatternLayout(n=int(n), N=int(height), legacy=legacy, perm=perm)

    def _is_legacy(self, where: str, shape: tuple[int, ...], ptychodus_export: bool = False) -> bool:
        if self.layout == "NNn":
            if shape[0] != shape[1]:
                raise ScanFileError(f"{where} has shape {shape}, which cannot be a legacy (N, N, n) stack (layout='NNn'); drop layout= or fix the stack")
            return True
        if self.layout == "nNN" or ptychodus_export:  # Ptychodus's Export Training Data writes (n, H, W) beside an (H, W) mask
            return False
        if shape[0] == shape[1] == shape[2]:
            logger.warning(
                "%s has shape %s: with n == N it could be (n, N, N) or a legacy (N, N, n) stack; taken as (n, N, N). "
                "Pass layout='NNn' (ptycho-memmap --layout NNn) if the patterns are on the last axis, layout='nNN' to confirm "
                "and silence this; ptycho-train and ptycho-reconstruct take it as (n, N, N): for them re-save a legacy stack "
                "with the patterns first (np.moveaxis(d, -1, 0))",
                where, shape,
            )
        return shape[2] > shape[0] and shape[0] == shape[1]

    def read_scan(self, load_diffraction: bool = True, load_object: bool = True) -> Scan:
        """The file's arrays checked against the NPZ contract; the diffraction (and, with
        ``load_object=False``, the objectGuess) stays on disk unless asked for."""
        for key in REQUIRED_KEYS:
            self.require(key, _fix_for(key))
        key = self.diffraction_key()
        layout = self.pattern_layout(key)
        self._require_one_per_pattern(layout.n)
        wanted = [name for name in REQUIRED_KEYS + SMALL_OPTIONAL_KEYS if load_object or name != "objectGuess"]
        arrays = {name: self.load(name) for name in wanted if name in self.headers}
        diffraction = _load_patterns(self, key, layout) if load_diffraction else None
        Y = self.load("Y") if load_diffraction and "Y" in self.headers else None
        scan = _scan_from_arrays(self.path, arrays, key, layout, self.headers[key].dtype, diffraction, Y)
        return replace(scan, metadata=self.metadata()) if METADATA_KEY in self.headers else scan

    def _require_one_per_pattern(self, n: int) -> None:
        """Per-pattern members must hold ``n`` entries; checked on their headers, before anything is loaded."""
        for key in ("xcoords", "ycoords", "xcoords_start", "ycoords_start"):
            if key in self.headers and self.headers[key].shape != (n,):
                shape = self.headers[key].shape
                raise ScanFileError(f"{self.path} key {key!r} has shape {shape} but the file has {n} diffraction patterns; give one position per pattern")
        if "scan_index" in self.headers and self.headers["scan_index"].shape != (n,):
            header = self.headers["scan_index"]
            raise ScanFileError(f"{self.path} key 'scan_index' must be {n} integers (one per pattern), got shape {header.shape} dtype {header.dtype}")

    def metadata(self) -> dict | None:
        """The JSON record PtychoPINN's ``MetadataManager`` stores under ``_metadata``, if it is a plain string.

        A ``_metadata`` member holding Python objects was skipped (with a warning) when the file was opened.
        """
        if METADATA_KEY not in self.headers:
            return None
        return parse_metadata(self.load(METADATA_KEY), f"{self.path} key {METADATA_KEY!r}")

    def _skip_pickled_metadata(self) -> None:
        """Drop a ``_metadata`` member stored as a pickled object array (older PtychoPINN), keeping the scan usable."""
        if METADATA_KEY not in self._members:
            return
        try:
            with self._zip.open(self._members[METADATA_KEY]) as stream:
                version = np.lib.format.read_magic(stream)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                _, _, dtype = reader(stream)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError):
            return  # reported by _read_header like any other damaged member
        if dtype.hasobject:
            logger.warning(
                "%s: skipping key %r: it holds Python objects (PtychoPINN's pickled metadata record), which are never "
                "unpickled; the rest of the scan is used (re-save the metadata as a plain string to keep it)",
                self.path,
                METADATA_KEY,
            )
            del self._members[METADATA_KEY]

    def _read_header(self, key: str) -> MemberHeader:
        try:
            with self._zip.open(self._members[key]) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
                elif version == (2, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
                stored = self._zip.getinfo(self._members[key]).file_size - stream.tell()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise ScanFileError(f"{self.path}: key {key!r} has no readable array header ({exc}); {_NPZ_FIX}") from exc
        if dtype.hasobject:
            raise ScanFileError(
                f"{self.path}: key {key!r} holds Python objects (dtype {dtype}), which would need unpickling; "
                f"pickled members are refused; {_NPZ_FIX}"
            )
        header = MemberHeader(shape=tuple(int(s) for s in shape), dtype=dtype, fortran_order=bool(fortran_order))
        if header.nbytes > stored:
            raise ScanFileError(
                f"{self.path}: key {key!r} declares shape {header.shape} {dtype} ({header.nbytes:,} bytes) but holds "
                f"only {stored:,} bytes; the file is truncated or corrupt; {_NPZ_FIX}"
            )
        return header


def parse_metadata(value: np.ndarray, where: str) -> dict | None:
    """A ``_metadata`` string array's JSON as a dict; a WARNING and None when it is not a JSON object string."""
    array = np.asarray(value)
    if array.dtype.kind not in "US" or array.size != 1:
        logger.warning("%s: metadata must be one JSON string, got %s %s; ignored", where, array.dtype, array.shape)
        return None
    text = array.reshape(()).item()
    try:
        record = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("%s: metadata is not valid JSON (%s); ignored", where, exc)
        return None
    if not isinstance(record, dict):
        logger.warning("%s: metadata JSON is a %s, not an object; ignored", where, type(record).__name__)
        return None
    return record


def scan_files(path) -> list[Path]:
    """One scan NPZ, or every ``*.npz`` (any case) of a directory in name order (the order of ``experiment_id``).

    An entry named like a scan that is not a readable file (a dangling symlink, a directory, a FIFO)
    is an error, not skipped: skipping it would shift every later ``experiment_id``.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".npz")
        for entry in files:
            _require_scan_entry(entry)
        written = [entry for entry in files if is_reconstruction(entry)]
        if written:
            logger.info("skipping %d reconstruction(s) written by ptycho-reconstruct in %s: %s", len(written), path,
                        ", ".join(entry.name for entry in written))
            files = [entry for entry in files if entry not in written]
        if not files:
            raise FileNotFoundError(f"no .npz scan files in directory {path}; pass an NPZ or a directory holding them")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"scan file {path} does not exist; check the path")
    if is_reconstruction(path):
        raise ScanFileError(f"{path} is a reconstruction written by ptycho-reconstruct, not a scan; pass the scan NPZ")
    return [path]


def is_reconstruction(path) -> bool:
    """Whether ``path`` is an NPZ holding the ``RECONSTRUCTION_MARKER`` member (read from its directory, not its data)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return f"{RECONSTRUCTION_MARKER}.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False  # not readable as an NPZ: the scan checks report it


def _require_scan_entry(entry: Path) -> None:
    if entry.is_file():
        return
    if entry.is_symlink() and not entry.exists():
        raise FileNotFoundError(
            f"{entry} is a symbolic link to {os.readlink(entry)}, which does not exist; fix or remove the link "
            "(every .npz in the directory is an experiment, in name order)"
        )
    raise ScanFileError(
        f"{entry} is named like a scan file but is not a regular file; rename or remove it "
        "(every .npz in the directory is an experiment, in name order)"
    )


def read_scan(path, load_diffraction: bool = True, layout: str = "auto", load_object: bool = True) -> Scan:
    """Read a scan NPZ's arrays, checked against the NPZ contract; diffraction and object optional (they may be huge)."""
    with ScanFile(path, layout) as scan_file:
        return scan_file.read_scan(load_diffraction, load_object)


def _scan_from_arrays(path, arrays, key, layout, dtype, diffraction, Y) -> Scan:
    n = layout.n
    xcoords = _coordinates(path, arrays, "xcoords")
    ycoords = _coordinates(path, arrays, "ycoords")
    xcoords_start = _coordinates(path, arrays, "xcoords_start") if "xcoords_start" in arrays else xcoords
    ycoords_start = _coordinates(path, arrays, "ycoords_start") if "ycoords_start" in arrays else ycoords
    scan_index = arrays.get("scan_index", np.zeros(n, dtype=np.int64))
    objectGuess = arrays.get("objectGuess")
    if objectGuess is not None and not np.iscomplexobj(objectGuess):
        raise ScanFileError(f"{path} key 'objectGuess' has real dtype {objectGuess.dtype}; {REAL_GROUND_TRUTH_FIX}")
    if objectGuess is not None and objectGuess.ndim != 2:
        raise ScanFileError(f"{path} key 'objectGuess' has shape {objectGuess.shape}; the object must be one complex image (H, W) "
                            "on the grid of the scan positions (pixels): store it so, or leave the key out")
    if scan_index.dtype.kind not in "iu":
        raise ScanFileError(f"{path} key 'scan_index' must be {n} integers (one per pattern), got dtype {scan_index.dtype}")
    probe = arrays["probeGuess"]
    if probe.ndim not in (2, 3) or 0 in probe.shape or probe.dtype.kind not in "fiuc":
        N = layout.N
        raise ScanFileError(f"{path} key 'probeGuess' has shape {probe.shape} and dtype {probe.dtype}; store the complex probe "
                            f"({N}, {N}) or a mode stack (modes, {N}, {N}) under 'probeGuess'")
    return Scan(
        path=path,
        xcoords=xcoords,
        ycoords=ycoords,
        xcoords_start=xcoords_start,
        ycoords_start=ycoords_start,
        scan_index=scan_index,
        probeGuess=arrays["probeGuess"],
        objectGuess=objectGuess,
        bad_pixels=arrays.get("bad_pixels"),
        diffraction_key=key,
        layout=layout,
        diffraction_dtype=dtype,
        diffraction=diffraction,
        Y=Y,
    )


def _coordinates(path, arrays, key: str) -> np.ndarray:
    """Positions whose shape ``ScanFile._require_one_per_pattern`` already checked."""
    values = arrays[key]
    if values.dtype.kind not in "fiu":
        raise ScanFileError(f"{path} key {key!r} has dtype {values.dtype}; positions must be real numbers (pixels)")
    values = values.astype(np.float64, copy=False)
    problem = coordinate_problem(values)
    if problem:
        raise ScanFileError(f"{path} key {key!r}{problem}")
    return values


def _load_patterns(scan_file: ScanFile, key: str, layout: PatternLayout) -> np.ndarray:
    stack = scan_file.load(key)
    return np.ascontiguousarray(stack.transpose(2, 0, 1)) if layout.legacy else stack


def _fix_for(key: str) -> str:
    return {
        "xcoords": "store scan x positions (pixels, float64) under 'xcoords'",
        "ycoords": "store scan y positions (pixels, float64) under 'ycoords'",
        "probeGuess": "store the complex probe (H, W) or mode stack (modes, H, W) under 'probeGuess'",
    }[key]


def _skip_header(stream) -> None:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(stream)
    else:
        np.lib.format.read_array_header_2_0(stream)


def _read_exact(stream, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
