"""A network over the whole refined object: one correction, kept only when the sweeps after it fit the data better."""

from __future__ import annotations

import logging
import numbers
from dataclasses import replace

import numpy as np
import torch

from ptycho_torch.model.networks import UNetGenerator
from ptycho_torch.model.stitching import COVERAGE_FLOOR, Reconstruction

logger = logging.getLogger(__name__)

__all__ = ["ObjectNetwork", "correct_object", "refine_with_object_network"]

MULTIPLE_PX = 8  # the U-Net pools three times: its input's sides are multiples of this
TILE_PX = 512  # the object is corrected in tiles of this side (memory), each read with MARGIN_PX more on every side
MARGIN_PX = 64
COVERED_FRACTION = 0.05  # of the coverage's maximum: the pixels whose mean amplitude sets the network's input scale


class ObjectNetwork(torch.nn.Module):
    """The U-Net of the group network (base width 16, batch norm, shared decoder) on a whole object.

    Its input is the object divided by its mean covered amplitude, as ``Re - 1`` and ``Im`` (and, with
    ``illumination``, the scan's probe coverage over its maximum as a third channel); its output multiplies that
    object by ``A exp(i phi)``. Trained on objects after 5 and 10 refinement sweeps from a unit object
    (:mod:`ptycho_torch.pretrained.build_object_network`).
    """

    def __init__(self, *, illumination: bool = False):
        super().__init__()
        self.illumination = bool(illumination)
        self.unet = UNetGenerator(1, 1, base_filters=16, in_channels=3 if self.illumination else 2, batch_norm=True,
                                  use_shared_decoder=True)
        self.unet.to(memory_format=torch.channels_last)

    def forward(self, obj: torch.Tensor, illumination: torch.Tensor | None = None, *, bf16: bool = False) -> torch.Tensor:
        """``(B, H, W)`` complex object in units of its mean amplitude (``H``, ``W`` multiples of 8), and for a network with
        ``illumination`` the ``(B, H, W)`` coverage over its maximum -> corrected object, same shape."""
        channels = [obj.real - 1, obj.imag]
        if self.illumination:
            if illumination is None or illumination.shape != obj.shape:
                raise ValueError(f"this object network reads the scan's coverage: pass illumination of shape {tuple(obj.shape)}, "
                                 f"got {None if illumination is None else tuple(illumination.shape)}")
            channels.append(illumination.to(obj.real.dtype))
        elif illumination is not None:
            raise ValueError("this object network was trained without the coverage input: call it without illumination")
        x = torch.stack(channels, dim=1).contiguous(memory_format=torch.channels_last)
        if bf16:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                amp_features, phase_features = self.unet.features(x)
            amplitude, phase = self.unet.heads(amp_features.float(), phase_features.float())
        else:
            amplitude, phase = self.unet(x)
        return obj * torch.polar(amplitude[:, 0].float(), phase[:, 0].float())


def mean_covered_amplitude(obj: np.ndarray, coverage: np.ndarray) -> tuple[float, np.ndarray]:
    """The object's mean amplitude where the probe weight is at least ``COVERED_FRACTION`` of its maximum, and that mask."""
    covered = coverage > COVERED_FRACTION * coverage.max()
    scale = float(np.abs(obj[covered]).mean()) if covered.any() else 1.0
    return (scale if scale > 0 else 1.0), covered


def _padded_tile(part: np.ndarray, fill, dtype) -> torch.Tensor:
    """``(1, H', W')`` tensor of ``part`` with ``H'``, ``W'`` rounded up to multiples of ``MULTIPLE_PX``, ``fill`` beyond it."""
    h, w = part.shape
    tile = torch.full((1, -(-h // MULTIPLE_PX) * MULTIPLE_PX, -(-w // MULTIPLE_PX) * MULTIPLE_PX), fill, dtype=dtype)
    tile[0, :h, :w] = torch.from_numpy(np.ascontiguousarray(part))
    return tile


@torch.inference_mode()
def correct_object(network: ObjectNetwork, result: Reconstruction, *, bf16: bool = False) -> Reconstruction:
    """``result`` with its object corrected by ``network``, tile by tile (``TILE_PX`` plus ``MARGIN_PX``); pixels the
    scan never saw stay as they were."""
    scale, covered = mean_covered_amplitude(result.object, result.coverage)
    obj = result.object / scale
    illumination = None
    if network.illumination:  # its third input: the coverage over its maximum
        peak = float(result.coverage.max())
        illumination = (result.coverage / (peak if peak > 0 else 1.0)).astype(np.float32)
    H, W = obj.shape
    corrected = obj.astype(np.complex64, copy=True)
    device = next(network.parameters()).device
    for top in range(0, H, TILE_PX):
        for left in range(0, W, TILE_PX):
            y0, x0 = max(top - MARGIN_PX, 0), max(left - MARGIN_PX, 0)
            y1, x1 = min(top + TILE_PX + MARGIN_PX, H), min(left + TILE_PX + MARGIN_PX, W)
            h, w = y1 - y0, x1 - x0
            tile = _padded_tile(obj[y0:y1, x0:x1], 1, torch.complex64).to(device)  # unit object beyond the edge
            coverage_tile = None if illumination is None else _padded_tile(illumination[y0:y1, x0:x1], 0, torch.float32).to(device)
            out = network(tile, coverage_tile, bf16=bf16)[0, :h, :w].cpu().numpy()
            ty1, tx1 = min(top + TILE_PX, H), min(left + TILE_PX, W)
            corrected[top:ty1, left:tx1] = out[top - y0:ty1 - y0, left - x0:tx1 - x0]
    seen = covered | (result.object != 0)
    return replace(result, object=np.where(seen, corrected * scale, result.object).astype(np.complex64))


def refine_with_object_network(result: Reconstruction, dataset, network: ObjectNetwork, sweeps_after: int, *, update=None,
                               bf16: bool = False, progress: bool = True, sweeps_before: int = 0) -> tuple[Reconstruction, bool]:
    """``sweeps_before`` refinement sweeps from ``result``, then ``sweeps_after`` more from the network's correction of that
    object and from that object itself; the one whose object fits the measured patterns better
    (:func:`~ptycho_torch.model.refine.data_misfit`) is returned, with True when it is the network's. Both branches go on
    as one refinement of ``sweeps_before + sweeps_after`` sweeps (:meth:`~ptycho_torch.model.refine.Refinement.fork`):
    the sweep count, the plateau looked for in the first ``update.plateau_sweeps`` of them and a switch to parallel
    updates already made carry over; each branch starts without momentum (so the branch without the network is
    ``refine(result, sweeps_before + sweeps_after)`` only up to its momentum after sweep ``sweeps_before``). Costs the
    network, ``sweeps_before + 2 * sweeps_after`` sweeps and two misfits."""
    from ptycho_torch.model.refine import Refinement, data_misfit

    if isinstance(sweeps_after, bool) or not isinstance(sweeps_after, numbers.Integral) or sweeps_after < 1:
        raise ValueError(f"sweeps after the object network must be an integer >= 1 (they decide whether its correction is kept), "
                         f"got {sweeps_after!r}")
    if isinstance(sweeps_before, bool) or not isinstance(sweeps_before, numbers.Integral) or sweeps_before < 0:
        raise ValueError(f"sweeps before the object network must be an integer >= 0, got {sweeps_before!r}")
    sweeps_before, sweeps_after = int(sweeps_before), int(sweeps_after)
    refinement = Refinement(result, dataset, sweeps_before + sweeps_after, update=update)
    if sweeps_before:
        refinement.run(sweeps_before, progress=progress)
    before = refinement.result()
    with_network, without = refinement.fork(correct_object(network, before, bf16=bf16)), refinement.fork(before)
    with_network.run(sweeps_after, progress=progress)
    without.run(sweeps_after, progress=progress)
    from_network, from_sweeps = with_network.result(), without.result()
    misfit_network, misfit_sweeps = data_misfit(from_network, dataset), data_misfit(from_sweeps, dataset)
    kept = misfit_network <= misfit_sweeps
    logger.info("object network: %s (data misfit after %d more sweeps %.4g from its correction, %.4g without it)",
                "its correction kept" if kept else "its correction dropped", sweeps_after, misfit_network, misfit_sweeps)
    return (from_network if kept else from_sweeps), kept
