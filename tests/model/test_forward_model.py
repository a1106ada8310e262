"""The measurement operator that the model, the stitching and the refinement share: adjoint, counts, correction."""

import math

import pytest

torch = pytest.importorskip("torch")

from ptycho_torch.model import physics  # noqa: E402
from ptycho_torch.model.forward_model import FarFieldPtychography  # noqa: E402

N = 16


def random_complex(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator)).to(torch.complex128)


def gaussian_probe(modes=2, width=3.0):
    y, x = torch.meshgrid(torch.arange(N) - N / 2, torch.arange(N) - N / 2, indexing="ij")
    disc = torch.exp(-(x**2 + y**2) / (2 * width**2)).to(torch.complex128)
    return torch.stack([disc * (0.5 ** m) * torch.exp(1j * 0.1 * m * x) for m in range(modes)])[None, None]  # (1, 1, P, N, N)


def test_adjoint_is_the_adjoint_of_forward():
    measurement = FarFieldPtychography(random_complex(1, 1, 2, N, N, seed=1), torch.ones(3, dtype=torch.float64))
    objects, fields = random_complex(3, 4, N, N, seed=2), random_complex(3, 4, 2, N, N, seed=3)
    left = (measurement.forward(objects) * fields.conj()).sum()
    right = (objects * measurement.adjoint(fields).conj()).sum()
    assert abs(left - right) < 1e-10 * abs(left)
    torch.testing.assert_close(measurement.adjoint(measurement.forward(objects)), measurement.weights * objects)


def test_a_unit_object_predicts_the_experiments_mean_counts_whatever_the_groups_scale():
    probe = gaussian_probe().expand(2, 4, 2, N, N) * 37.0  # the file's probe scale does not matter
    mean_counts = torch.tensor([2.5e4, 2.5e4], dtype=torch.float64)
    group_scale = torch.tensor([0.3, 3.0])  # normalize='Group': each group its own scale
    batch = {"physics_scaling_constant": 1 / mean_counts}
    measurement = FarFieldPtychography.of_batch(probe, group_scale, batch)
    counts = measurement.counts(torch.ones(2, 4, N, N, dtype=torch.complex128))
    torch.testing.assert_close(counts.sum(dim=(-2, -1)), mean_counts[:, None].expand(2, 4), rtol=1e-6, atol=0)
    assert float(measurement.probe.abs().amax()) == pytest.approx(1.0)
    without_batch = FarFieldPtychography.of_batch(probe, group_scale)  # the scale taken as the experiment's
    expected = (N / 2) ** 2 / group_scale.double() ** 2
    torch.testing.assert_close(without_batch.counts(torch.ones(2, 4, N, N, dtype=torch.complex128)).sum(dim=(-2, -1))[:, 0], expected, rtol=1e-6, atol=0)


def test_counts_scale_with_the_gain_and_the_modulus_inverts_them():
    measurement = FarFieldPtychography(gaussian_probe(), torch.tensor([40.0], dtype=torch.float64))
    objects = torch.exp(1j * 0.3 * random_complex(1, 4, N, N, seed=4).real)
    counts = measurement.counts(objects)
    torch.testing.assert_close(measurement.counts(objects, 2.5), 2.5 * counts)
    torch.testing.assert_close(measurement.modulus(counts), measurement.forward(objects).abs().pow(2).sum(dim=2).sqrt())


def test_the_correction_vanishes_at_the_truth_and_reduces_the_error_elsewhere():
    measurement = FarFieldPtychography(gaussian_probe(modes=1), torch.ones(1, dtype=torch.float64))
    truth = torch.exp(1j * 0.5 * torch.tanh(random_complex(1, 1, N, N, seed=5).real))
    modulus = measurement.modulus(measurement.counts(truth))
    assert float(measurement.correction(truth, modulus).abs().max()) < 1e-12
    start = truth * torch.exp(1j * 0.2 * random_complex(1, 1, N, N, seed=6).real)
    weights = measurement.weights
    stepped = start + measurement.correction(start, modulus) / (weights + 0.05 * weights.max())

    def misfit(objects):
        return float((measurement.forward(objects).abs() - modulus.unsqueeze(2)).pow(2).sum())

    assert misfit(stepped) < 0.5 * misfit(start)


def test_the_physics_input_is_the_object_estimate_of_the_measured_modulus():
    probe = gaussian_probe(modes=1).expand(2, 4, 1, N, N)
    measurement = FarFieldPtychography.of_batch(probe, torch.tensor([0.5, 0.5]))
    coords = torch.tensor([[-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]]).reshape(1, 4, 1, 2).expand(2, 4, 1, 2)
    counts = measurement.counts(torch.ones(2, 4, N, N, dtype=torch.complex128)) * (1 + 0.1 * random_complex(2, 4, N, N, seed=7).real.abs())
    expected = physics.object_estimate(physics.measured_modulus(counts, measurement.kappa), measurement.probe, coords, 2)
    torch.testing.assert_close(measurement.physics_input(counts, coords, 2), expected)
    assert measurement.N == N and not math.isnan(float(expected.abs().sum()))
