"""Forward physics: shifts, the group merge/extract in this project's coordinate sign, FFT intensity, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptycho.grouping import get_relative_coords  # noqa: E402
from ptycho.patches import extract_patches  # noqa: E402
from ptycho_torch.model import physics  # noqa: E402


def ramp(H, W, a=0.3, b=-0.2, c=1.0):
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return a * x + b * y + c


def test_fractional_shift_moves_a_ramp_exactly_in_the_interior():
    image = ramp(32, 32)
    shifted = physics.translate(image[None], torch.tensor([[1.25, -2.5]], dtype=torch.float64))[0]
    expected = ramp(32, 32, c=1.0 - 0.3 * 1.25 - 0.2 * 2.5)  # f(x - sx, y - sy)
    torch.testing.assert_close(shifted[4:-4, 4:-4], expected[4:-4, 4:-4])


def test_shift_round_trip_restores_complex_images_for_whole_pixels_and_interior_ramps():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, 24, 24, dtype=torch.complex64, generator=g)
    shift = torch.tensor([[3.0, -2.0], [0.0, 5.0], [-4.0, 1.0]])
    back = physics.translate(physics.translate(image, shift), -shift)
    torch.testing.assert_close(back[:, 6:-6, 6:-6], image[:, 6:-6, 6:-6])
    linear = torch.complex(ramp(24, 24), ramp(24, 24, 0.1, 0.2, -1)).to(torch.complex64)[None]
    frac = torch.tensor([[0.4, -0.7]])
    torch.testing.assert_close(physics.translate(physics.translate(linear, frac), -frac)[:, 3:-3, 3:-3], linear[:, 3:-3, 3:-3])


def group_of(obj: np.ndarray, xs, ys, N: int):
    """Member patches and coords_relative of one group, both from the project's own code."""
    coords_nn = np.array([[xs, ys]], dtype=np.float64)[:, None]  # (1, 1, 2, C)
    centre, relative = get_relative_coords(coords_nn)
    patches = extract_patches(obj, np.asarray(xs, float), np.asarray(ys, float), N)
    coords_relative = torch.from_numpy(relative.transpose(0, 3, 1, 2))  # (1, C, 1, 2), as PtychoDataset serves it
    return torch.from_numpy(patches)[None], coords_relative, centre[0, 0, :, 0]


@pytest.mark.parametrize("xs, ys", [([40, 46, 40, 46], [50, 50, 56, 56]), ([40.0, 46.5, 41.0, 45.5], [50.0, 50.0, 55.5, 56.5])])
def test_merge_then_extract_reproduces_the_object_region_and_the_member_patches(xs, ys):
    N, M = 16, 30
    yy, xx = np.mgrid[0:100, 0:100]
    obj = ((0.8 + 0.002 * xx + 0.001 * yy) * np.exp(1j * (0.01 * xx - 0.004 * yy))).astype(np.complex64)
    if float(np.max(np.mod(xs, 1))) == 0:
        obj = obj * (1 + 0.1 * np.random.default_rng(1).standard_normal(obj.shape)).astype(np.float32)  # whole pixels: any texture
    patches, coords_relative, centre = group_of(obj, xs, ys, N)
    weights = torch.ones(1, 4, N, N)
    region, coverage = physics.merge_group(patches, weights, coords_relative.float(), M)
    expected_region = extract_patches(obj, np.array([centre[0]]), np.array([centre[1]]), M)[0]
    inside = coverage[0] > 3.999  # covered by all four members
    assert int(inside.sum()) > 60
    tol = 1e-5 if float(np.max(np.mod(xs, 1))) == 0 else 2e-3  # bilinear resampling of a smooth object
    np.testing.assert_allclose(region[0][inside].numpy(), expected_region[inside.numpy()], atol=tol)
    assert torch.all(region[0][coverage[0] < 1e-3 * coverage.max()] == 0)
    back = physics.extract_from_region(region, coords_relative.float(), N)
    np.testing.assert_allclose(back[0, :, 4:-4, 4:-4].numpy(), patches[0, :, 4:-4, 4:-4].numpy(), atol=tol)


def test_far_field_intensity_obeys_parseval_and_sums_the_probe_modes():
    g = torch.Generator().manual_seed(2)
    obj = torch.randn(2, 4, 32, 32, dtype=torch.complex64, generator=g)
    probe = torch.randn(2, 4, 3, 32, 32, dtype=torch.complex64, generator=g)
    intensity = physics.far_field_intensity(obj, probe)
    assert intensity.shape == (2, 4, 32, 32)
    real_space = (probe * obj[:, :, None]).abs().pow(2).sum(dim=(2, 3, 4))
    torch.testing.assert_close(intensity.sum(dim=(2, 3)), real_space, rtol=1e-4, atol=0)
    one_mode = physics.far_field_intensity(obj, probe[:, :, :1]) + physics.far_field_intensity(obj, probe[:, :, 1:2]) + physics.far_field_intensity(obj, probe[:, :, 2:])
    torch.testing.assert_close(intensity, one_mode)


def test_poisson_nll_matches_the_hand_computed_value_for_integer_and_real_counts():
    predicted = torch.tensor([2.5, 2.5, 0.7], dtype=torch.float64)
    counts = torch.tensor([3.0, 2.25, 0.0], dtype=torch.float64)
    expected = [2.5 - 3 * math.log(2.5) + math.log(6), 2.5 - 2.25 * math.log(2.5) + math.lgamma(3.25), 0.7]
    np.testing.assert_allclose(physics.poisson_nll(predicted, counts, eps=0).numpy(), expected, rtol=1e-12)


def test_count_scale_makes_predicted_counts_independent_of_the_probe_normalisation():
    g = torch.Generator().manual_seed(3)
    obj = torch.polar(torch.rand(2, 4, 16, 16, generator=g) + 0.5, torch.rand(2, 4, 16, 16, generator=g))
    probe = torch.randn(2, 4, 1, 16, 16, dtype=torch.complex64, generator=g)
    scale = torch.tensor([0.03, 0.05])
    counts = [physics.count_scale(scale, p, 16)[:, None, None, None] * physics.far_field_intensity(obj, p) for p in (probe, 1e3 * probe)]
    torch.testing.assert_close(counts[0], counts[1], rtol=1e-4, atol=1e-6)
    unit = physics.count_scale(scale, probe, 16)[:, None, None, None] * physics.far_field_intensity(torch.ones_like(obj), probe)
    torch.testing.assert_close(unit.sum(dim=(2, 3)).mean(dim=1), (16 / 2) ** 2 / scale**2, rtol=1e-4, atol=0)


def test_losses_have_finite_gradients_with_zero_counts_and_zero_probe_weight():
    patches = torch.polar(torch.rand(1, 4, 16, 16) + 0.5, torch.zeros(1, 4, 16, 16)).requires_grad_(True)
    probe = torch.zeros(1, 4, 1, 16, 16, dtype=torch.complex64)
    probe[..., 4:12, 4:12] = 1
    coords = torch.tensor([[[[1.5, 0.5]], [[-1.5, 0.5]], [[1.5, -0.5]], [[-1.5, -0.5]]]])
    region, _ = physics.merge_group(patches, physics.probe_weight(probe), coords, 22)
    merged = physics.extract_from_region(region, coords, 16)
    predicted = physics.count_scale(torch.tensor([0.1]), probe, 16)[:, None, None, None] * physics.far_field_intensity(merged, probe)
    counts = torch.zeros_like(predicted)
    counts[..., 8, 8] = 50.0
    for loss in (physics.poisson_nll(predicted, counts).mean(), physics.mae_amplitude_loss(predicted, counts).mean()):
        (grad,) = torch.autograd.grad(loss, patches, retain_graph=True)
        assert torch.isfinite(torch.view_as_real(grad)).all()
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_translation_equals_the_affine_grid_resampling(dtype):
    """The pure-translation grid built without ``affine_grid``'s matrix product samples the same points."""
    g = torch.Generator().manual_seed(3)
    images = torch.randn(5, 20, 24, dtype=dtype, generator=g)
    shift = torch.randn(5, 2, generator=g) * 4
    theta = torch.zeros(5, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2], theta[:, 1, 2] = -2 * shift[:, 0] / 24, -2 * shift[:, 1] / 20
    grid = torch.nn.functional.affine_grid(theta, [5, 1, 20, 24], align_corners=False)
    parts = torch.view_as_real(images).movedim(-1, 1) if images.is_complex() else images[:, None]
    expected = torch.nn.functional.grid_sample(parts, grid, align_corners=False)
    expected = torch.view_as_complex(expected.movedim(1, -1).contiguous()) if images.is_complex() else expected[:, 0]
    torch.testing.assert_close(physics.translate(images, shift), expected, atol=1e-5, rtol=1e-5)


def test_modulus_projection_imposes_the_measured_intensity_and_keeps_the_mode_phases():
    g = torch.Generator().manual_seed(4)
    field = torch.randn(2, 3, 2, 8, 8, dtype=torch.complex128, generator=g)  # (B, C, modes, N, N)
    modulus = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=g) * 5
    projected = physics.project_modulus(field, modulus)
    torch.testing.assert_close((projected.abs() ** 2).sum(dim=2), modulus**2)
    torch.testing.assert_close(torch.angle(projected), torch.angle(field))
    torch.testing.assert_close(projected[:, :, 0].abs() / projected[:, :, 1].abs(), field[:, :, 0].abs() / field[:, :, 1].abs())


def test_modulus_misfit_is_the_squared_distance_of_the_joint_magnitude_to_the_modulus():
    field = torch.tensor([3 + 4j, 0, 1j, -2], dtype=torch.complex128).reshape(1, 1, 1, 2, 2)
    modulus = torch.tensor([5.0, 1.0, 0.0, 1.5], dtype=torch.float64).reshape(1, 1, 2, 2)
    assert float(physics.modulus_misfit(field, modulus)) == pytest.approx(0 + 1 + 1 + 0.25)
    two_modes = torch.stack([field[:, :, 0], torch.full_like(field[:, :, 0], 2j)], dim=2)  # sqrt(|a|^2 + 4) per pixel
    joint = torch.sqrt(torch.tensor([29.0, 4.0, 5.0, 8.0], dtype=torch.float64))
    expected = float(((joint - modulus.reshape(-1)) ** 2).sum())
    assert float(physics.modulus_misfit(two_modes, modulus)) == pytest.approx(expected)
    total = physics.summed_magnitude(two_modes)
    assert float(physics.modulus_misfit(two_modes, modulus, total=total)) == pytest.approx(expected)
    torch.testing.assert_close(physics.project_modulus(two_modes, modulus, total=total), physics.project_modulus(two_modes, modulus))


def test_modulus_projection_stays_finite_where_the_field_vanishes():
    """A zero detector pixel under a count of thousands gave NaN (modulus / tiny overflowed float32)."""
    for modes in (1, 2):
        field = torch.ones(1, 1, modes, 4, 4, dtype=torch.complex64)
        field[..., 0, 0] = 0
        field[..., 0, 1] = 1e-30
        projected = physics.project_modulus(field, torch.full((1, 1, 4, 4), 3000.0))
        assert torch.isfinite(torch.view_as_real(projected)).all()
        intensity = (projected.abs() ** 2).sum(dim=2)
        assert intensity[0, 0, 0, 0] == 0 and float(intensity[0, 0, 0, 1]) == pytest.approx(3000.0**2)
        torch.testing.assert_close(intensity[..., 1:, :], torch.full((1, 1, 3, 4), 3000.0**2))


def structured_probe(N: int) -> torch.Tensor:
    """A Gaussian spot with a defocus and a coma-like phase: no symmetry that would allow a twin image."""
    y, x = torch.meshgrid(torch.arange(N, dtype=torch.float64) - N / 2, torch.arange(N, dtype=torch.float64) - N / 2, indexing="ij")
    r2 = (x**2 + y**2) / (N / 5) ** 2
    return torch.exp(-r2 / 2) * torch.exp(1j * (0.8 * r2 + 0.3 * x * r2 / (N / 5)))


def test_one_estimate_step_on_a_single_pattern_is_the_hand_computed_back_projection():
    N = 16
    probe = structured_probe(N)
    g = torch.Generator().manual_seed(5)
    modulus = torch.rand(1, 1, N, N, dtype=torch.float64, generator=g) + 0.5
    estimate = physics.object_estimate(modulus, probe[None, None, None], torch.zeros(1, 1, 1, 2, dtype=torch.float64), steps=1)
    detector = physics.far_field(probe)
    exit_wave = physics.near_field(modulus[0, 0] * detector / detector.abs())
    weight = probe.abs() ** 2
    expected = 1 + probe.conj() * (exit_wave - probe) / (weight + 0.05 * weight.max())
    torch.testing.assert_close(estimate[0, 0], expected)


@pytest.mark.parametrize("modes", [1, 2])
def test_object_estimate_approaches_a_known_group_object_as_the_steps_grow(modes):
    """Four overlapping noise-free patterns of a known object: more steps, closer to its phase and amplitude."""
    N = 32
    yy, xx = np.mgrid[0:96, 0:96]
    rng = np.random.default_rng(6)
    texture = np.fft.ifft2(np.fft.fft2(rng.standard_normal((96, 96))) * np.exp(-((np.fft.fftfreq(96)[:, None] ** 2 + np.fft.fftfreq(96) ** 2) / 0.004))).real
    texture /= np.abs(texture).max()
    obj = ((0.8 + 0.15 * texture) * np.exp(1j * (0.6 * texture + 0.002 * xx))).astype(np.complex128)
    patches, coords_relative, _ = group_of(obj, [42, 50, 43, 51], [44, 45, 52, 51], N)
    spot = structured_probe(N)
    mode_stack = torch.stack([spot, 0.5 * spot * torch.exp(1j * torch.linspace(0, 3, N, dtype=torch.float64))])[:modes]  # a second, weaker mode
    probe = mode_stack[None, None].expand(1, 4, modes, N, N)
    modulus = physics.far_field_intensity(patches.to(torch.complex128), probe).sqrt()
    lit = (probe[0, :, 0].abs() ** 2 > 0.3 * probe[0, :, 0].abs().max() ** 2)

    def error(steps: int) -> float:
        estimate = physics.object_estimate(modulus, probe, coords_relative, steps)[0]
        alpha = torch.vdot(estimate[lit], patches[0][lit].to(torch.complex128)) / torch.vdot(estimate[lit], estimate[lit])
        truth = patches[0][lit].to(torch.complex128)
        return float((alpha * estimate[lit] - truth).abs().norm() / (truth - truth.mean()).abs().norm())  # relative to the texture

    errors = [error(steps) for steps in (1, 10, 60)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] > 0.4 and errors[2] < 0.2, errors  # measured 0.633, 0.310, 0.133 (one mode), 0.650, 0.310, 0.138 (two)


def test_translation_broadcasts_one_shift_over_several_images():
    g = torch.Generator().manual_seed(7)
    images = torch.randn(2, 3, 4, 12, 12, dtype=torch.complex64, generator=g)
    shift = torch.tensor([[[[1.5, -0.5]]], [[[-2.0, 0.25]]]])  # (2, 1, 1, 2): one shift per first index
    moved = physics.translate(images, shift)
    for i in range(2):
        torch.testing.assert_close(moved[i], physics.translate(images[i], shift[i, 0, 0].expand(3, 4, 2)))
    real = images.real[:, :, 0]
    torch.testing.assert_close(physics.translate(real, torch.tensor([[1.0, 2.0]])), physics.translate(real, torch.tensor([1.0, 2.0]).expand(2, 3, 2)))


def test_an_all_zero_probe_leaves_the_flat_object_instead_of_nan():
    estimate = physics.object_estimate(torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 1, 16, 16, dtype=torch.complex64),
                                       torch.zeros(1, 4, 1, 2), steps=3)
    torch.testing.assert_close(estimate, torch.ones_like(estimate))


def test_object_estimate_ignores_the_probe_scale_and_rounding_level_fields():
    """sim_small's probe has a far field at 1e-8 of its peak on most pixels: their phase is rounding noise.

    Before those pixels were left alone, scaling the probe by 1.0001 moved the float32 estimate by up to
    0.165 (its values are below 0.8), float64 differed from float32 by 0.141, and a probe scaled by 1e20
    gave NaN.
    """
    N = 32
    spot = structured_probe(N)
    band_limited = physics.near_field(physics.far_field(spot) * (physics.far_field(spot).abs() > 0.05 * physics.far_field(spot).abs().max()))
    patches, coords_relative, _ = group_of(np.exp(0.3j * np.random.default_rng(8).random((96, 96))), [42, 50, 43, 51], [44, 45, 52, 51], N)
    probe = band_limited[None, None, None].expand(1, 4, 1, N, N)
    modulus = physics.far_field_intensity(patches.to(torch.complex128), probe).sqrt()
    reference = physics.object_estimate(modulus, probe, coords_relative, 20)
    for factor in (1e-20, 1.0001, 1e20):
        single = physics.object_estimate((modulus * factor).float(), (probe * factor).to(torch.complex64), coords_relative.float(), 20)
        assert torch.isfinite(torch.view_as_real(single)).all(), factor
        torch.testing.assert_close(single, reference.to(torch.complex64), atol=1e-2, rtol=0, msg=f"probe x {factor}")  # measured 3.8e-3


def test_phase_invariant_error_ignores_one_complex_scalar_and_weights_pixels():
    truth = torch.tensor([[1 + 1j, 2 - 1j, 0.5j]], dtype=torch.complex64)
    weights = torch.tensor([[1.0, 2.0, 0.0]])
    # a constant phase and amplitude factor costs nothing
    assert physics.phase_invariant_error(truth * (0.5 * np.exp(1.2j)), truth, weights).item() == pytest.approx(0, abs=1e-6)
    # hand-computed: O = [1, 1, 5]; a = sum w conj(O) Y / sum w |O|^2 = (1+1j + 2(2-1j)) / 3 = (5 - 1j) / 3;
    # the third pixel has no weight, so its value does not count
    O = torch.tensor([[1, 1, 5]], dtype=torch.complex64)
    a = (5 - 1j) / 3
    expected = (abs(a - (1 + 1j)) ** 2 + 2 * abs(a - (2 - 1j)) ** 2) / (2 + 2 * 5)
    assert physics.phase_invariant_error(O, truth, weights).item() == pytest.approx(expected, rel=1e-5)
