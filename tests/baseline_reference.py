"""A literal, slow transcription of PtychoPINN's grouping, kept only for cases the golden file lacks.

PtychoPINN's own TensorFlow-run outputs (``tests/data/tf_baseline_grouping.npz``, checked in
``tests/test_golden_parity.py``) cover: gridsize 1 and 2 random subsets, sequential sampling,
K-choose-C oversampling and gridsize 3, and the ground-truth patches of objects scanned inside
their borders; that file also checks this transcription (``test_transcription_reproduces_the_tensorflow_baseline``).
This module remains for what the golden file does not hold: every point as a seed, gridsize-1
sequential, ``K == C``, ``neighbor_pool_size``, sequential oversampling, more groups than the pool,
scans smaller than ``K + 1``, coincident points (``tests/test_grouping.py``) and patches at and beyond
the object's edges (``translate_crop_patch``, ``tests/test_patches.py``).

It draws from NumPy's *global* generator exactly as PtychoPINN does (``np.random.seed`` then
``np.random.choice``) and restores the global state afterwards, so the library's private
``RandomState`` stream is checked against the real upstream mechanism.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
from scipy.spatial import cKDTree


@contextlib.contextmanager
def global_rng(seed):
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        yield
    finally:
        np.random.set_state(state)


def reference_groups(x, y, C, K, nsamples, seed=None, sequential=False, oversampling=False, pool_size=None):
    n = len(x)
    if nsamples > n and C > 1:
        if not oversampling:
            raise ValueError("oversampling not enabled")
        K = K if pool_size is None else pool_size
        if K < C:
            raise ValueError("pool too small")
        with global_rng(seed):
            return _oversampled(x, y, C, K, nsamples, sequential)
    if n < C or K < C:
        raise ValueError("not enough points or neighbours")
    with global_rng(0 if sequential else seed):
        return _standard(x, y, C, K, nsamples, sequential)


def _standard(x, y, C, K, nsamples, sequential):
    n = len(x)
    m = min(nsamples, n)
    if sequential:
        seeds = np.arange(m)
    elif m < n:
        seeds = np.random.choice(np.arange(n), size=m, replace=False)
    else:
        seeds = np.arange(n)
    if C == 1:
        return seeds[:, None]
    points = np.column_stack([x, y])
    _, rows = cKDTree(points).query(points[seeds], k=min(K + 1, n))
    groups = []
    for seed_index, row in zip(seeds, rows):
        nb = row[1:K + 1] if len(row) > K else row[:K]
        available = np.concatenate([[seed_index], nb]) if len(nb) < C else nb
        groups.append(np.random.choice(available, size=C, replace=len(available) < C))
    return np.array(groups)


def _oversampled(x, y, C, K, nsamples, sequential):
    n = len(x)
    min_seeds = max(1, math.ceil(nsamples / math.comb(K, C)))
    n_seeds = min(2 * min_seeds, n)
    sequential_seeds = np.arange(min(nsamples, n))
    if sequential and len(sequential_seeds) >= min_seeds:
        seeds = sequential_seeds[:n_seeds]
    elif n_seeds < n:
        seeds = np.random.choice(np.arange(n), size=n_seeds, replace=False)
    else:
        seeds = np.arange(n)
    points = np.column_stack([x, y])
    tree = cKDTree(points)
    pool = []
    for seed_index in seeds:
        _, row = tree.query(points[seed_index], k=min(K + 1, n))
        row = np.atleast_1d(row)
        if len(row) > K:
            nb = row[1:K + 1]
        else:
            nb = row[1:] if len(row) > 1 else row
        available = np.concatenate([[seed_index], nb]) if len(nb) < C else nb[:K]
        for combo in itertools.combinations(available, C):
            pool.append(combo)
            if len(pool) >= 2 * nsamples:
                break
        if len(pool) >= 2 * nsamples:
            break
    if not pool:
        raise ValueError("empty pool")
    pick = np.random.choice(len(pool), size=nsamples, replace=nsamples > len(pool))
    return np.array(pool)[pick]


def translate_crop_patch(padded, ox, oy, N):
    """PtychoPINN's way: translate the whole padded object by (-ox, -oy), bilinear, crop [:N, :N]."""
    height, width = padded.shape
    rows = np.arange(height)[:, None] + oy
    cols = np.arange(width)[None, :] + ox
    r0 = np.floor(rows).astype(int)
    c0 = np.floor(cols).astype(int)
    fr = rows - r0
    fc = cols - c0
    out = np.zeros((height, width), dtype=np.complex128)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            rr = np.broadcast_to(r0 + dr, out.shape)
            cc = np.broadcast_to(c0 + dc, out.shape)
            ok = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
            vals = np.zeros(out.shape, dtype=np.complex128)
            vals[ok] = padded[rr[ok], cc[ok]]
            out += wr * wc * vals
    return out[:N, :N]
