"""Small synthetic scans for tests (deterministic, no files)."""

from __future__ import annotations

import numpy as np


def raster_scan(n_side: int = 8, step: float = 5.0, jitter: float = 0.7, seed: int = 0):
    """Jittered raster positions ``(x, y)`` in pixels, float64."""
    rng = np.random.default_rng(seed)
    grid = np.arange(n_side) * step + 20.0
    x, y = np.meshgrid(grid, grid)
    x = x.ravel() + rng.uniform(-jitter, jitter, x.size)
    y = y.ravel() + rng.uniform(-jitter, jitter, y.size)
    return x, y


def amplitude_stack(n: int, N: int = 16, seed: int = 1) -> np.ndarray:
    """Non-negative float32 amplitudes ``(n, N, N)`` with pattern-to-pattern variation."""
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 1.0, size=(n, N, N)) * rng.uniform(0.5, 2.0, size=(n, 1, 1))).astype(np.float32)


def complex_object(M: int = 96, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    amplitude = 0.5 + 0.5 * rng.random((M, M))
    phase = rng.uniform(-1, 1, (M, M))
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def probe(N: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[:N, :N] - N / 2
    return np.exp(-(xx**2 + yy**2) / (N / 3) ** 2 + 0.1j * xx).astype(np.complex64)
