"""The forward physics of PtychoPINN as pure torch functions: shifts, group merge, far-field intensity, losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptycho_torch.model import footprint

__all__ = [
    "GroupWindows",
    "as_probe_modes",
    "bilinear_spread",
    "count_scale",
    "counts_from_amplitudes",
    "error_reduction_correction",
    "extract_from_region",
    "far_field",
    "far_field_intensity",
    "mae_amplitude_loss",
    "measured_modulus",
    "merge_group",
    "modulus_misfit",
    "near_field",
    "object_estimate",
    "phase_invariant_error",
    "poisson_nll",
    "probe_weight",
    "project_modulus",
    "region_size",
    "summed_magnitude",
    "translate",
    "unit_peak",
]


def translate(images: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Move the content of ``images (..., H, W)`` by ``shift_px (..., 2)`` pixels ``[x, y]``, bilinearly.

    ``out[i, j] = images[i - shift_y, j - shift_x]``; samples from outside the image are zero.
    Complex images are shifted in their real and imaginary parts alike.
    """
    shift = torch.broadcast_to(shift_px, (*images.shape[:-2], 2))  # one shift per image, broadcast as before
    return _translation(shift, images.shape[-2:], images.real.dtype)(images)


def _translation(shift_px: torch.Tensor, size: tuple[int, int], dtype: torch.dtype):
    """A function moving ``(..., H, W)`` images by ``shift_px (..., 2)``; the sampling grid is built once.

    For a pure translation the ``align_corners=False`` grid is the pixel-centre grid plus
    ``-2 * shift / size`` (what ``affine_grid`` computes, without its batched matrix product).
    """
    H, W = int(size[0]), int(size[1])
    shift = shift_px.reshape(-1, 2).to(dtype)
    ys = (2 * torch.arange(H, dtype=dtype, device=shift.device) + 1) / H - 1
    xs = (2 * torch.arange(W, dtype=dtype, device=shift.device) + 1) / W - 1
    grid = torch.empty(shift.shape[0], H, W, 2, dtype=dtype, device=shift.device)
    grid[..., 0] = xs - (2 * shift[:, 0] / W)[:, None, None]
    grid[..., 1] = ys[:, None] - (2 * shift[:, 1] / H)[:, None, None]

    def move(images: torch.Tensor) -> torch.Tensor:
        if images.is_complex():
            parts = torch.view_as_real(images).movedim(-1, -3).reshape(-1, 2, H, W)
            moved = F.grid_sample(parts, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            return torch.view_as_complex(moved.reshape(*images.shape[:-2], 2, H, W).movedim(-3, -1).contiguous())
        moved = F.grid_sample(images.reshape(-1, 1, H, W), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return moved.reshape(images.shape)

    return move


class GroupWindows:
    """The ``N x N`` member windows of each group's ``M x M`` region, at sub-pixel positions, bilinear.

    ``coords_relative (B, C, 1, 2)`` ``[x, y]`` follows :func:`merge_group`: member ``c``'s patch is the
    region at rows ``(M - N) // 2 - y + i`` and columns ``(M - N) // 2 - x + j`` (the
    ``translate``-then-crop of specs/model.md section 2). :meth:`extract` reads the windows
    (an ``(N + 1) x (N + 1)`` gather and a two-tap kernel per axis); :meth:`place` is its adjoint, the
    sum of the members' patches spread back onto the region. Both are linear, work on real or complex
    tensors, carry gradients, and cost ``O(B C N^2)``: nothing of the size of the region is resampled.
    Samples outside the region are zero, as with bilinear ``grid_sample``.
    """

    def __init__(self, coords_relative: torch.Tensor, N: int, M: int):
        shift = coords_relative[:, :, 0, :].detach().to(torch.float64)
        dtype = coords_relative.dtype if coords_relative.is_floating_point() else torch.float32
        self._locate((int(M) - int(N)) // 2 - shift, int(N), (int(M), int(M)), dtype)

    @classmethod
    def at(cls, corner_px: torch.Tensor, N: int, shape_px: tuple[int, int], dtype=torch.float32) -> "GroupWindows":
        """Windows whose first sample sits at ``corner_px (B, C, 2)`` ``[col, row]`` (sub-pixel) of ``(B, H, W)`` regions."""
        windows = cls.__new__(cls)
        windows._locate(corner_px.detach().to(torch.float64), int(N), (int(shape_px[0]), int(shape_px[1])), dtype)
        return windows

    def _locate(self, start: torch.Tensor, N: int, shape: tuple[int, int], dtype) -> None:
        self.B, self.C, self.N = start.shape[0], start.shape[1], N
        self.H, self.W = shape
        self.M = self.H  # square regions: the side
        whole = torch.floor(start)
        fraction = (start - whole).to(dtype)
        self.fx, self.fy = fraction[..., 0, None, None], fraction[..., 1, None, None]  # (B, C, 1, 1)
        taps = torch.arange(self.N + 1, device=start.device)
        rows = whole[..., 1, None].long() + taps  # (B, C, N + 1)
        cols = whole[..., 0, None].long() + taps
        inside = ((rows >= 0) & (rows < self.H))[..., :, None] & ((cols >= 0) & (cols < self.W))[..., None, :]
        batch = torch.arange(self.B, device=start.device)[:, None, None, None] * self.H * self.W
        flat = batch + rows.clamp(0, self.H - 1)[..., :, None] * self.W + cols.clamp(0, self.W - 1)[..., None, :]
        self.index = flat.reshape(-1)  # (B C (N + 1)^2) into the flattened regions
        self.inside = None if bool(inside.all()) else inside

    def extract(self, region: torch.Tensor) -> torch.Tensor:
        """The members' patches ``(B, C, N, N)`` of ``region (B, H, W)``."""
        window = region.reshape(-1)[self.index].reshape(self.B, self.C, self.N + 1, self.N + 1)
        if self.inside is not None:
            window = window * self.inside
        along_x = window[..., :, : self.N] + self.fx.to(window.real.dtype) * (window[..., :, 1:] - window[..., :, : self.N])
        return along_x[..., : self.N, :] + self.fy.to(window.real.dtype) * (along_x[..., 1:, :] - along_x[..., : self.N, :])

    def place(self, patches: torch.Tensor) -> torch.Tensor:
        """The region ``(B, H, W)`` holding the sum of the ``patches (B, C, N, N)`` at their windows (adjoint of :meth:`extract`)."""
        spread = bilinear_spread(patches, self.fx, self.fy)
        if self.inside is not None:
            spread = spread * self.inside
        flat = torch.zeros(self.B * self.H * self.W, dtype=patches.dtype, device=patches.device)
        return flat.index_add(0, self.index, spread.reshape(-1)).reshape(self.B, self.H, self.W)


def bilinear_spread(patches: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """``patches (..., N, N)`` moved by sub-pixel ``fx``, ``fy`` in ``[0, 1)`` (broadcast to ``(..., 1, 1)``) onto ``(..., N + 1, N + 1)``.

    ``out[i, j] = sum`` of the bilinear shares of ``patches[i - a, j - b]``, ``a, b`` in ``{0, 1}``: what
    ``translate`` does to a patch padded by one row and column, with a two-tap kernel per axis.
    """
    fx, fy = fx.to(patches.real.dtype), fy.to(patches.real.dtype)
    N = patches.shape[-1]
    spread_y = patches.new_zeros(*patches.shape[:-2], N + 1, N)
    spread_y[..., :N, :] += patches * (1 - fy)
    spread_y[..., 1:, :] += patches * fy
    spread = patches.new_zeros(*patches.shape[:-2], N + 1, N + 1)
    spread[..., :N] += spread_y * (1 - fx)
    spread[..., 1:] += spread_y * fx
    return spread


def region_size(N: int, coords_relative: torch.Tensor, margin_px: int = 2) -> int:
    """An even region side that holds every member patch of every group: ``N + 2 * ceil(max |offset|) + margin``.

    A side whose regions cannot fit in memory raises :class:`footprint.SizeError` with the size needed.
    """
    reach = int(torch.ceil(coords_relative.detach().abs().max()).item()) if coords_relative.numel() else 0
    size = N + 2 * reach + margin_px
    size += size % 2
    footprint.check_region(size, coords_relative.shape[0] * coords_relative.shape[1] if coords_relative.ndim > 1 else 1)
    return size


def probe_weight(probe: torch.Tensor) -> torch.Tensor:
    """``sum over modes |P|^2``: ``(B, C, P, N, N)`` complex to ``(B, C, N, N)`` real (broadcast like ``probe``)."""
    distinct = _distinct(probe)
    return (distinct.real**2 + distinct.imag**2).sum(dim=-3).expand(*probe.shape[:-3], *probe.shape[-2:])


def _distinct(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` without the copies of a broadcast view: a leading axis of stride 0 (the dataset's probe is one
    copy broadcast over the batch and the group's members) is cut to length 1. Elementwise results of the
    cut tensor broadcast back to the full shape."""
    index = tuple(slice(0, 1) if stride == 0 and size > 1 else slice(None) for stride, size in zip(tensor.stride()[:2], tensor.shape[:2]))
    return tensor[index]


def merge_group(patches: torch.Tensor, weights: torch.Tensor, coords_relative: torch.Tensor, M: int, floor: float = 1e-3,
                *, windows: GroupWindows | None = None):
    """Probe-weighted average of a group's ``C`` patches on one ``M x M`` region centred on the group centre.

    ``patches (B, C, N, N)`` complex, ``weights (B, C, N, N)`` (e.g. :func:`probe_weight`),
    ``coords_relative (B, C, 1, 2)`` ``[x, y]`` = ``-(member - centre)`` (this project's sign), so
    member ``c`` is moved by ``-coords_relative``. Returns ``(region (B, M, M), coverage (B, M, M))``;
    the region is 0 where the summed weight is below ``floor`` times its maximum. ``windows``: the
    caller's ``GroupWindows(coords_relative, N, M)``, when it has them (they are not built again).
    """
    windows = windows if windows is not None else GroupWindows(coords_relative, patches.shape[-1], M)
    placed = windows.place(patches * weights)
    coverage = windows.place(weights)
    limit = floor * coverage.flatten(1).amax(dim=1).clamp_min(torch.finfo(coverage.dtype).tiny)
    covered = coverage > limit[:, None, None]
    region = torch.where(covered, placed / torch.where(covered, coverage, torch.ones_like(coverage)), torch.zeros_like(placed))
    return region, coverage


def extract_from_region(region: torch.Tensor, coords_relative: torch.Tensor, N: int) -> torch.Tensor:
    """The ``(B, C, N, N)`` member patches of ``region (B, M, M)``: the inverse placement of :func:`merge_group`."""
    return GroupWindows(coords_relative, N, region.shape[-1]).extract(region)


def as_probe_modes(probe: torch.Tensor) -> torch.Tensor:
    """A batch probe as ``(B, C, P, N, N)``: a ``(B, C, N, N)`` probe gains a mode axis of one."""
    if probe.ndim == 4:
        return probe.unsqueeze(2)
    if probe.ndim == 5:
        return probe
    raise ValueError(f"probe must be (B, C, N, N) or (B, C, P, N, N), got shape {tuple(probe.shape)}")


def far_field(exit_waves: torch.Tensor) -> torch.Tensor:
    """``fftshift(fft2(exit_waves, norm='ortho'))`` over the last two axes: the detector field, DC at the centre."""
    return torch.fft.fftshift(torch.fft.fft2(exit_waves, norm="ortho"), dim=(-2, -1))


def near_field(detector_field: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`far_field`: exit waves from a centred detector field."""
    return torch.fft.ifft2(torch.fft.ifftshift(detector_field, dim=(-2, -1)), norm="ortho")


def far_field_intensity(objects: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """``sum over modes |fftshift(fft2(P * O, norm='ortho'))|^2``: ``(B, C, N, N)`` from objects ``(B, C, N, N)``, probe ``(B, C, P, N, N)``."""
    field = far_field(probe * objects.unsqueeze(2))
    return (field.real**2 + field.imag**2).sum(dim=2)


def measured_modulus(counts: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """The detector modulus ``sqrt(counts / kappa)`` that :func:`far_field_intensity` should reproduce, ``(B, C, N, N)``."""
    return torch.sqrt(counts / kappa.reshape(-1, *([1] * (counts.ndim - 1))).to(counts.dtype))


def project_modulus(detector_field: torch.Tensor, modulus: torch.Tensor, floor: float = 0.0, *,
                    total: torch.Tensor | None = None) -> torch.Tensor:
    """Give ``detector_field (B, C, P, N, N)`` the measured ``modulus (B, C, N, N)``, keeping each mode's phase.

    The modes are scaled together, ``Psi_m * modulus / sqrt(sum_m |Psi_m|^2)``, so that their summed
    intensity equals ``modulus^2``. Pixels whose field is at most ``floor`` times the pattern's
    largest are returned unchanged: their phase is rounding noise, not information (with the
    default 0, only exact zeros). ``total``: the field's :func:`summed_magnitude`, when already computed.
    """
    total = summed_magnitude(detector_field) if total is None else total
    tiny = torch.finfo(total.dtype).tiny
    projected = detector_field / total.clamp_min(tiny) * modulus.unsqueeze(2)  # |Psi / total| <= 1: no overflow
    reliable = total > floor * total.amax(dim=(-2, -1), keepdim=True)
    return torch.where(reliable, projected, detector_field)


def modulus_misfit(detector_field: torch.Tensor, modulus: torch.Tensor, *, total: torch.Tensor | None = None) -> torch.Tensor:
    """``sum (sqrt(sum_m |Psi_m|^2) - modulus)^2`` over every pattern and pixel: how far ``detector_field (B, C, P, N, N)``
    is from the measured ``modulus (B, C, N, N)``. ``total``: the field's :func:`summed_magnitude`, when already computed."""
    total = summed_magnitude(detector_field) if total is None else total
    return ((total.squeeze(2) - modulus) ** 2).sum()


def summed_magnitude(detector_field: torch.Tensor) -> torch.Tensor:
    """``sqrt(sum_m |Psi_m|^2)``, ``(B, C, 1, N, N)``, the modes' joint magnitude (one mode: ``|Psi|``)."""
    magnitude = detector_field.abs()
    if detector_field.shape[2] == 1:
        return magnitude
    tiny = torch.finfo(magnitude.dtype).tiny  # scaled by the largest mode, so that |Psi|^2 cannot underflow
    largest = magnitude.amax(dim=2, keepdim=True).clamp_min(tiny)
    return largest * torch.sqrt(((magnitude / largest) ** 2).sum(dim=2, keepdim=True))


def unit_peak(probe: torch.Tensor) -> torch.Tensor:
    """``probe (B, ...)`` divided by each item's largest amplitude (an all-zero probe stays zero).

    Every quantity of the forward model is invariant to the probe's scale once the count scale is
    taken from the counts (:func:`count_scale`); this keeps ``|P|^2`` within float32's range
    whatever the file's normalisation.
    """
    distinct = _distinct(probe)
    return (distinct / _peak_amplitude(distinct).reshape(-1, *([1] * (probe.ndim - 1)))).expand(probe.shape)


def _peak_amplitude(probe: torch.Tensor) -> torch.Tensor:
    """Each item's largest ``|P|``, ``(B,)``, at least the dtype's smallest normal number (broadcast like ``probe``)."""
    distinct = _distinct(probe)
    return distinct.abs().flatten(1).amax(dim=1).clamp_min(torch.finfo(probe.real.dtype).tiny).expand(probe.shape[0])


RELIABLE_FIELD_FRACTION = 1e-5  # detector fields below this fraction of a pattern's largest are rounding noise (float32)


def error_reduction_correction(exit_waves: torch.Tensor, field: torch.Tensor, probe: torch.Tensor, modulus: torch.Tensor, *,
                               total: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_m conj(P_m) (near_field(Pi(Psi_m)) - psi_m)``, ``(B, C, N, N)``: one error-reduction correction of object patches.

    ``exit_waves (B, C, P, N, N)`` and their ``field = far_field(exit_waves)``; ``Pi`` imposes
    ``modulus (B, C, N, N)`` (:func:`project_modulus` with ``RELIABLE_FIELD_FRACTION``; ``total`` as there).
    """
    corrected = near_field(project_modulus(field, modulus, RELIABLE_FIELD_FRACTION, total=total))
    return (probe.conj() * (corrected - exit_waves)).sum(dim=2)


def object_estimate(modulus: torch.Tensor, probe: torch.Tensor, coords_relative: torch.Tensor, steps: int,
                    regularisation: float = 0.05, *, windows: GroupWindows | None = None) -> torch.Tensor:
    """Object patches ``(B, C, N, N)`` after ``steps`` error-reduction steps over each group's region, from ``O = 1``.

    One step: extract the members' patches from the group region, impose the measured modulus on
    their exit waves (:func:`project_modulus`; fields below ``RELIABLE_FIELD_FRACTION`` of the
    pattern's largest keep their value), and add the probe-weighted corrections of all members back
    onto the region,
    ``region += sum_c shift_c(sum_m conj(P_m) (psi'_m - psi_m)) / (coverage + regularisation * max coverage)``.
    ``modulus`` is in the units of ``|far_field(P O)|`` for this ``probe``; both are rescaled by the
    probe's peak first, so the result does not depend on the probe's normalisation.
    ``coords_relative`` follows :func:`merge_group`. The result depends only on the data, so it is a
    physics-derived input for the generator: its phase carries the object's phase, which the
    diffraction amplitudes hold only non-locally. ``windows``: the caller's
    ``GroupWindows(coords_relative, N, region_size(N, coords_relative))``, when it has them.
    """
    if steps < 1:
        raise ValueError(f"object_estimate needs steps >= 1, got {steps}")
    B, C, N = modulus.shape[0], modulus.shape[1], modulus.shape[-1]
    dtype = modulus.dtype
    windows = windows if windows is not None else GroupWindows(coords_relative, N, region_size(N, coords_relative))
    probe = _distinct(probe.to(torch.complex128 if dtype == torch.float64 else torch.complex64))
    peak = _peak_amplitude(probe).reshape(-1, 1, 1, 1)
    probe, modulus = probe / peak.unsqueeze(-1), modulus / peak  # probe (1 or B, 1 or C, P, N, N): broadcast below
    coverage = windows.place(probe_weight(probe).expand(B, C, N, N))
    denominator = coverage + regularisation * coverage.flatten(1).amax(dim=1)[:, None, None]
    inverse = 1 / denominator.clamp_min(torch.finfo(dtype).tiny)  # an all-zero probe: no correction, not 0/0
    region = torch.ones(B, windows.M, windows.M, dtype=probe.dtype, device=modulus.device)
    for step in range(steps):
        if step == 0 and windows.inside is None:  # the flat start: every member's exit wave is the probe itself
            exit_waves, field = probe, far_field(probe)  # one far field per distinct probe, not per member
        else:
            exit_waves = probe * windows.extract(region).unsqueeze(2)
            field = far_field(exit_waves)
        region = region + windows.place(error_reduction_correction(exit_waves, field, probe, modulus)) * inverse
    return windows.extract(region)


def count_scale(scale: torch.Tensor, probe: torch.Tensor, N: int) -> torch.Tensor:
    """Per-item factor ``kappa (B,)`` turning ``far_field_intensity`` into expected photon counts.

    The dataset scales amplitudes so that the mean energy of its patterns is ``(N / 2)^2``; the
    mean total counts per pattern is therefore ``(N / 2)^2 / scale^2``. ``kappa`` makes a
    unit-amplitude object under the probe reproduce it (Parseval):
    ``kappa = (N / 2)^2 / (scale^2 * sum over modes and pixels |P|^2)``, independent of how the
    probe in the file happens to be normalised.
    """
    distinct = _distinct(probe)  # the mean over members of each member's energy
    probe_energy = (distinct.real**2 + distinct.imag**2).flatten(2).sum(dim=2).mean(dim=1).expand(probe.shape[0])
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


def phase_invariant_error(patches: torch.Tensor, truth: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per item ``min over complex a of sum w |a O - Y|^2 / sum w |Y|^2``, ``(B,)`` from ``(B, ...)`` patches.

    A group's constant phase and the scale of its amplitude are not observable from its
    diffraction, so a comparison with ground truth ``Y`` first fits them (one complex scalar
    ``a = sum w conj(O) Y / sum w |O|^2`` per item); ``weights`` (e.g. :func:`probe_weight`) count
    each pixel by how much the measurement saw of it.
    """
    O, Y, w = patches.flatten(1), truth.flatten(1), weights.flatten(1).to(patches.real.dtype)
    tiny = torch.finfo(w.dtype).tiny
    a = (w * O.conj() * Y).sum(dim=1, keepdim=True) / (w * (O.real**2 + O.imag**2)).sum(dim=1, keepdim=True).clamp_min(tiny)
    residual = a * O - Y
    return (w * (residual.real**2 + residual.imag**2)).sum(dim=1) / (w * (Y.real**2 + Y.imag**2)).sum(dim=1).clamp_min(tiny)
