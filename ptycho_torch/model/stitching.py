"""Stitching: predict every group, place its patches on a canvas with probe weights, fit the count scale."""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ptycho_torch.model import footprint, physics

logger = logging.getLogger(__name__)

__all__ = ["Canvas", "Reconstruction", "default_canvas", "reconstruct", "reconstruct_object"]

DEFAULT_BATCH = 64  # groups per inference batch unless the caller asks for more
GROUP_SELECTIONS = ("all", "cover")  # every group of the dataset, or the fewest (greedily) that hold every pattern
COVERAGE_FLOOR = 1e-3  # pixels whose summed probe weight is below this fraction of the maximum are left 0


@dataclass(frozen=True)
class Canvas:
    """Output grid: ``shape_px (H, W)``; scan position ``(x, y)`` falls on pixel ``(y + origin_px[0], x + origin_px[1])``.

    The scan positions are the patch centres of ``ptycho.patches.extract_patches``: pixel
    ``(N // 2, N // 2)`` of a patch sits on the position. For a scan given in an input object's
    pixel coordinates, ``Canvas(object.shape, (0, 0))`` puts the result on that object's grid.
    """

    shape_px: tuple[int, int]
    origin_px: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """A stitched object ``(H, W)`` complex64, its summed probe weight ``coverage`` ``(H, W)``, the canvas and the fitted count gain."""

    object: np.ndarray
    coverage: np.ndarray
    canvas: Canvas
    gain: float


def default_canvas(xcoords: np.ndarray, ycoords: np.ndarray, N: int) -> Canvas:
    """Ptychodus's rule: ``ceil(scan span + N)`` per axis, the scan's bounding-box midpoint on pixel ``((H-1)/2, (W-1)/2)``."""
    x, y = np.asarray(xcoords, np.float64), np.asarray(ycoords, np.float64)
    W = math.ceil(np.ptp(x) + N)
    H = math.ceil(np.ptp(y) + N)
    return Canvas((H, W), ((H - 1) / 2 - (y.min() + y.max()) / 2, (W - 1) / 2 - (x.min() + x.max()) / 2))


def check_batch_size(batch_size, name: str = "batch_size") -> None:
    """Refuse a batch size that is neither None nor an integer >= 1 (groups per batch)."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1):
        raise ValueError(f"{name}={batch_size!r} must be an integer >= 1 (groups per batch), or None for the default")


def reconstruct_object(model, dataset, *, batch_size: int | None = None, canvas: Canvas | None = None,
                       experiment: int = 0, progress: bool = True, align_phase: bool = True, use_network: bool = True,
                       groups: str = "all", whole_scan: bool = True) -> np.ndarray:
    """The stitched object of one experiment of ``dataset``: complex64 ``(H, W)``, ``reconstruct(...).object``.

    Same arguments and refusals as :func:`reconstruct`.
    """
    return reconstruct(model, dataset, batch_size=batch_size, canvas=canvas, experiment=experiment, progress=progress,
                       align_phase=align_phase, use_network=use_network, groups=groups, whole_scan=whole_scan).object


@torch.inference_mode()
def reconstruct(model, dataset, *, batch_size: int | None = None, canvas: Canvas | None = None,
                experiment: int = 0, progress: bool = True, align_phase: bool = True, use_network: bool = True,
                groups: str = "all", whole_scan: bool = True) -> Reconstruction:
    """Predict every group of ``experiment`` in batches and stitch the member patches.

    Args:
        model: a :class:`~ptycho_torch.model.pinn.PtychoPINN` or a ``PtychoPINN_Lightning`` (its ``.network``
            is used): its device is used; it is put in eval mode meanwhile.
        dataset: a ``PtychoDataset``; its groups of ``experiment`` are predicted. With ``whole_scan`` (default),
            when they leave scan points out (a training dataset of fewer groups than points), a dataset of the
            same scan, settings, units and ``data_dir`` with one group per scan point is built first, so the
            whole scan is reconstructed, as ``ptycho-reconstruct`` does; ``whole_scan=False`` keeps the given groups.
        batch_size: groups per batch (memory, not the result).
        canvas: the output grid (pixels); default :func:`default_canvas` of the scan positions.
        experiment: index into ``dataset.experiments``.
        progress, align_phase, use_network: see below.
        groups: ``'all'`` predicts every group of the experiment; ``'cover'`` only the fewest that,
            chosen greedily from the scan's centre outward, hold every pattern at least once (about a
            quarter of them for groups of four; benchmarks/RESULTS.md has the time and quality of each).

    Returns:
        :class:`Reconstruction`: ``object`` complex64 ``(H, W)`` (0 where the summed probe weight is
        below ``COVERAGE_FLOOR`` of its maximum), ``coverage`` float64 ``(H, W)`` summed probe weight,
        ``canvas`` (scan position ``(x, y)`` falls on pixel ``(y + origin_px[0], x + origin_px[1])``)
        and ``gain``, the dimensionless count gain applied.

    Refused before any prediction: a canvas too large for this machine's memory
    (:class:`footprint.SizeError`, positions probably not in object pixels); ``use_network=False``
    with ``generator_input='diffraction'``, an unknown ``groups`` and a ``batch_size`` that is not an integer >= 1 (ValueError).

    Each patch is placed at its scan position (sub-pixel, bilinear) weighted by the probe
    intensity ``sum_modes |P|^2``; overlaps are averaged with those weights. A group's constant
    phase is not observable from its own patterns, so with ``align_phase`` (default) the groups are
    stitched outward from the scan's centre and each group's patches are first rotated by the
    constant phase that best matches what is already on the canvas where they overlap. The object
    is then multiplied by the real gain ``sqrt(sum counts / sum predicted counts)`` (the Poisson
    maximum-likelihood gain of the whole scan), so its scale is calibrated on the measurement.
    ``canvas`` defaults to :func:`default_canvas` of the experiment's scan positions; ``batch_size``
    to ``InferenceConfig.batch_size`` capped at 64 groups. ``use_network=False`` stitches the model's
    physics input instead of its predictions (the pipeline without the network).
    """
    check_batch_size(batch_size)
    model = getattr(model, "network", model)  # a PtychoPINN_Lightning predicts through its plain network
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if whole_scan:
        dataset, experiment = _covering_every_point(dataset, experiment, progress)
    exp = dataset.experiments[experiment]
    N = dataset.N
    canvas = canvas or default_canvas(exp.scan.xcoords, exp.scan.ycoords, N)
    footprint.check_canvas(canvas.shape_px, str(exp.scan.path))
    if groups not in GROUP_SELECTIONS:
        raise ValueError(f"groups={groups!r}; use one of {GROUP_SELECTIONS}")
    selection = groups
    groups = np.flatnonzero(dataset._index.experiment_of == experiment)
    if align_phase or selection == "cover":
        groups = _outward_order(groups, dataset._index.gather(groups)["coords_center"].reshape(-1, 2).numpy())
    if selection == "cover":
        groups = groups[_covering(exp.grouping.nn_indices[dataset._index.local[groups]])]
    if batch_size is None:  # the config's (Ptychodus: 1000) capped, so activations stay bounded
        batch_size = min(int(getattr(getattr(model, "inference_config", None), "batch_size", 0) or DEFAULT_BATCH), DEFAULT_BATCH)
    accumulator = _Accumulator(canvas, N, device)
    counts_total = predicted_total = 0.0
    try:
        for start in tqdm(range(0, len(groups), batch_size), desc="reconstructing", unit="batch", disable=not progress):
            td, probe, scale = _batch(dataset, groups[start : start + batch_size])
            td, probe, scale = {key: value.to(device) for key, value in td.items()}, probe.to(device), scale.to(device).reshape(-1)
            measurement = model.measurement(td, probe, scale)
            patches = model.predict_patches(td, probe, scale, use_network=use_network, measurement=measurement)
            counts_total += float(physics.counts_from_amplitudes(td["images"], scale).sum(dtype=torch.float64))
            predicted_total += float(measurement.counts(patches, model.count_gain()).sum(dtype=torch.float64))
            positions = (td["coords_center"] - td["coords_relative"])[:, :, 0, :]  # (B, C, 2) [x, y]
            weights = measurement.weights.expand(patches.shape).to(patches.real.dtype)
            accumulator.add(patches.flatten(0, 1), weights.flatten(0, 1), positions.flatten(0, 1), group_size=patches.shape[1] if align_phase else 0)
    finally:
        model.train(was_training)
    gain = math.sqrt(counts_total / predicted_total) if predicted_total > 0 else 1.0
    obj, coverage = accumulator.result()
    logger.info("stitched %d groups on a %d x %d canvas; count gain %.4g", len(groups), *canvas.shape_px, gain)
    return Reconstruction((obj * gain).astype(np.complex64), coverage, canvas, gain)


def _covering_every_point(dataset, experiment: int, progress: bool):
    """``(dataset, experiment)``, or one group per scan point of that scan (experiment 0) when its groups leave points out."""
    exp = dataset.experiments[experiment]
    n_points = len(exp.scan.xcoords)
    if exp.n_groups >= n_points or getattr(dataset, "training_config", None) is None:  # already one group per scan point
        return dataset, experiment
    from dataclasses import replace

    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    logger.info("%s: the dataset's %d groups hold %d of %d scan points; reconstructing from one group per scan point", exp.scan.path,
                exp.n_groups, len(np.unique(exp.grouping.nn_indices)), n_points)
    whole = PtychoDataset(exp.scan.path, dataset.data_config, dataset.model_config, replace(dataset.training_config, n_groups=n_points),
                          data_dir=dataset.data_dir, progress=progress, diffraction_units=getattr(dataset, "diffraction_units", "auto"),
                          layout=getattr(dataset, "layout", "auto"), lock_timeout=getattr(dataset, "lock_timeout", None))
    return whole, 0


def _batch(dataset, indices: np.ndarray):
    """A batch as a plain dict of tensors when the dataset offers it (no TensorDict to import), else as it comes."""
    if hasattr(dataset, "gather"):
        return dataset.gather(indices)
    td, probe, scale = dataset[indices]
    return dict(td.items()), probe, scale


def _covering(members: np.ndarray) -> np.ndarray:
    """Positions in ``members (G, C)`` (pattern indices per group, in order of preference) of few groups that
    together hold every pattern of ``members``, in that order.

    Greedy set cover by thresholds: first the groups all of whose ``C`` patterns are still unchosen,
    then those with ``C - 1`` unchosen, ..., then those with one.
    """
    seen = np.zeros(int(members.max()) + 1 if members.size else 0, dtype=bool)
    chosen = np.zeros(len(members), dtype=bool)
    for needed in range(members.shape[1] if members.ndim == 2 else 0, 0, -1):
        for position, group in enumerate(members):
            if not chosen[position] and np.count_nonzero(~seen[group]) >= needed:
                seen[group] = True
                chosen[position] = True
    return np.flatnonzero(chosen)


def _outward_order(groups: np.ndarray, centres_px: np.ndarray) -> np.ndarray:
    """``groups`` sorted by the distance of their centre from the middle of all centres (ties: original order)."""
    distance = np.hypot(*(centres_px - centres_px.mean(axis=0)).T)
    return groups[np.argsort(distance, kind="stable")]


class _Accumulator:
    """Sums weighted patches and weights on the canvas with bilinear sub-pixel placement."""

    def __init__(self, canvas: Canvas, N: int, device):
        H, W = canvas.shape_px
        self.canvas, self.N, self.W = canvas, N, W
        self.numerator = torch.zeros(H * W, dtype=torch.complex128, device=device)
        self.weight = torch.zeros(H * W, dtype=torch.float64, device=device)
        self.offsets = torch.arange(N + 1, device=device)

    def add(self, patches: torch.Tensor, weights: torch.Tensor, positions: torch.Tensor, group_size: int = 0) -> None:
        """``patches (K, N, N)`` complex, ``weights (K, N, N)``, ``positions (K, 2)`` scan ``[x, y]``.

        ``group_size > 0``: the patches come in groups of that many consecutive patches, added one
        group after the other, each rotated first by the constant phase that aligns it with the
        canvas where they overlap (no rotation where the canvas is still empty).
        """
        origin = torch.tensor(self.canvas.origin_px[::-1], dtype=torch.float64, device=positions.device)  # [col, row]
        corner = positions.to(torch.float64) + origin - self.N // 2  # canvas [col, row] of patch pixel (0, 0)
        whole = torch.floor(corner)
        fraction = (corner - whole).to(weights.dtype)[:, :, None, None]  # (K, 2, 1, 1) [col, row]
        values = physics.bilinear_spread(patches * weights, fraction[:, 0], fraction[:, 1])
        spread = physics.bilinear_spread(weights, fraction[:, 0], fraction[:, 1])
        cols = whole[:, 0:1].long() + self.offsets  # (K, N+1)
        rows = whole[:, 1:2].long() + self.offsets
        H, W = self.canvas.shape_px
        inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
        flat = rows[:, :, None] * W + cols[:, None, :]
        if group_size <= 0:
            self._add(flat[inside], values[inside], spread[inside])
            return
        values, spread = values.to(torch.complex128), spread.to(torch.float64)  # once per batch, not per group
        every = bool(inside.all())  # the usual case: each group's pixels are a plain slice, no mask to apply
        for group in range(0, len(patches), group_size):
            members = slice(group, group + group_size)
            if every:
                indices, placed, weight = flat[members].reshape(-1), values[members].reshape(-1), spread[members].reshape(-1)
            else:
                where = inside[members]
                indices, placed, weight = flat[members][where], values[members][where], spread[members][where]
            overlap = (self.numerator[indices].conj() * placed).sum()
            rotation = torch.where(overlap.abs() > 0, overlap.conj() / overlap.abs().clamp_min(1e-300), torch.ones_like(overlap))
            self._add(indices, placed * rotation, weight)

    def _add(self, flat: torch.Tensor, values: torch.Tensor, spread: torch.Tensor) -> None:
        self.numerator.index_add_(0, flat, values.to(torch.complex128))
        self.weight.index_add_(0, flat, spread.to(torch.float64))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        H, W = self.canvas.shape_px
        weight = self.weight.cpu().numpy().reshape(H, W)
        numerator = self.numerator.cpu().numpy().reshape(H, W)
        covered = weight > COVERAGE_FLOOR * max(float(weight.max()), np.finfo(np.float64).tiny)
        obj = np.zeros((H, W), dtype=np.complex128)
        obj[covered] = numerator[covered] / weight[covered]
        return obj, weight
