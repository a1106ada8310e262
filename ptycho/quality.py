"""Reconstruction quality against a known object: register, erode the covered interior, fit one complex scalar, compare."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Quality", "reconstruction_quality", "resample_onto_canvas"]

# What a scan's objectGuess is, in labels and messages: in a real scan a previous reconstruction.
REFERENCE_LABEL = "objectGuess in the scan (not ground truth unless simulated)"


@dataclass(frozen=True)
class Quality:
    """Scores on the compared pixels, the registration shift and the pixel count.

    ``nrmse`` is ``||alpha rec - truth|| / ||truth||``; ``phase_contrast`` is the standard deviation
    of the fitted reconstruction's phase over that of the truth (1: the phase range is right; below
    1: the phase is flattened).
    """

    amplitude_r: float
    phase_r: float
    shift_px: tuple[int, int]
    n_pixels: int
    nrmse: float
    phase_contrast: float


def reconstruction_quality(reconstruction: np.ndarray, truth: np.ndarray, covered: np.ndarray, *, erode_px: int = 8, max_shift_px: int = 8) -> Quality:
    """Compare a reconstruction placed on the truth's grid (same shape) with the truth.

    1. register: the integer shift (within ``max_shift_px``) maximising the correlation of the
       mean-subtracted amplitudes inside ``covered``;
    2. keep ``covered`` eroded by ``erode_px`` pixels (the interior, away from the scan edge);
    3. fit one complex scalar ``alpha = <rec, truth> / <rec, rec>`` there (global amplitude and phase);
    4. Pearson r of ``|alpha rec|`` against ``|truth|`` and of ``angle(alpha rec)`` against ``angle(truth)``,
       the complex NRMSE of ``alpha rec`` and the phase contrast (see :class:`Quality`).
    """
    if reconstruction.shape != truth.shape or covered.shape != truth.shape:
        raise ValueError(f"reconstruction {reconstruction.shape}, truth {truth.shape} and covered {covered.shape} must share one grid")
    interior = int(binary_erosion(covered, erode_px).sum())  # what any shift leaves, before registering on an empty region
    if interior < 16:
        raise ValueError(f"only {interior} pixels remain after eroding the covered region by {erode_px} px")
    shift = _register(reconstruction, truth, covered, max_shift_px)
    rec = np.roll(reconstruction, shift, axis=(0, 1))
    mask = binary_erosion(np.roll(covered, shift, axis=(0, 1)), erode_px)
    if mask.sum() < 16:
        raise ValueError(f"only {int(mask.sum())} pixels remain after eroding the covered region by {erode_px} px")
    r, t = rec[mask].astype(np.complex128), truth[mask].astype(np.complex128)
    alpha = np.vdot(r, t) / np.vdot(r, r)
    fitted = alpha * r
    phase_fitted, phase_true = np.angle(fitted), np.angle(t)
    return Quality(
        amplitude_r=_pearson(np.abs(fitted), np.abs(t)),
        phase_r=_pearson(phase_fitted, phase_true),
        shift_px=shift,
        n_pixels=int(mask.sum()),
        nrmse=float(np.linalg.norm(fitted - t) / np.linalg.norm(t)),
        phase_contrast=float(np.std(phase_fitted) / max(float(np.std(phase_true)), 1e-30)),
    )


def _register(rec: np.ndarray, truth: np.ndarray, covered: np.ndarray, max_shift: int) -> tuple[int, int]:
    best, best_shift = -np.inf, (0, 0)
    interior = binary_erosion(covered, max_shift)
    if not interior.any():  # nothing to correlate over (a region thinner than the shifts tried): no shift
        return best_shift
    t = np.abs(truth)[interior]
    t = t - t.mean()
    amplitude = np.abs(rec)
    H, W = amplitude.shape
    m = max_shift
    inner = interior[m : H - m, m : W - m] if m >= 1 and H > 2 * m and W > 2 * m else None
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            if inner is not None:  # the eroded interior keeps m pixels from every edge: no shift within m wraps around
                a = amplitude[m - dy : H - m - dy, m - dx : W - m - dx][inner]  # = np.roll(amplitude, (dy, dx))[interior], no copy of the whole
            else:
                a = np.roll(amplitude, (dy, dx), axis=(0, 1))[interior]
            score = np.dot(a - a.mean(), t) / (np.linalg.norm(a - a.mean()) + 1e-30)
            if score > best:
                best, best_shift = score, (dy, dx)
    return best_shift


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def resample_onto_canvas(image: np.ndarray, shape_px: tuple[int, int], origin_px: tuple[float, float]) -> np.ndarray:
    """``image`` (indexed by scan positions in its own pixels: ``image[y, x]``) on a reconstruction canvas.

    The canvas puts scan position ``(x, y)`` on pixel ``(y + origin_px[0], x + origin_px[1])``; canvas pixels
    outside ``image`` are NaN. Bilinear, on the real and imaginary parts.
    """
    array = np.asarray(image)
    rows = _linear_taps(int(shape_px[0]), float(origin_px[0]), array.shape[0])
    cols = _linear_taps(int(shape_px[1]), float(origin_px[1]), array.shape[1])
    part = lambda values: _bilinear(values, rows, cols)  # noqa: E731
    return (part(array.real.astype(np.float64)) + 1j * part(array.imag.astype(np.float64))).astype(np.complex64)


def _linear_taps(n_out: int, origin: float, n_in: int):
    """Per output pixel along one axis: the two input indices, their weights and whether the sample lies on the input.

    The arithmetic of ``scipy.ndimage.map_coordinates(order=1, mode='constant')`` at coordinate
    ``c = i - origin``: taps ``floor(c)`` and the next, weights ``w0 = 1 - t`` and ``1 - w0`` for
    ``t = c - floor(c)``; ``c`` outside ``[0, n_in - 1]`` gives the constant (NaN here).
    """
    coordinate = np.arange(n_out, dtype=np.float64) - origin
    start = np.floor(coordinate)
    w0 = 1.0 - (coordinate - start)
    first = np.clip(start, 0, max(n_in - 1, 0)).astype(np.int64)
    return first, np.minimum(first + 1, max(n_in - 1, 0)), w0, 1.0 - w0, (coordinate >= 0) & (coordinate <= n_in - 1)


def _bilinear(values: np.ndarray, rows, cols) -> np.ndarray:
    """``values`` sampled on the separable grid of :func:`_linear_taps`, summed in ``map_coordinates``' order (same bits)."""
    r0, r1, wr0, wr1, row_inside = rows
    c0, c1, wc0, wc1, col_inside = cols
    if values.size == 0:
        return np.full((len(r0), len(c0)), np.nan)
    out = (values[np.ix_(r0, c0)] * wr0[:, None]) * wc0
    out += (values[np.ix_(r0, c1)] * wr0[:, None]) * wc1
    out += (values[np.ix_(r1, c0)] * wr1[:, None]) * wc0
    out += (values[np.ix_(r1, c1)] * wr1[:, None]) * wc1
    out[~(row_inside[:, None] & col_inside)] = np.nan
    return out


def binary_erosion(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, iterations=iterations)``: ``iterations`` erosions of a 2-D boolean mask by
    the cross of four neighbours, pixels beyond the border counting as False; as there, ``iterations < 1`` erodes
    until nothing changes (scipy is not imported: it costs a command a quarter of a CPU second)."""
    eroded = np.asarray(mask, dtype=bool).copy()
    if eroded.ndim != 2:
        raise ValueError(f"binary_erosion takes a 2-D mask, got shape {eroded.shape}")
    remaining = int(iterations) if iterations >= 1 else -1
    while remaining != 0 and eroded.any():
        remaining -= 1
        kept = eroded.copy()
        kept[1:, :] &= eroded[:-1, :]
        kept[:-1, :] &= eroded[1:, :]
        kept[:, 1:] &= eroded[:, :-1]
        kept[:, :-1] &= eroded[:, 1:]
        kept[0, :] = kept[-1, :] = False
        kept[:, 0] = kept[:, -1] = False
        eroded = kept
    return eroded
