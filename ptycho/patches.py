"""Ground-truth object patches sampled bilinearly at sub-pixel scan positions."""

from __future__ import annotations

import numpy as np

_CHUNK = 1024


def extract_patches(image: np.ndarray, x: np.ndarray, y: np.ndarray, N: int) -> np.ndarray:
    """Return ``(P, N, N)`` complex64 patches of ``image`` centred on the positions ``(x, y)``.

    ``image`` is padded with ``N // 2`` zeros on every side and sampled on the grid
    ``patch[p, i, j] = padded(i + y[p], j + x[p])`` with bilinear interpolation (real and
    imaginary parts alike); samples outside the padded array are zero. Only the
    ``(N + 1) x (N + 1)`` window under each patch is read.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape} and {y.shape}")
    bad = np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))
    if bad.size:
        raise ValueError(f"patch position {bad[0]} is not finite: ({x[bad[0]]}, {y[bad[0]]})")
    padded = np.pad(image.astype(np.complex64, copy=False), N // 2)
    out = np.empty((x.size, N, N), dtype=np.complex64)
    for start in range(0, x.size, _CHUNK):
        stop = min(start + _CHUNK, x.size)
        out[start:stop] = _sample_windows(padded, x[start:stop], y[start:stop], N)
    return out


def _sample_windows(padded: np.ndarray, x: np.ndarray, y: np.ndarray, N: int) -> np.ndarray:
    row0 = np.floor(y)
    col0 = np.floor(x)
    fy = (y - row0).astype(np.float32)[:, None, None]
    fx = (x - col0).astype(np.float32)[:, None, None]
    window = _windows(padded, row0.astype(np.int64), col0.astype(np.int64), N + 1)
    along_x = window[:, :, :-1] + fx * (window[:, :, 1:] - window[:, :, :-1])
    return along_x[:, :-1] + fy * (along_x[:, 1:] - along_x[:, :-1])


def _windows(array: np.ndarray, row0: np.ndarray, col0: np.ndarray, size: int) -> np.ndarray:
    """``array[row0[p] : row0[p] + size, col0[p] : col0[p] + size]`` for every p, zero outside the array."""
    height, width = array.shape
    inside = (row0 >= 0) & (col0 >= 0) & (row0 + size <= height) & (col0 + size <= width)
    out = np.empty((len(row0), size, size), dtype=array.dtype)
    if inside.any():
        views = np.lib.stride_tricks.sliding_window_view(array, (size, size))
        out[inside] = views[row0[inside], col0[inside]]
    if not inside.all():
        out[~inside] = _gather_zero_outside(array, row0[~inside, None] + np.arange(size), col0[~inside, None] + np.arange(size))
    return out


def _gather_zero_outside(array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``array[rows[p, :, None], cols[p, None, :]]`` for every p, zero where out of bounds."""
    height, width = array.shape
    row_ok = (rows >= 0) & (rows < height)
    col_ok = (cols >= 0) & (cols < width)
    window = array[np.clip(rows, 0, height - 1)[:, :, None], np.clip(cols, 0, width - 1)[:, None, :]]
    window *= row_ok[:, :, None] & col_ok[:, None, :]
    return window
