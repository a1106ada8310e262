"""The container: contract dtypes and shapes, Y handling (DATA-001) and the train/test split."""

import numpy as np
import pytest

from ptycho import params
from ptycho.loader import PtychoDataContainer, load, split_data, split_tensor
from ptycho.raw_data import RawData
from tests.scans import amplitude_stack, complex_object, probe, raster_scan

N = 16
X, Y = raster_scan(n_side=8)
DIFF = amplitude_stack(len(X), N)


def grouped(objectGuess=None, nsamples=20):
    data = RawData.from_coords_without_pc(X, Y, DIFF, probe(N), np.zeros(len(X), int), objectGuess)
    return data.generate_grouped_data(N, K=6, nsamples=nsamples, seed=42, gridsize=2)


def test_container_follows_the_contract():
    dset = grouped(complex_object())
    c = load(lambda: dset, probe(N), which=None, create_split=False)
    B, C = 20, 4
    expected = {
        "X": ((B, N, N, C), np.float32),
        "Y": ((B, N, N, C), np.complex64),
        "Y_I": ((B, N, N, C), np.float32),
        "Y_phi": ((B, N, N, C), np.float32),
        "coords_nominal": ((B, 1, 2, C), np.float32),
        "coords_true": ((B, 1, 2, C), np.float32),
        "global_offsets": ((B, 1, 2, 1), np.float64),
        "local_offsets": ((B, 1, 2, C), np.float64),
        "nn_indices": ((B, C), np.int32),
        "probe": ((N, N), np.complex64),
    }
    for name, (shape, dtype) in expected.items():
        value = getattr(c, name)
        assert value.shape == shape and value.dtype == dtype, name
    np.testing.assert_array_equal(c.X, dset["X_full"])
    np.testing.assert_array_equal(c.global_offsets, dset["coords_offsets"])
    np.testing.assert_array_equal(c.local_offsets, dset["coords_relative"])
    np.testing.assert_array_equal(c.coords, dset["coords_start_relative"].astype(np.float32))
    np.testing.assert_allclose(c.Y, dset["Y"], rtol=1e-5, atol=1e-6)
    assert c.YY_full is None


def test_norm_y_i_scales_to_the_configured_photon_count():
    dset = grouped()
    params.set("nphotons", 1e6)
    c = load(lambda: dset, probe(N), which=None, create_split=False)
    photons = np.mean(np.sum((c.norm_Y_I * c.X.astype(np.float64)) ** 2, axis=(1, 2, 3)))
    assert photons == pytest.approx(1e6, rel=1e-5)


def test_missing_y_becomes_ones():
    c = load(lambda: grouped(), probe(N), which=None, create_split=False)
    np.testing.assert_array_equal(c.Y, np.ones_like(c.Y))
    assert c.Y.dtype == np.complex64


def test_y_that_is_not_complex64_is_refused():
    dset = grouped(complex_object())
    dset["Y"] = dset["Y"].astype(np.complex128)
    with pytest.raises(ValueError, match="Y must be complex64, got complex128"):  # DATA-001
        load(lambda: dset, probe(N), which=None, create_split=False)


def test_x_must_be_float32():
    dset = grouped()
    dset["X_full"] = dset["X_full"].astype(np.float64)
    with pytest.raises(TypeError, match="X_full must be float32"):
        load(lambda: dset, probe(N), which=None, create_split=False)


@pytest.mark.parametrize("which", ["train", "test"])
def test_split_keeps_every_per_group_array_aligned(which):
    dset = grouped(complex_object())
    c = load(lambda: (dset, 0.75), probe(N), which=which, create_split=True)
    part = slice(0, 15) if which == "train" else slice(15, 20)
    np.testing.assert_array_equal(c.X, dset["X_full"][part])
    np.testing.assert_array_equal(c.nn_indices, dset["nn_indices"][part])
    np.testing.assert_array_equal(c.global_offsets, dset["coords_offsets"][part])
    np.testing.assert_array_equal(c.local_offsets, dset["coords_relative"][part])
    assert c.Y.shape[0] == c.coords.shape[0] == len(range(20)[part])


def test_split_helpers():
    a = np.arange(10)
    assert split_tensor(a, 0.7, "train").tolist() == list(range(7))
    assert split_tensor(a, 0.7, "test").tolist() == [7, 8, 9]
    train = split_data(a, a * 2, a * 3, 0.5, "train")
    assert [t.tolist() for t in train] == [[0, 1, 2, 3, 4], [0, 2, 4, 6, 8], [0, 3, 6, 9, 12]]
    with pytest.raises(ValueError, match="must be 'train' or 'test'"):
        split_data(a, a, a, 0.5, "validation")


def test_mode_stack_probe_uses_mode_zero():
    modes = np.stack([probe(N), 2 * probe(N)])
    c = load(lambda: grouped(), modes, which=None, create_split=False)
    np.testing.assert_array_equal(c.probe, modes[0])


def test_to_npz_round_trips_without_pickle(tmp_path):
    c = load(lambda: grouped(complex_object()), probe(N), which=None, create_split=False)
    c.to_npz(tmp_path / "container.npz")
    with np.load(tmp_path / "container.npz", allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved["X"], c.X)
        np.testing.assert_array_equal(saved["Y"], c.Y)
        assert "YY_full" not in saved.files
    assert "X=(20, 16, 16, 4) float32" in repr(c)


def test_container_accepts_positional_arguments_like_upstream():
    ones = np.ones((2, N, N, 1), np.float32)
    c = PtychoDataContainer(ones, ones, 0 * ones, 1.0, None, np.zeros((2, 1, 2, 1)), np.zeros((2, 1, 2, 1)), np.zeros((2, 1), np.int32), np.zeros((2, 1, 2, 1)), np.zeros((2, 1, 2, 1)), probe(N))
    np.testing.assert_array_equal(c.Y, np.ones((2, N, N, 1), np.complex64))
    assert c.coords is c.coords_nominal
