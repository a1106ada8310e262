"""Scan data and PtychoPINN's grouping of it into the grouped-data dict."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np

from ptycho import params

from ptycho.grouping import (
    GroupingSettings, gather_coords, get_relative_coords, groups_around_seeds, oversampled_groups, resolve_gridsize, sample_groups,
)
from ptycho.patches import extract_patches
from ptycho.validation import (
    amplitude_from_counts,
    is_counts,
    pattern_energy,
    probe_size_problem,
    require_complex_image,
    require_coordinates,
    require_diffraction_shape,
    require_ground_truth,
    split_probe,
    units_setting,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Grouping",
    "RawData",
    "compute_grouping",
    "get_image_patches",
    "get_neighbor_indices",
    "get_relative_coords",
    "grouped_data_from",
    "normalize_data",
]


@dataclass(frozen=True, eq=False)
class Grouping:
    """The groups of one scan: member indices, their coordinates and the X_full normalisation.

    Everything of the grouped-data dict except the gathered diffraction, ``X_full`` and ``Y``.
    """

    nn_indices: np.ndarray  # (B, C) int32
    coords_nn: np.ndarray  # (B, 1, 2, C) float64
    coords_offsets: np.ndarray  # (B, 1, 2, 1) float64
    coords_relative: np.ndarray  # (B, 1, 2, C) float64
    coords_start_nn: np.ndarray
    coords_start_offsets: np.ndarray
    coords_start_relative: np.ndarray
    norm: float  # X_full = norm * diffraction

    @property
    def n_groups(self) -> int:
        return int(self.nn_indices.shape[0])

    @property
    def C(self) -> int:
        return int(self.nn_indices.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields by name (``norm`` excluded)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "norm"}


def compute_grouping(
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    xcoords_start: np.ndarray,
    ycoords_start: np.ndarray,
    energy: np.ndarray,
    N: int,
    settings: GroupingSettings,
) -> Grouping:
    """Group the scan points and derive coordinates and normalisation, without touching diffraction.

    ``energy[i]`` is ``sum(diffraction[i] ** 2)``; the normalisation is PtychoPINN's
    ``sqrt((N / 2) ** 2 / mean over every grouped pattern of its energy)``.
    """
    nn_indices = sample_groups(xcoords, ycoords, settings).astype(np.int32)
    coords_nn = gather_coords(xcoords, ycoords, nn_indices)
    coords_offsets, coords_relative = get_relative_coords(coords_nn)
    coords_start_nn = gather_coords(xcoords_start, ycoords_start, nn_indices)
    coords_start_offsets, coords_start_relative = get_relative_coords(coords_start_nn)
    return Grouping(
        nn_indices=nn_indices,
        coords_nn=coords_nn,
        coords_offsets=coords_offsets,
        coords_relative=coords_relative,
        coords_start_nn=coords_start_nn,
        coords_start_offsets=coords_start_offsets,
        coords_start_relative=coords_start_relative,
        norm=x_full_norm(energy, nn_indices, N),
    )


def x_full_norm(energy: np.ndarray, nn_indices: np.ndarray, N: int) -> float:
    """The factor that scales the grouped diffraction to a mean energy of ``(N / 2) ** 2``."""
    mean_energy = float(np.mean(energy[nn_indices]))
    if not mean_energy > 0:
        raise ValueError("every grouped diffraction pattern is zero; the data cannot be normalised (check the detector data)")
    return float(np.sqrt((N / 2) ** 2 / mean_energy))


def grouped_data_from(
    grouping: Grouping,
    diffraction,
    *,
    objectGuess: np.ndarray | None = None,
    Y: np.ndarray | None = None,
) -> dict[str, np.ndarray | None]:
    """Materialise PtychoPINN's grouped-data dict from a grouping and the ``(n, N, N)`` stack.

    ``diffraction`` may be an ``np.memmap``: only the grouped patterns are read.
    """
    nn = grouping.nn_indices
    B, C = nn.shape
    N = int(diffraction.shape[1])
    flat = np.asarray(diffraction[nn.ravel()], dtype=np.float32)
    gathered = flat.reshape(B, C, N, N).transpose(0, 2, 3, 1)
    dset: dict[str, np.ndarray | None] = dict(grouping.arrays())
    dset["diffraction"] = gathered
    dset["X_full"] = gathered * np.float32(grouping.norm)
    dset["objectGuess"] = objectGuess
    if Y is not None:
        dset["Y"] = np.asarray(Y[nn.ravel()], dtype=np.complex64).reshape(B, C, N, N).transpose(0, 2, 3, 1)
    elif objectGuess is not None:
        dset["Y"] = get_image_patches(objectGuess, grouping.coords_offsets, grouping.coords_relative, N=N, gridsize=_gridsize_of(C))
    else:
        dset["Y"] = None
    return dset


def get_image_patches(gt_image, global_offsets, local_offsets, N: int | None = None, gridsize: int | None = None) -> np.ndarray:
    """Ground-truth patches ``(B, N, N, C)`` complex64 cut from ``gt_image`` at ``global + local`` offsets."""
    offsets = np.asarray(global_offsets, dtype=np.float64) + np.asarray(local_offsets, dtype=np.float64)
    B, C = offsets.shape[0], offsets.shape[3]
    N = params.get("N") if N is None else N
    if gridsize is not None and gridsize**2 != C:
        raise ValueError(f"gridsize {gridsize} needs {gridsize ** 2} channels, offsets have {C}")
    x = offsets[:, 0, 0, :].ravel()
    y = offsets[:, 0, 1, :].ravel()
    patches = extract_patches(np.asarray(gt_image), x, y, N)
    return patches.reshape(B, C, N, N).transpose(0, 2, 3, 1)


def normalize_data(dset: dict, N: int) -> np.ndarray:
    """PtychoPINN's X_full: the grouped diffraction scaled to a mean energy of ``(N / 2) ** 2``.

    ``dset['diffraction']`` is ``(B, N, N, C)`` (grouped) or ``(n, N, N)`` (single patterns); the
    result has the same shape, float32.
    """
    diffraction = np.asarray(dset["diffraction"])
    if diffraction.ndim == 3:
        energy = np.einsum("bij,bij->b", diffraction, diffraction, dtype=np.float64)
    elif diffraction.ndim == 4:
        energy = np.einsum("bijc,bijc->bc", diffraction, diffraction, dtype=np.float64)
    else:
        raise ValueError(
            f"normalize_data needs dset['diffraction'] of shape (n, N, N) or (B, N, N, C), got {diffraction.shape}; "
            "group the data with RawData.generate_grouped_data"
        )
    if not energy.size or not energy.mean() > 0:
        raise ValueError("every diffraction pattern is zero (or there are none); the data cannot be normalised (check the detector data)")
    norm = np.sqrt((N / 2) ** 2 / energy.mean())
    return (diffraction * np.float32(norm)).astype(np.float32, copy=False)


def get_neighbor_indices(xcoords, ycoords, K: int = 3) -> np.ndarray:
    """``(n, K + 1)`` indices of each scan point's ``K + 1`` nearest points, itself included (usually first)."""
    points = np.column_stack([np.asarray(xcoords, dtype=np.float64), np.asarray(ycoords, dtype=np.float64)])
    if K + 1 > len(points):
        raise ValueError(f"K={K} neighbours need at least {K + 1} scan points, got {len(points)}")
    from scipy.spatial import cKDTree  # here, not at import: a command that finds its groups cached needs no scipy

    _, indices = cKDTree(points).query(points, k=K + 1)
    return np.asarray(indices).reshape(len(points), K + 1)


class RawData:
    """One ptychography scan: positions, diffraction amplitudes, probe and optional object.

    ``probeGuess`` may be a mode stack ``(modes, H, W)``: mode 0 is used as ``probeGuess``
    and the stack is kept as ``probe_modes``. Integer diffraction is taken as photon counts
    and converted to amplitude (sqrt) unless ``diffraction_units='amplitude'``.
    """

    def __init__(
        self,
        xcoords,
        ycoords,
        xcoords_start,
        ycoords_start,
        diff3d,
        probeGuess,
        scan_index,
        objectGuess=None,
        Y=None,
        norm_Y_I=None,
        metadata=None,
        *,
        pattern_energy: np.ndarray | None = None,
        diffraction_units: str = "auto",
    ):
        self.xcoords = require_coordinates("xcoords", xcoords)
        n = len(self.xcoords)
        self.ycoords = require_coordinates("ycoords", ycoords, n)
        self.xcoords_start = require_coordinates("xcoords_start", xcoords_start, n)
        self.ycoords_start = require_coordinates("ycoords_start", ycoords_start, n)
        self.scan_index = _require_scan_index(scan_index, n)
        self.diff3d = _prepare_diffraction(diff3d, n, diffraction_units)
        self.probeGuess, self.probe_modes = (None, None) if probeGuess is None else split_probe(probeGuess)
        if self.probeGuess is not None and self.diff3d is not None:
            problem = probe_size_problem(self.probeGuess, self.diff3d.shape[1])
            if problem:
                raise ValueError(problem)
        self.objectGuess = None if objectGuess is None else require_complex_image("objectGuess", objectGuess)
        self.Y = None if Y is None else require_ground_truth(Y, n, self.diff3d.shape[1])
        self.norm_Y_I = norm_Y_I
        self.metadata = dict(metadata or {})
        self._energy = self._checked_energy(pattern_energy)

    @staticmethod
    def from_coords_without_pc(xcoords, ycoords, diff3d, probeGuess, scan_index, objectGuess=None, **kwargs) -> RawData:
        """A scan whose start coordinates equal its coordinates."""
        return RawData(xcoords, ycoords, xcoords, ycoords, diff3d, probeGuess, scan_index, objectGuess, **kwargs)

    @staticmethod
    def from_file(path, diffraction_units: str = "auto", layout: str = "auto") -> RawData:
        """Load a scan NPZ (``diffraction`` or legacy ``diff3d``); pickled members are refused.

        ``layout`` settles an ambiguous cube stack: ``"nNN"`` or legacy ``"NNn"`` (see ``ptycho.scan_file``).
        """
        from ptycho.scan_file import read_scan

        scan = read_scan(path, layout=layout)
        metadata = {"source": str(path)}
        if scan.metadata is not None:
            metadata["npz_metadata"] = scan.metadata
        return RawData(
            scan.xcoords,
            scan.ycoords,
            scan.xcoords_start,
            scan.ycoords_start,
            scan.diffraction,
            scan.probeGuess,
            scan.scan_index,
            scan.objectGuess,
            Y=scan.Y,
            metadata=metadata,
            diffraction_units=diffraction_units,
        )

    def to_file(self, path) -> None:
        """Write the scan as an NPZ of plain arrays (readable with ``allow_pickle=False``)."""
        arrays = {
            "xcoords": self.xcoords,
            "ycoords": self.ycoords,
            "xcoords_start": self.xcoords_start,
            "ycoords_start": self.ycoords_start,
            "diff3d": np.asarray(self.diff3d),
            "probeGuess": self.probe_modes if self.probe_modes is not None and len(self.probe_modes) > 1 else self.probeGuess,
            "scan_index": self.scan_index,
            "objectGuess": self.objectGuess,
            "Y": self.Y,
        }
        np.savez(path, **{key: value for key, value in arrays.items() if value is not None})

    @property
    def pattern_energy(self) -> np.ndarray:
        """``sum(diff3d[i] ** 2)`` per pattern, float64."""
        if self._energy is None:
            raise ValueError("this RawData has no diffraction (diff3d is None)")
        return self._energy

    def generate_grouping(
        self, N: int, K: int = 4, nsamples: int = 1, seed: int | None = None, sequential_sampling: bool = False,
        gridsize: int | None = None, enable_oversampling: bool = False, neighbor_pool_size: int | None = None,
    ) -> Grouping:
        """:meth:`grouping` with PtychoPINN's grouping keywords (``gridsize=None`` reads ``params.cfg``)."""
        self._require_patterns_of_size(N)
        return self.grouping(N, GroupingSettings.from_keywords(
            K=K, nsamples=nsamples, seed=seed, sequential_sampling=sequential_sampling, gridsize=gridsize,
            enable_oversampling=enable_oversampling, neighbor_pool_size=neighbor_pool_size,
        ))

    def generate_grouped_data(
        self, N: int, K: int = 4, nsamples: int = 1, dataset_path=None, seed: int | None = None,
        sequential_sampling: bool = False, gridsize: int | None = None, enable_oversampling: bool = False,
        neighbor_pool_size: int | None = None,
    ) -> dict[str, np.ndarray | None]:
        """PtychoPINN's grouped-data dict (:meth:`grouped_data`; ``dataset_path`` is accepted for compatibility, unused)."""
        self._require_patterns_of_size(N)
        return self.grouped_data(N, GroupingSettings.from_keywords(
            K=K, nsamples=nsamples, seed=seed, sequential_sampling=sequential_sampling, gridsize=gridsize,
            enable_oversampling=enable_oversampling, neighbor_pool_size=neighbor_pool_size,
        ))

    def grouping(self, N: int, settings: GroupingSettings) -> Grouping:
        """The grouping alone: indices, coordinates and normalisation, no diffraction gathered."""
        self._require_patterns_of_size(N)
        grouping = compute_grouping(
            self.xcoords, self.ycoords, self.xcoords_start, self.ycoords_start, self.pattern_energy, N, settings
        )
        logger.debug("grouped %d scan points into %d groups of %d", len(self.xcoords), grouping.n_groups, grouping.C)
        return grouping

    def grouped_data(self, N: int, settings: GroupingSettings) -> dict[str, np.ndarray | None]:
        """PtychoPINN's grouped-data dict for these settings."""
        return grouped_data_from(self.grouping(N, settings), self.diff3d, objectGuess=self.objectGuess, Y=self.Y)

    def _generate_groups_efficiently(
        self, nsamples: int, K: int, C: int, seed: int | None = None, seed_indices: np.ndarray | None = None
    ) -> np.ndarray:
        """PtychoPINN's "sample then group" draw: ``(groups, C)`` scan-point indices.

        Same signature, random stream and shapes as PtychoPINN's private helper (int32 for C > 1;
        ``min(nsamples, n)`` groups): seeds drawn with ``seed`` (or ``seed_indices`` in order, with
        a fixed seed 0 for the neighbour choice), then ``C`` of each seed's ``K`` nearest
        neighbours. Uses a private generator, never NumPy's global one.
        """
        n = self._require_group_size(K, C)
        if seed_indices is not None:
            seeds = np.asarray(seed_indices)[: min(len(seed_indices), n)]
            rng = np.random.RandomState(0)
        else:
            rng = np.random.RandomState(seed)
            m = min(int(nsamples), n)
            seeds = rng.choice(np.arange(n), size=m, replace=False) if m < n else np.arange(n)
        groups = groups_around_seeds(self.xcoords, self.ycoords, seeds, K, C, rng)
        return groups.astype(np.int32) if C > 1 else groups

    def _generate_groups_with_oversampling(
        self, nsamples: int, K: int, C: int, seed: int | None = None, seed_indices: np.ndarray | None = None
    ) -> np.ndarray:
        """PtychoPINN's K choose C oversampling draw: ``(nsamples, C)`` groups, more than there are points if asked.

        Same signature and random stream as PtychoPINN's private helper (a pool of C-combinations of
        seeds' K nearest neighbours, sampled with ``seed``), on a private generator.
        """
        self._require_group_size(K, C)
        return oversampled_groups(self.xcoords, self.ycoords, int(nsamples), K, C, np.random.RandomState(seed), seed_indices)

    def _require_group_size(self, K: int, C: int) -> int:
        n = len(self.xcoords)
        if n < C:
            raise ValueError(f"Dataset has only {n} points but {C} coordinates per group requested; use a smaller gridsize")
        if K < C:
            raise ValueError(f"K={K} must be >= C={C} (need at least C neighbors to form a group); set K >= {C}")
        return n

    def __repr__(self) -> str:
        def shape(value):
            return "None" if value is None else f"{tuple(value.shape)} {value.dtype}"

        return (
            f"RawData(n={len(self.xcoords)}, diff3d={shape(self.diff3d)}, probeGuess={shape(self.probeGuess)}, "
            f"objectGuess={shape(self.objectGuess)}, Y={shape(self.Y)})"
        )

    __str__ = __repr__

    def _checked_energy(self, energy) -> np.ndarray | None:
        if self.diff3d is None:
            return None
        if energy is None:
            return pattern_energy("diff3d", self.diff3d, progress=len(self.diff3d) > 50_000)
        energy = np.asarray(energy, dtype=np.float64)
        if energy.shape != (len(self.diff3d),):
            raise ValueError(f"pattern_energy must have one entry per pattern ({len(self.diff3d)}), got shape {energy.shape}")
        return energy

    def _require_patterns_of_size(self, N: int) -> None:
        if self.diff3d is None:
            raise ValueError("this RawData has no diffraction (diff3d is None); it cannot be grouped")
        if int(N) != self.diff3d.shape[1]:
            raise ValueError(
                f"N={N} does not match the {self.diff3d.shape[1]} x {self.diff3d.shape[2]} diffraction patterns; "
                f"set N={self.diff3d.shape[1]} (model.N) or resample the patterns"
            )


def _gridsize_of(C: int) -> int:
    root = int(round(C**0.5))
    if root * root != C:
        raise ValueError(f"{C} channels per group is not a square gridsize")
    return root


def _require_scan_index(scan_index, n: int) -> np.ndarray:
    if scan_index is None:
        return np.zeros(n, dtype=np.int64)
    array = np.asarray(scan_index)
    if array.shape != (n,):
        raise ValueError(f"scan_index must have shape ({n},) (one entry per scan point), got {array.shape}")
    if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
        return array.astype(np.int64)  # PtychoPINN writes np.zeros(n), a float array of whole numbers
    if array.dtype.kind not in "iu":
        raise TypeError(f"scan_index must hold whole numbers (one scan id per point), got dtype {array.dtype}")
    return array


def _prepare_diffraction(diff3d, n: int, units: str):
    if diff3d is None:
        return None
    count, _ = require_diffraction_shape("diff3d", diff3d)
    if count != n:
        raise ValueError(f"diff3d has {count} patterns but there are {n} scan positions; give one pattern per position")
    if is_counts(diff3d.dtype, units):
        if units == "auto":
            logger.warning("diff3d has integer dtype %s: treating it as photon counts and taking sqrt; if it already is "
                           "amplitude pass %s", diff3d.dtype, units_setting("amplitude"))
        return amplitude_from_counts(np.asarray(diff3d))
    if isinstance(diff3d, np.ndarray) and diff3d.dtype != np.float32 and not isinstance(diff3d, np.memmap):
        return diff3d.astype(np.float32)
    return diff3d
