"""The forward physics of PtychoPINN as pure torch functions: shifts, group merge, far-field intensity, losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "as_probe_modes",
    "count_scale",
    "counts_from_amplitudes",
    "extract_from_region",
    "far_field_intensity",
    "mae_amplitude_loss",
    "merge_group",
    "poisson_nll",
    "probe_weight",
    "region_size",
    "translate",
]


def translate(images: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Move the content of ``images (..., H, W)`` by ``shift_px (..., 2)`` pixels ``[x, y]``, bilinearly.

    ``out[i, j] = images[i - shift_y, j - shift_x]``; samples from outside the image are zero.
    Complex images are shifted in their real and imaginary parts alike.
    """
    if images.is_complex():
        parts = torch.view_as_real(images).movedim(-1, -3)  # (..., 2, H, W)
        moved = _translate_real(parts, shift_px.unsqueeze(-2).expand(*parts.shape[:-2], 2))
        return torch.view_as_complex(moved.movedim(-3, -1).contiguous())
    return _translate_real(images, shift_px)


def _translate_real(images: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    H, W = images.shape[-2:]
    flat = images.reshape(-1, 1, H, W)
    shift = shift_px.reshape(-1, 2).to(images.dtype)
    theta = torch.zeros(flat.shape[0], 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shift[:, 0] / W  # align_corners=False: one pixel is 2 / size
    theta[:, 1, 2] = -2 * shift[:, 1] / H
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(images.shape)


def region_size(N: int, coords_relative: torch.Tensor, margin_px: int = 2) -> int:
    """An even region side that holds every member patch of every group: ``N + 2 * ceil(max |offset|) + margin``."""
    reach = int(torch.ceil(coords_relative.detach().abs().max()).item()) if coords_relative.numel() else 0
    size = N + 2 * reach + margin_px
    return size + size % 2


def _pad_to(images: torch.Tensor, M: int) -> torch.Tensor:
    N = images.shape[-1]
    before = (M - N) // 2
    return F.pad(images, (before, M - N - before, before, M - N - before))


def _crop_centre(images: torch.Tensor, N: int) -> torch.Tensor:
    M = images.shape[-1]
    before = (M - N) // 2
    return images[..., before : before + N, before : before + N]


def probe_weight(probe: torch.Tensor) -> torch.Tensor:
    """``sum over modes |P|^2``: ``(B, C, P, N, N)`` complex to ``(B, C, N, N)`` real."""
    return (probe.real**2 + probe.imag**2).sum(dim=-3)


def merge_group(patches: torch.Tensor, weights: torch.Tensor, coords_relative: torch.Tensor, M: int, floor: float = 1e-3):
    """Probe-weighted average of a group's ``C`` patches on one ``M x M`` region centred on the group centre.

    ``patches (B, C, N, N)`` complex, ``weights (B, C, N, N)`` (e.g. :func:`probe_weight`),
    ``coords_relative (B, C, 1, 2)`` ``[x, y]`` = ``-(member - centre)`` (this project's sign), so
    member ``c`` is moved by ``-coords_relative``. Returns ``(region (B, M, M), coverage (B, M, M))``;
    the region is 0 where the summed weight is below ``floor`` times its maximum.
    """
    shift = -coords_relative[:, :, 0, :]
    placed = translate(_pad_to(patches * weights, M), shift).sum(dim=1)
    coverage = translate(_pad_to(weights, M), shift).sum(dim=1)
    limit = floor * coverage.flatten(1).amax(dim=1).clamp_min(torch.finfo(coverage.dtype).tiny)
    covered = coverage > limit[:, None, None]
    region = torch.where(covered, placed / torch.where(covered, coverage, torch.ones_like(coverage)), torch.zeros_like(placed))
    return region, coverage


def extract_from_region(region: torch.Tensor, coords_relative: torch.Tensor, N: int) -> torch.Tensor:
    """The ``(B, C, N, N)`` member patches of ``region (B, M, M)``: the inverse placement of :func:`merge_group`."""
    C = coords_relative.shape[1]
    stacked = region.unsqueeze(1).expand(-1, C, -1, -1)
    return _crop_centre(translate(stacked, coords_relative[:, :, 0, :]), N)


def as_probe_modes(probe: torch.Tensor) -> torch.Tensor:
    """A batch probe as ``(B, C, P, N, N)``: a ``(B, C, N, N)`` probe gains a mode axis of one."""
    if probe.ndim == 4:
        return probe.unsqueeze(2)
    if probe.ndim == 5:
        return probe
    raise ValueError(f"probe must be (B, C, N, N) or (B, C, P, N, N), got shape {tuple(probe.shape)}")


def far_field_intensity(objects: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """``sum over modes |fftshift(fft2(P * O, norm='ortho'))|^2``: ``(B, C, N, N)`` from objects ``(B, C, N, N)``, probe ``(B, C, P, N, N)``."""
    exit_waves = probe * objects.unsqueeze(2)
    field = torch.fft.fftshift(torch.fft.fft2(exit_waves, norm="ortho"), dim=(-2, -1))
    return (field.real**2 + field.imag**2).sum(dim=2)


def count_scale(scale: torch.Tensor, probe: torch.Tensor, N: int) -> torch.Tensor:
    """Per-item factor ``kappa (B,)`` turning ``far_field_intensity`` into expected photon counts.

    The dataset scales amplitudes so that the mean energy of its patterns is ``(N / 2)^2``; the
    mean total counts per pattern is therefore ``(N / 2)^2 / scale^2``. ``kappa`` makes a
    unit-amplitude object under the probe reproduce it (Parseval):
    ``kappa = (N / 2)^2 / (scale^2 * sum over modes and pixels |P|^2)``, independent of how the
    probe in the file happens to be normalised.
    """
    probe_energy = (probe.real**2 + probe.imag**2).flatten(1).sum(dim=1) / probe.shape[1]
    return (N / 2) ** 2 / (scale.reshape(-1).to(probe_energy.dtype) ** 2 * probe_energy)


def counts_from_amplitudes(images: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Photon counts ``(images / scale)^2`` from the dataset's normalised amplitudes (no rounding)."""
    return (images / scale.reshape(-1, *([1] * (images.ndim - 1))).to(images.dtype)) ** 2


def poisson_nll(predicted: torch.Tensor, counts: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Elementwise Poisson negative log-likelihood ``lambda - k log(lambda) + lgamma(k + 1)``.

    Written out: ``k`` may be any non-negative real (no support check, no rounding); ``eps``
    keeps the log finite where the prediction is zero.
    """
    return predicted - counts * torch.log(predicted + eps) + torch.lgamma(counts + 1)


def mae_amplitude_loss(predicted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Elementwise ``|sqrt(predicted) - sqrt(counts)|``: absolute error on diffraction amplitudes."""
    return (torch.sqrt(predicted + 1e-12) - torch.sqrt(counts)).abs()
