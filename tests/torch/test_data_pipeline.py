"""Torch-side data pipeline: RawDataTorch and the containers equal the NumPy baseline.

Runs without torch (the bridges fall back to NumPy); tests that need torch skip on their own.
"""

import numpy as np
import pytest

from ptycho import params
from ptycho.config.config import ModelConfig, TrainingConfig
from ptycho.loader import load
from ptycho.raw_data import RawData
from ptycho_torch.data_container_bridge import PtychoDataContainerTorch
from ptycho_torch.raw_data_bridge import TORCH_AVAILABLE, RawDataTorch
from tests.scans import amplitude_stack, complex_object, probe, raster_scan

N = 16
X, Y = raster_scan(n_side=8)
DIFF = amplitude_stack(len(X), N)
OBJ = complex_object()
GROUPING = dict(K=6, nsamples=30, seed=42, gridsize=2)
needs_torch = pytest.mark.skipif(not TORCH_AVAILABLE, reason="torch is not installed")


def numpy(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def training_config(gridsize=2):
    return TrainingConfig(model=ModelConfig(N=N, gridsize=gridsize), train_data_file="scan.npz", n_groups=30)


def bridge(config=None, objectGuess=OBJ):
    return RawDataTorch(X, Y, DIFF, probe(N), np.zeros(len(X), int), objectGuess, config=config)


def test_raw_data_torch_equals_raw_data():
    expected = RawData.from_coords_without_pc(X, Y, DIFF, probe(N), np.zeros(len(X), int), OBJ).generate_grouped_data(N, **GROUPING)
    got = bridge().generate_grouped_data(N, **GROUPING)
    assert got.keys() == expected.keys()
    np.testing.assert_array_equal(got["nn_indices"], expected["nn_indices"])
    for key in ("diffraction", "X_full", "coords_offsets", "coords_relative", "coords_start_offsets", "coords_start_relative", "coords_nn"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, err_msg=key)
        assert got[key].dtype == expected[key].dtype, key
    assert got["Y"].dtype == np.complex64


def test_config_sets_params_once_and_drives_default_gridsize(monkeypatch):
    import ptycho_torch.raw_data_bridge as module

    calls = []
    real = module.update_legacy_dict
    monkeypatch.setattr(module, "update_legacy_dict", lambda cfg, config: calls.append(config) or real(cfg, config))
    params.reset()
    data = bridge(config=training_config(gridsize=1))
    assert len(calls) == 1 and params.get("gridsize") == 1 and params.get("N") == N
    data.generate_grouped_data(N, K=6, nsamples=5, seed=1)
    data.generate_grouped_data(N, K=6, nsamples=5, seed=2)
    assert len(calls) == 1
    assert data.generate_grouped_data(N, K=6, nsamples=5, seed=1)["X_full"].shape == (5, N, N, 1)


def test_bridge_exposes_the_scan():
    data = bridge()
    np.testing.assert_array_equal(data.xcoords, X)
    np.testing.assert_array_equal(data.ycoords, Y)
    np.testing.assert_array_equal(data.diff3d, DIFF)
    assert data.probeGuess.shape == (N, N) and data.objectGuess.shape == OBJ.shape


def test_grouping_only_entry_matches_the_full_dict():
    data = bridge()
    grouping = data.generate_grouping(N, **GROUPING)
    full = data.generate_grouped_data(N, **GROUPING)
    np.testing.assert_array_equal(grouping.nn_indices, full["nn_indices"])
    np.testing.assert_allclose(full["diffraction"] * np.float32(grouping.norm), full["X_full"], rtol=1e-7)


def test_container_equals_the_tensorflow_side_container():
    grouped = bridge().generate_grouped_data(N, **GROUPING)
    expected = load(lambda: grouped, probe(N), which=None, create_split=False)
    got = PtychoDataContainerTorch(grouped, probe(N))
    for name in ("X", "Y", "Y_I", "Y_phi", "coords_nominal", "coords_true", "coords", "nn_indices", "global_offsets", "local_offsets", "probe"):
        value = numpy(getattr(got, name))
        np.testing.assert_array_equal(value, getattr(expected, name), err_msg=name)
        assert value.dtype == getattr(expected, name).dtype, name
    assert float(numpy(got.norm_Y_I)) == pytest.approx(float(expected.norm_Y_I), rel=1e-6)
    assert got.YY_full is None
    assert "X=(30, 16, 16, 4) float32" in repr(got)


@needs_torch
def test_container_holds_torch_tensors():
    import torch

    got = PtychoDataContainerTorch(bridge().generate_grouped_data(N, **GROUPING), probe(N))
    assert isinstance(got.X, torch.Tensor) and got.X.dtype == torch.float32
    assert got.Y.dtype == torch.complex64
    assert got.nn_indices.dtype == torch.int32
    assert got.global_offsets.dtype == torch.float64


def test_container_y_is_complex64_and_ones_without_object():
    got = PtychoDataContainerTorch(bridge(objectGuess=None).generate_grouped_data(N, **GROUPING), probe(N))
    Y_values = numpy(got.Y)
    assert Y_values.dtype == np.complex64
    np.testing.assert_array_equal(Y_values, np.ones_like(Y_values))


def test_container_errors_name_what_is_wrong():
    grouped = bridge().generate_grouped_data(N, **GROUPING)
    with pytest.raises(ValueError, match="missing coords_offsets, nn_indices"):
        PtychoDataContainerTorch({k: v for k, v in grouped.items() if k not in ("coords_offsets", "nn_indices")}, probe(N))
    with pytest.raises(TypeError, match="X_full must be float32"):
        PtychoDataContainerTorch({**grouped, "X_full": grouped["X_full"].astype(np.float64)}, probe(N))
    with pytest.raises(ValueError, match="DATA-001"):
        PtychoDataContainerTorch({**grouped, "Y": np.abs(grouped["Y"])}, probe(N))


def test_container_uses_mode_zero_of_a_probe_stack():
    modes = np.stack([probe(N), 0.5 * probe(N)])
    got = PtychoDataContainerTorch(bridge().generate_grouped_data(N, **GROUPING), modes)
    np.testing.assert_array_equal(numpy(got.probe), modes[0])
