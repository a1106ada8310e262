"""Neighbour grouping of scan points ("sample then group") with PtychoPINN's random stream."""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np

from ptycho import params

logger = logging.getLogger(__name__)

SEQUENTIAL_SEED = 0
# Bump whenever a change here or in ptycho.raw_data could change which groups, coordinates or norm a
# setting gives: groups caches record it, and a cache made by another version is regrouped.
GROUPING_VERSION = 1


@dataclass(frozen=True)
class GroupingSettings:
    """Everything that decides which scan points form each group."""

    gridsize: int
    K: int = 4
    nsamples: int = 1
    seed: int | None = None
    sequential_sampling: bool = False
    enable_oversampling: bool = False
    neighbor_pool_size: int | None = None

    def __post_init__(self) -> None:
        # NumPy scalars (np.int64(6), np.True_) become Python ones: the settings are JSON in the cache key
        for name, value in vars(self).items():
            if isinstance(value, np.bool_):
                object.__setattr__(self, name, bool(value))
            elif isinstance(value, np.integer):
                object.__setattr__(self, name, int(value))

    @classmethod
    def from_keywords(
        cls, *, K: int = 4, nsamples: int = 1, seed: int | None = None, sequential_sampling: bool = False,
        gridsize: int | None = None, enable_oversampling: bool = False, neighbor_pool_size: int | None = None,
    ) -> GroupingSettings:
        """The settings of PtychoPINN's grouping keywords, with its defaults; ``gridsize=None`` reads ``params.cfg``.

        Public methods that take upstream's keywords build the settings here once and pass them on.
        """
        return cls(
            gridsize=resolve_gridsize(gridsize), K=K, nsamples=nsamples, seed=seed, sequential_sampling=sequential_sampling,
            enable_oversampling=enable_oversampling, neighbor_pool_size=neighbor_pool_size,
        )

    @property
    def C(self) -> int:
        return self.gridsize**2

    def validate(self) -> None:
        _require_int("gridsize", self.gridsize, minimum=1, fix="use gridsize >= 1 (1 = single patterns, 2 = 2x2 groups)")
        _require_int("K", self.K, minimum=1, fix="use K >= gridsize**2 neighbours")
        _require_int("nsamples", self.nsamples, minimum=1, fix="ask for at least one group (n_groups >= 1)")
        if self.seed is not None:
            _require_int("seed", self.seed, minimum=0, fix="use a non-negative integer seed, or None")
        if self.neighbor_pool_size is not None:
            _require_int("neighbor_pool_size", self.neighbor_pool_size, minimum=1, fix="use None (= K) or an integer >= gridsize**2")


def resolve_gridsize(gridsize: int | None) -> int:
    """``gridsize`` if given, else ``params.cfg['gridsize']`` once a config has set it (CONFIG-001 in docs/findings.md)."""
    if gridsize is not None:
        return gridsize
    if not params.is_configured("gridsize"):
        raise ValueError(
            "gridsize was not passed and params.cfg['gridsize'] was never configured; "
            "call update_legacy_dict(params.cfg, config) first or pass gridsize= explicitly"
        )
    return params.get("gridsize")


def sample_groups(xcoords: np.ndarray, ycoords: np.ndarray, settings: GroupingSettings) -> np.ndarray:
    """Return ``(B, C)`` int64 scan-point indices, one row per group, exactly as PtychoPINN draws them.

    Uses a private ``np.random.RandomState``; NumPy's global generator is never touched.
    """
    check_group_request(len(xcoords), settings)
    if needs_oversampling(len(xcoords), settings):
        return _oversampled_groups(xcoords, ycoords, settings)
    return _standard_groups(xcoords, ycoords, settings)


def check_group_request(n_points: int, settings: GroupingSettings) -> None:
    """Refuse (ValueError) settings that cannot group ``n_points`` scan points, as :func:`sample_groups` would: the point
    count is all it needs, so a caller can refuse before any work."""
    settings.validate()
    n, C = n_points, settings.C
    if needs_oversampling(n, settings):
        # "OVERSAMPLING-001" and "K choose C oversampling" below are PtychoPINN's own wording, which scripts
        # match on (docs/migrating.md): kept on purpose, unlike this project's finding ids.
        if not settings.enable_oversampling:
            raise ValueError(
                f"nsamples={settings.nsamples} groups asked for but the scan has only {n} points (gridsize={settings.gridsize}, C={C}); "
                f"K choose C oversampling is required but not enabled (OVERSAMPLING-001): set enable_oversampling=True "
                f"and neighbor_pool_size >= {C} to draw several groups per point, or ask for at most {n} groups"
            )
        K = settings.K if settings.neighbor_pool_size is None else settings.neighbor_pool_size
        if K < C:
            raise ValueError(
                f"K choose C oversampling requires neighbor_pool_size >= C (gridsize**2): got neighbor_pool_size={K}, "
                f"C={C} (OVERSAMPLING-001); set neighbor_pool_size (or K) to at least {C}"
            )
        return
    if n < C:
        raise ValueError(
            f"only {n} scan points but gridsize {settings.gridsize} needs {C} per group; "
            f"use a smaller gridsize or a scan with at least {C} points"
        )
    if settings.K < C:
        raise ValueError(f"K={settings.K} neighbours cannot fill groups of gridsize**2 = {C}; set K >= {C}")


def needs_oversampling(n_points: int, settings: GroupingSettings) -> bool:
    """PtychoPINN's switch to the oversampling path: more groups than points, and groups larger than one."""
    return settings.nsamples > n_points and settings.C > 1


def _standard_groups(xcoords: np.ndarray, ycoords: np.ndarray, s: GroupingSettings) -> np.ndarray:
    n, C, K = len(xcoords), s.C, s.K  # checked by check_group_request
    rng = np.random.RandomState(SEQUENTIAL_SEED if s.sequential_sampling else s.seed)
    m = min(s.nsamples, n)
    if s.sequential_sampling:
        seeds = np.arange(m)
    elif m < n:
        seeds = rng.choice(np.arange(n), size=m, replace=False)
    else:
        seeds = np.arange(n)
    return groups_around_seeds(xcoords, ycoords, seeds, K, C, rng)


def groups_around_seeds(xcoords: np.ndarray, ycoords: np.ndarray, seeds: np.ndarray, K: int, C: int, rng: np.random.RandomState) -> np.ndarray:
    """``(len(seeds), C)`` int64: ``C`` of each seed's ``K`` nearest neighbours drawn from ``rng`` (the seed itself for C=1)."""
    seeds = np.asarray(seeds)
    if C == 1:
        return seeds.reshape(-1, 1).astype(np.int64)
    neighbours = _query_neighbours(xcoords, ycoords, seeds, k=min(K + 1, len(xcoords)))
    groups = np.empty((len(seeds), C), dtype=np.int64)
    for i, (seed_index, row) in enumerate(zip(seeds, neighbours)):
        nb = row[1 : K + 1] if len(row) > K else row[:K]
        available = np.concatenate([[seed_index], nb]) if len(nb) < C else nb
        groups[i] = rng.choice(available, size=C, replace=len(available) < C)
    return groups


def _oversampled_groups(xcoords: np.ndarray, ycoords: np.ndarray, s: GroupingSettings) -> np.ndarray:
    n, C = len(xcoords), s.C
    K = s.K if s.neighbor_pool_size is None else s.neighbor_pool_size  # enough: checked by check_group_request
    sequential = np.arange(min(s.nsamples, n)) if s.sequential_sampling else None
    return oversampled_groups(xcoords, ycoords, s.nsamples, K, C, np.random.RandomState(s.seed), sequential)


def oversampled_groups(
    xcoords: np.ndarray, ycoords: np.ndarray, nsamples: int, K: int, C: int, rng: np.random.RandomState, seed_indices=None
) -> np.ndarray:
    """``(nsamples, C)`` int64 groups drawn from a pool of C-combinations of seeds' K nearest neighbours.

    Seeds: ``seed_indices`` (in order) when it holds enough of them, else drawn from ``rng``; for
    ``C == 1`` the groups are seeds drawn from ``rng`` (PtychoPINN's K choose C oversampling).
    """
    n = len(xcoords)
    combinations_per_seed = 1 if C == 1 else math.comb(K, C)
    min_seeds = max(1, math.ceil(nsamples / combinations_per_seed))
    n_seeds = min(2 * min_seeds, n)
    if seed_indices is not None and len(seed_indices) >= min_seeds:
        seeds = np.asarray(seed_indices)[:n_seeds]
    elif n_seeds < n:
        seeds = rng.choice(np.arange(n), size=n_seeds, replace=False)
    else:
        seeds = np.arange(n)
    if C == 1:
        return rng.choice(seeds, size=nsamples, replace=nsamples > len(seeds)).reshape(-1, 1).astype(np.int64)
    pool = _combination_pool(xcoords, ycoords, seeds, K, C, limit=2 * nsamples)
    if not pool:
        raise ValueError(
            f"no group of {C} distinct points could be formed from {n} scan points; "
            "use a smaller gridsize or a larger scan"
        )
    logger.debug("oversampling: %d seeds, pool of %d combinations", len(seeds), len(pool))
    pick = rng.choice(len(pool), size=nsamples, replace=nsamples > len(pool))
    return np.asarray(pool, dtype=np.int64)[pick]


def _combination_pool(xcoords, ycoords, seeds, K: int, C: int, limit: int) -> list[tuple[int, ...]]:
    neighbours = _query_neighbours(xcoords, ycoords, seeds, k=min(K + 1, len(xcoords)))
    pool: list[tuple[int, ...]] = []
    for seed_index, row in zip(seeds, neighbours):
        if len(row) > K:
            nb = row[1 : K + 1]
        else:
            nb = row[1:] if len(row) > 1 else row
        available = np.concatenate([[seed_index], nb]) if len(nb) < C else nb[:K]
        for combo in itertools.combinations(available.tolist(), C):
            pool.append(combo)
            if len(pool) >= limit:
                return pool
    return pool


def _query_neighbours(xcoords, ycoords, seeds: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest scan points of each seed, nearest first: ``(len(seeds), k)``."""
    from scipy.spatial import cKDTree  # here, not at import: a command that finds its groups cached needs no scipy

    points = np.column_stack([xcoords, ycoords])
    tree = cKDTree(points)
    _, indices = tree.query(points[seeds], k=list(range(1, k + 1)))
    return np.asarray(indices, dtype=np.int64).reshape(len(seeds), k)


def gather_coords(xcoords: np.ndarray, ycoords: np.ndarray, nn_indices: np.ndarray) -> np.ndarray:
    """``(B, 1, 2, C)`` coordinates of each group's members; axis 2 is ``[x, y]``."""
    return np.transpose(np.array([xcoords[nn_indices], ycoords[nn_indices]]), (1, 0, 2))[:, None]


def get_relative_coords(coords_nn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group centres ``(B, 1, 2, 1)`` and member offsets ``-(coords_nn - centre)`` ``(B, 1, 2, C)``."""
    if coords_nn.ndim != 4:
        raise ValueError(f"coords_nn must be (B, 1, 2, C), got shape {coords_nn.shape}")
    coords_offsets = np.mean(coords_nn, axis=3)[..., None]
    coords_relative = -1 * (coords_nn - coords_offsets)
    return coords_offsets, coords_relative


def _require_int(name: str, value, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}); {fix}")
    if value < minimum:
        raise ValueError(f"{name}={value} is invalid; {fix}")
