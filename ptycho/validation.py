"""Checks on scan arrays that name the array, the bad index and the fix."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

ENERGY_CHUNK_BYTES = 64 * 2**20
# Scan positions are object pixels; anything beyond this is a unit or export error, and squared
# distances of values near 1e160 overflow to inf inside the neighbour search.
MAX_ABS_COORDINATE_PIXELS = 1e9


def require_coordinates(name: str, values, n: int | None = None) -> np.ndarray:
    """A 1-D finite float64 array of scan positions in pixels."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one position per scan point), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name} has {array.shape[0]} entries but the scan has {n} points; give one per diffraction pattern")
    array = array.astype(np.float64, copy=False)
    problem = coordinate_problem(array)
    if problem:
        raise ValueError(f"{name}{problem}")
    return array


def coordinate_problem(array: np.ndarray) -> str | None:
    """``"[i] is v; ..."`` for the first non-finite or out-of-range position of ``array``, else None."""
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        return f"[{bad[0]}] is {array[bad[0]]}; scan positions must be finite ({bad.size} bad entries; fix or drop those scan points)"
    far = np.flatnonzero(np.abs(array) > MAX_ABS_COORDINATE_PIXELS)
    if far.size:
        return (f"[{far[0]}] is {array[far[0]]:g}; scan positions are object pixels and must lie within "
                f"+-{MAX_ABS_COORDINATE_PIXELS:g} ({far.size} entries beyond; check the units of the export)")
    return None


def require_diffraction_shape(name: str, diffraction) -> tuple[int, int]:
    """Check a ``(n, N, N)`` real stack without reading its values; return ``(n, N)``."""
    shape = getattr(diffraction, "shape", None)
    dtype = getattr(diffraction, "dtype", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"{name} must be a 3-D stack (n_patterns, N, N), got shape {shape}")
    if shape[1] != shape[2]:
        raise ValueError(f"{name} patterns must be square, got {shape[1]} x {shape[2]}; crop or pad them to N x N")
    if dtype is None or dtype.kind not in "fiu":
        hint = "store amplitudes as float32" if dtype is not None and dtype.kind == "c" else "store real numbers"
        raise TypeError(f"{name} must be real-valued (amplitude), got dtype {dtype}; {hint}")
    if shape[0] == 0:
        raise ValueError(f"{name} holds no patterns")
    return int(shape[0]), int(shape[1])


def pattern_energy(name: str, diffraction, progress: bool = False) -> np.ndarray:
    """Per-pattern ``sum(d**2)`` in float64, read in chunks; rejects negative or non-finite values."""
    n, N = require_diffraction_shape(name, diffraction)
    chunk = max(1, ENERGY_CHUNK_BYTES // (N * N * 8))
    energy = np.empty(n, dtype=np.float64)
    starts = range(0, n, chunk)
    for start in tqdm(starts, desc=f"checking {name}", unit="chunk", disable=not progress, leave=False):
        block = np.asarray(diffraction[start : start + chunk], dtype=np.float64)
        try:
            check_amplitude_block(name, block, start)
        except BadDiffractionError as exc:
            flags = np.concatenate([bad_pattern_flags(np.asarray(diffraction[i : i + chunk])) for i in starts])
            raise exc.with_count(np.flatnonzero(flags)) from None
        energy[start : start + len(block)] = np.einsum("ijk,ijk->i", block, block)
    return energy


def check_amplitude_block(name: str, block: np.ndarray, first_index: int, pixel_origin: tuple[int, int] = (0, 0),
                          quantity: str = "amplitudes") -> None:
    """Raise naming the first pattern of ``block`` that holds a NaN, inf or negative value.

    ``block`` holds patterns from ``first_index`` on; ``pixel_origin`` is the pattern pixel of its ``[:, 0, 0]``;
    ``quantity``: what the values are (``'amplitudes'`` or ``'counts'``), for the message.
    """
    bad = ~np.isfinite(block) | (block < 0)
    if not bad.any():
        return
    local, row, col = np.unravel_index(np.argmax(bad), block.shape)
    value = block[local, row, col]
    what = "negative" if np.isfinite(value) else "not finite"
    raise BadDiffractionError(
        f"{name}[{first_index + local}] has a {what} value {value} at pixel ({row + pixel_origin[0]}, {col + pixel_origin[1]}); "
        f"diffraction must be non-negative finite {quantity} (mask or zero bad pixels first; clip dark-subtracted data at 0)"
    )


class BadDiffractionError(ValueError):
    """Diffraction holding NaN, inf or negative values; :meth:`with_count` adds how many patterns and which."""

    def with_count(self, bad_indices: np.ndarray) -> BadDiffractionError:
        shown = ", ".join(str(int(i)) for i in bad_indices[:MAX_INDICES_SHOWN]) + (", ..." if len(bad_indices) > MAX_INDICES_SHOWN else "")
        return BadDiffractionError(
            f"{self}; {len(bad_indices)} pattern(s) hold such values: [{shown}]; or drop those patterns and their "
            "positions from the scan (keep = np.isfinite(d).all(axis=(1, 2)) & (d >= 0).all(axis=(1, 2)), then save "
            "d[keep], xcoords[keep], ycoords[keep] and any other per-pattern key)")


MAX_INDICES_SHOWN = 5


def bad_pattern_flags(patterns: np.ndarray) -> np.ndarray:
    """Per pattern of a ``(n, ...)`` block: whether it holds a NaN, inf or negative value."""
    flat = np.asarray(patterns).reshape(len(patterns), -1)
    return ~np.isfinite(flat).all(axis=1) | (flat < 0).any(axis=1)


REAL_GROUND_TRUTH_FIX = (
    "ground truth must be complex (a real one has lost the phase and wrecks training): store the "
    "complex values, or .astype(np.complex64) if the object truly has no phase"
)


def require_complex_image(name: str, image) -> np.ndarray:
    """A 2-D complex64 image; a real one is refused like a real ``Y`` (DATA-001 in docs/findings.md)."""
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    if not np.iscomplexobj(array):
        raise ValueError(f"{name} has real dtype {array.dtype}; {REAL_GROUND_TRUTH_FIX}")
    array = array.astype(np.complex64, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has non-finite values; replace them before loading")
    return array


def split_probe(probe) -> tuple[np.ndarray, np.ndarray]:
    """Accept ``(H, W)`` or a mode stack ``(modes, H, W)``; return (mode 0 as complex64, the stack)."""
    array = np.asarray(probe)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] == 0:
        raise ValueError(f"probeGuess must be (H, W) or a mode stack (modes, H, W), got shape {np.shape(probe)}")
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"probeGuess must be numeric, got dtype {array.dtype}")
    stack = array.astype(np.complex64, copy=False)
    if not np.isfinite(stack).all():
        raise ValueError("probeGuess has non-finite values")
    return stack[0], stack


def probe_value_problem(probe: np.ndarray) -> str | None:
    """Why ``probe`` cannot illuminate anything (non-finite or all zero), or None."""
    array = np.asarray(probe)
    if not np.isfinite(array).all():
        return (f"probeGuess has {int(np.size(array) - np.isfinite(array).sum())} non-finite value(s) (NaN or inf); "
                "store the finite probe recovered for this scan")
    if not np.any(array):
        return "probeGuess is all zeros, so it illuminates nothing and no object can be recovered; store the probe recovered for this scan"
    return None


def probe_size_problem(probe: np.ndarray, N: int) -> str | None:
    """Why mode 0 of ``probe`` cannot illuminate ``N x N`` patterns, or None."""
    shape = tuple(np.shape(probe))[-2:]
    if shape != (N, N):
        return (f"probeGuess is {shape[0]} x {shape[1]} but the diffraction patterns are {N} x {N}; "
                f"store the probe sampled like the patterns, ({N}, {N}) or (modes, {N}, {N})")
    return None


def require_ground_truth(Y, n: int, N: int) -> np.ndarray:
    """Pre-computed ground-truth patches ``(n, N, N)`` complex64 (DATA-001: never real-valued)."""
    array = np.asarray(Y)
    if array.shape != (n, N, N):
        raise ValueError(f"Y must have shape ({n}, {N}, {N}) like the diffraction, got {array.shape}")
    if not np.iscomplexobj(array):
        raise ValueError(
            f"Y has real dtype {array.dtype}; ground truth must be complex64 "
            "(a real Y silently drops the phase and wrecks training): store the complex patches"
        )
    return array.astype(np.complex64, copy=False)


DIFFRACTION_UNITS = ("auto", "amplitude", "counts")
MIN_COUNT_LIKE_MAX = 2.0  # whole numbers all 0 or 1 (a mask, a flat test stack) are not taken for counts


def units_setting(units: str) -> str:
    """How a user sets the diffraction units, in each place this package reads them."""
    return (f"--diffraction-units {units} (ptycho-train, ptycho-reconstruct; data.diffraction_units in ptycho-train's config "
            f"file), --units {units} (ptycho-memmap) or diffraction_units='{units}' (PtychoDataset, RawData)")


def looks_like_counts(sample: np.ndarray) -> bool:
    """Whether float diffraction looks like photon counts: finite, non-negative whole numbers, some of them above 1."""
    values = np.asarray(sample, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all() or (values < 0).any():
        return False
    return bool(values.max() >= MIN_COUNT_LIKE_MAX and np.all(np.abs(values - np.rint(values)) <= 1e-6 * np.maximum(values, 1.0)))


def is_counts(dtype, units: str = "auto") -> bool:
    """Whether diffraction of this dtype holds photon counts (to be square-rooted) rather than amplitude."""
    if units not in DIFFRACTION_UNITS:
        raise ValueError(f"diffraction_units must be one of {DIFFRACTION_UNITS}, got {units!r}")
    if units == "auto":
        return np.dtype(dtype).kind in "iu"
    return units == "counts"


def amplitude_from_counts(counts: np.ndarray, first_index: int = 0, name: str = "diff3d", pixel_origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``sqrt(counts)`` as float32; negative counts are an error naming the pattern (see ``check_amplitude_block``)."""
    if np.dtype(counts.dtype).kind == "i" or np.dtype(counts.dtype).kind == "f":
        negative = counts < 0
        if negative.any():
            local, row, col = np.unravel_index(np.argmax(negative), counts.shape)
            raise BadDiffractionError(
                f"{name}[{first_index + local}] has a negative count {counts[local, row, col]} "
                f"at pixel ({row + pixel_origin[0]}, {col + pixel_origin[1]}); "
                "photon counts must be >= 0 (mask bad pixels before export)"
            )
    return np.sqrt(counts, dtype=np.float32)
