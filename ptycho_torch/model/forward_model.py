"""The ptychographic measurement of a batch as one object: the probe prepared once, forward, adjoint, counts and the physics input."""

from __future__ import annotations

from functools import cached_property

import torch

from ptycho_torch.model import physics

__all__ = ["FarFieldPtychography"]


class FarFieldPtychography:
    """Far-field ptychography of a batch: ``A(O) = far_field(P_m * O)`` for every probe mode ``m``, with the count scale.

    The model, the stitching and the refinement share it (specs/model.md section 3). ``probe`` is
    ``(b, c, P, N, N)`` complex with peak amplitude 1, ``b`` in ``{1, B}`` and ``c`` in ``{1, C}``
    (the dataset's one probe, broadcast over a batch, is held once); ``kappa (B,)`` turns
    ``|A(O)|^2`` summed over modes into expected photon counts. Objects are ``(B, C, N, N)``
    complex patches, counts ``(B, C, N, N)`` real.

    ``A`` is linear and its adjoint :meth:`adjoint` is exact (``far_field`` is unitary), so
    ``adjoint(forward(O)) = sum_m |P_m|^2 O`` = :attr:`weights` times ``O``.
    """

    def __init__(self, probe: torch.Tensor, kappa: torch.Tensor):
        if probe.ndim != 5:
            raise ValueError(f"probe must be (B, C, P, N, N), got shape {tuple(probe.shape)}")
        self.probe = probe
        self.kappa = kappa.reshape(-1)

    @classmethod
    def of_batch(cls, probe: torch.Tensor, scale: torch.Tensor, batch=None) -> FarFieldPtychography:
        """The measurement of a dataset batch: its probe ``(B, C, [P,] N, N)`` at unit peak and the count scale of its experiment.

        ``kappa`` comes from the experiment's mean counts per pattern (``1 / physics_scaling_constant``
        of ``batch``), not from ``scale``, which under ``DataConfig.normalize='Group'`` is each group's
        own: a group in a dark part of the object must predict a dark object, not one of unit mean
        transmission. Without ``batch`` or that key, ``scale (B,)`` is taken as the experiment's.
        """
        probe = physics.unit_peak(physics.as_probe_modes(probe))  # |P|^2 stays in range whatever the file's scale
        N = probe.shape[-1]
        scale = scale.reshape(-1)
        if batch is not None and "physics_scaling_constant" in batch.keys():
            mean_counts = 1 / batch["physics_scaling_constant"].reshape(-1).to(torch.float64)
            scale = ((N / 2) / torch.sqrt(mean_counts)).to(scale.dtype)  # the scale of normalize='Batch'
        return cls(probe, physics.count_scale(scale, probe, N))

    @property
    def N(self) -> int:
        return self.probe.shape[-1]

    @cached_property
    def weights(self) -> torch.Tensor:
        """``sum_m |P_m|^2``, ``(b, c, N, N)``: how much the measurement sees of each pixel of a patch."""
        return physics.probe_weight(self.probe)

    def forward(self, objects: torch.Tensor) -> torch.Tensor:
        """The detector fields ``(B, C, P, N, N)`` of object patches: ``far_field(P_m * O)``."""
        return physics.far_field(self.exit_waves(objects))

    def adjoint(self, fields: torch.Tensor) -> torch.Tensor:
        """``sum_m conj(P_m) near_field(Psi_m)``: object patches ``(B, C, N, N)`` from detector fields ``(B, C, P, N, N)``."""
        return (self.probe.conj() * physics.near_field(fields)).sum(dim=2)

    def exit_waves(self, objects: torch.Tensor) -> torch.Tensor:
        """``P_m * O``, ``(B, C, P, N, N)``."""
        return self.probe * objects.unsqueeze(2)

    def intensity(self, objects: torch.Tensor) -> torch.Tensor:
        """``sum_m |A_m(O)|^2``, ``(B, C, N, N)``, in units of the unit-peak probe."""
        return physics.far_field_intensity(objects, self.probe)

    def counts(self, objects: torch.Tensor, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Expected photon counts ``kappa * gain * intensity``, ``(B, C, N, N)``; ``gain`` a learnt count gain (scalar)."""
        return (self.kappa * gain)[:, None, None, None] * self.intensity(objects)

    def modulus(self, counts: torch.Tensor) -> torch.Tensor:
        """The detector modulus ``sqrt(counts / kappa)`` that ``|A(O)|`` should reproduce, ``(B, C, N, N)``."""
        return physics.measured_modulus(counts, self.kappa)

    def correction(self, objects: torch.Tensor, modulus: torch.Tensor) -> torch.Tensor:
        """The error-reduction correction ``sum_m conj(P_m) (Pi(psi_m) - psi_m)``, ``(B, C, N, N)``.

        ``psi = P O`` are the exit waves and ``Pi`` imposes the measured ``modulus`` on their far
        field (:func:`physics.project_modulus`; fields below ``RELIABLE_FIELD_FRACTION`` of the
        pattern's largest keep their value): the step that :func:`physics.object_estimate` and
        :func:`ptycho_torch.model.refine.refine` divide by the coverage and add.
        """
        exit_waves = self.exit_waves(objects)
        return physics.error_reduction_correction(exit_waves, physics.far_field(exit_waves), self.probe, modulus)

    def correction_and_misfit(self, objects: torch.Tensor, modulus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`correction` and, from the same far field, the misfit of ``objects`` to ``modulus`` (:func:`physics.modulus_misfit`)."""
        exit_waves = self.exit_waves(objects)
        field = physics.far_field(exit_waves)
        total = physics.summed_magnitude(field)
        return (physics.error_reduction_correction(exit_waves, field, self.probe, modulus, total=total),
                physics.modulus_misfit(field, modulus, total=total))

    def physics_input(self, counts: torch.Tensor, coords_relative: torch.Tensor, steps: int, *, windows=None) -> torch.Tensor:
        """The object patches ``(B, C, N, N)`` after ``steps`` error-reduction steps over each group's region
        (:func:`physics.object_estimate`, with the caller's group ``windows`` when it has them): what the network reads."""
        return physics.object_estimate(self.modulus(counts), self.probe, coords_relative, steps, windows=windows)
