"""Refinement: error-reduction iterations over the whole object from a stitched start, through the model's own physics."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from ptycho_torch.model import physics
from ptycho_torch.model.forward_model import FarFieldPtychography
from ptycho_torch.model.stitching import COVERAGE_FLOOR, Reconstruction

logger = logging.getLogger(__name__)

__all__ = ["refine"]

REGULARISATION = 0.05  # of the largest coverage, added to the coverage that divides each update (physics.object_estimate's)
PATTERNS_PER_BATCH = 256  # patterns whose windows and exit waves are held at once: memory, not the result


@torch.inference_mode()
def refine(result: Reconstruction, dataset, iterations: int, *, experiment: int = 0, batch_size: int = PATTERNS_PER_BATCH,
           progress: bool = True) -> Reconstruction:
    """``iterations`` error-reduction steps over the whole canvas of ``result``, with the known probe.

    Each step extracts every scan point's window of the object (:class:`physics.GroupWindows` on the
    canvas), imposes the measured modulus on its exit waves (:func:`physics.project_modulus`) and adds
    all corrections back at once, divided by the summed probe weight plus ``0.05`` of its maximum: the
    update of :func:`physics.object_estimate`, on every pattern of the scan instead of one group. The
    modulus is ``sqrt(counts / kappa)``, ``kappa`` the count scale of the experiment (specs/model.md
    section 3), in which units ``result.object`` (calibrated by the stitching's count gain) predicts
    the counts. ``iterations=0`` returns ``result``. Memory: the canvas and ``batch_size`` patterns.
    """
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"refinement iterations must be an integer >= 0, got {iterations!r}")
    if iterations == 0:
        return result
    exp = dataset.experiments[experiment]
    N, (H, W) = dataset.N, result.canvas.shape_px
    probe = physics.unit_peak(dataset.probes[experiment][None, None])  # (1, 1, P, N, N), peak amplitude 1
    probe_energy = float((probe.real**2 + probe.imag**2).sum())
    kappa = float(np.mean(exp.store.energy)) / probe_energy  # mean counts per pattern / what a unit object gives
    measurement = FarFieldPtychography(probe, torch.tensor([kappa]))
    corners = _window_corners(exp.scan.xcoords, exp.scan.ycoords, result.canvas.origin_px, N)
    batches = [slice(start, start + batch_size) for start in range(0, len(corners), batch_size)]
    windows = [physics.GroupWindows.at(corners[None, part], N, (H, W)) for part in batches]
    coverage = sum(w.place(measurement.weights.expand(1, w.C, N, N)) for w in windows)[0]
    inverse = 1 / (coverage + REGULARISATION * coverage.max()).clamp_min(torch.finfo(coverage.dtype).tiny)
    obj = torch.from_numpy(np.ascontiguousarray(result.object)).to(torch.complex64)[None]
    for _ in tqdm(range(int(iterations)), desc="refining", unit="iteration", disable=not progress):
        update = torch.zeros_like(obj)
        for part, w in zip(batches, windows):
            modulus = torch.from_numpy(np.abs(np.asarray(exp.store.diffraction[part], dtype=np.float32)))[None] / math.sqrt(kappa)
            update += w.place(measurement.correction(w.extract(obj), modulus))
        obj = obj + update * inverse
    covered = (coverage > COVERAGE_FLOOR * coverage.max()).numpy()
    refined = np.where(covered, obj[0].numpy(), 0).astype(np.complex64)
    logger.info("refined %s: %d error-reduction iterations over %d patterns", exp.scan.path, iterations, len(corners))
    return replace(result, object=refined)


def _window_corners(xcoords, ycoords, origin_px: tuple[float, float], N: int) -> torch.Tensor:
    """``(n, 2)`` ``[col, row]`` of each scan point's window corner on the canvas (the stitching's placement)."""
    x, y = np.asarray(xcoords, np.float64), np.asarray(ycoords, np.float64)
    return torch.from_numpy(np.stack([x + origin_px[1] - N // 2, y + origin_px[0] - N // 2], axis=1))
