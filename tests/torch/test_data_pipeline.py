"""Torch-side data pipeline: RawDataTorch and the containers equal the NumPy baseline.

Runs without torch (the bridges fall back to NumPy); tests that need torch skip on their own.
"""

import hashlib
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho import params
from ptycho.config.config import ModelConfig, TrainingConfig
from ptycho.loader import load
from ptycho.raw_data import RawData
from ptycho_torch import experiment as experiment_module
from ptycho_torch.data_container_bridge import PtychoDataContainerTorch
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.raw_data_bridge import TORCH_AVAILABLE, RawDataTorch
from tests import golden
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
    with pytest.raises(ValueError, match="Y must be complex64, got float32"):  # DATA-001
        PtychoDataContainerTorch({**grouped, "Y": np.abs(grouped["Y"])}, probe(N))


def test_container_uses_mode_zero_of_a_probe_stack():
    modes = np.stack([probe(N), 0.5 * probe(N)])
    got = PtychoDataContainerTorch(bridge().generate_grouped_data(N, **GROUPING), modes)
    np.testing.assert_array_equal(numpy(got.probe), modes[0])


# --- memmap bridge, dataset and cache (on the embedded simulated dataset, seed 42) -------------


ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "datasets" / "sim_small.npz"
N64 = 64
SETTINGS = dict(K=7, nsamples=200, seed=42, gridsize=2)


def embedded_arrays():
    with np.load(EMBEDDED, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def memmap_config(path=EMBEDDED, **changes):
    values = dict(n_groups=200, neighbor_count=7, subsample_seed=42)
    values.update(changes)
    model = ModelConfig(N=N64, gridsize=values.pop("gridsize", 2))
    return TrainingConfig(model=model, train_data_file=path, test_data_file=path, nphotons=1e6, **values)


def baseline_grouped(arrays=None, **settings):
    arrays = embedded_arrays() if arrays is None else arrays
    raw = RawDataTorch(arrays["xcoords"], arrays["ycoords"], arrays["diffraction"], arrays["probeGuess"], arrays["scan_index"], arrays.get("objectGuess"))
    return raw.generate_grouped_data(N64, **{**SETTINGS, **settings})


def save_variant(path, **changes):
    arrays = embedded_arrays()
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def assert_same_grouped_data(got, expected):
    np.testing.assert_array_equal(got["nn_indices"], expected["nn_indices"])
    for key in ("diffraction", "X_full", "coords_nn", "coords_offsets", "coords_relative", "coords_start_nn", "coords_start_offsets", "coords_start_relative"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, err_msg=key)
        assert got[key].dtype == expected[key].dtype, key
    assert got["Y"].dtype == expected["Y"].dtype == np.complex64
    np.testing.assert_allclose(got["Y"], expected["Y"], rtol=1e-6, atol=1e-7)


def test_memmap_bridge_equals_raw_data_torch(tmp_path):
    bridge_ = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    assert_same_grouped_data(bridge_.get_grouped_data(N64, **SETTINGS), baseline_grouped())
    assert_same_grouped_data(bridge_.grouped_data(), baseline_grouped())


def test_memmap_bridge_other_settings_get_their_own_cache(tmp_path):
    bridge_ = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    other = dict(K=5, nsamples=50, seed=3, gridsize=1)
    assert_same_grouped_data(bridge_.get_grouped_data(N64, **other), baseline_grouped(**other))
    assert len(list(bridge_.cache_path.parent.glob("*.groups_cache.npz"))) == 2


def test_memmap_is_plain_npy_readable_without_our_code(tmp_path):
    bridge_ = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    path = bridge_.cache_path.parent / "diffraction.npy"
    stack = np.load(path, mmap_mode="r", allow_pickle=False)
    assert isinstance(stack, np.memmap) and stack.shape == (512, N64, N64) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack, embedded_arrays()["diffraction"])


@needs_torch
def test_memmap_opens_as_torch_and_tensordict_memmap_without_copying(tmp_path):
    import torch
    from tensordict import MemoryMappedTensor

    bridge_ = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    stack = np.load(bridge_.cache_path.parent / "diffraction.npy", mmap_mode="c")
    tensor = torch.from_numpy(stack)
    assert tensor.data_ptr() == stack.ctypes.data  # shares the mapping, no copy
    mapped = MemoryMappedTensor(tensor)
    assert torch.equal(mapped, torch.from_numpy(embedded_arrays()["diffraction"]))


def test_memmap_container_from_cache_equals_direct_container(tmp_path):
    cached = PtychoDataContainerTorch.from_cache(EMBEDDED, memmap_config(), tmp_path, progress=False)
    direct = PtychoDataContainerTorch(baseline_grouped(), embedded_arrays()["probeGuess"])  # same params.cfg
    for name in ("X", "Y", "Y_I", "Y_phi", "coords_nominal", "coords_true", "nn_indices", "global_offsets", "local_offsets", "probe", "norm_Y_I"):
        a, b = numpy(getattr(cached, name)), numpy(getattr(direct, name))
        assert a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("layout", ["diffraction", "diff3d", "legacy-HWn"])
def test_memmap_accepts_every_diffraction_key_and_layout(tmp_path, layout):
    stack = embedded_arrays()["diffraction"]
    if layout == "diff3d":
        path = save_variant(tmp_path / "scan.npz", diffraction=None, diff3d=stack)
    elif layout == "legacy-HWn":
        path = save_variant(tmp_path / "scan.npz", diffraction=None, diff3d=np.ascontiguousarray(stack.transpose(1, 2, 0)))
    else:
        path = save_variant(tmp_path / "scan.npz")
    got = MemmapDatasetBridge(path, memmap_config(path), tmp_path / "memmap", progress=False).grouped_data()
    assert_same_grouped_data(got, baseline_grouped())


def test_memmap_integer_counts_become_amplitudes(tmp_path, caplog):
    amplitude = embedded_arrays()["diffraction"]
    counts = np.rint(amplitude.astype(np.float64) ** 2).astype(np.uint32)
    path = save_variant(tmp_path / "counts.npz", diffraction=counts)
    with caplog.at_level(logging.WARNING):
        got = MemmapDatasetBridge(path, memmap_config(path), tmp_path / "memmap", progress=False).grouped_data()
    assert "photon counts" in caplog.text
    expected = baseline_grouped({**embedded_arrays(), "diffraction": np.sqrt(counts).astype(np.float32)})
    assert_same_grouped_data(got, expected)
    raw_counts = MemmapDatasetBridge(path, memmap_config(path), tmp_path / "memmap", diffraction_units="amplitude", progress=False)
    np.testing.assert_array_equal(raw_counts.diffraction, counts.astype(np.float32))


def test_memmap_config_from_torch_configs_updates_params_once(tmp_path, monkeypatch):
    from ptycho_torch import memmap_bridge as module
    from ptycho_torch.config_params import DataConfig, ModelConfig as TorchModelConfig, TrainingConfig as TorchTrainingConfig

    calls = []
    real = module.update_legacy_dict
    monkeypatch.setattr(module, "update_legacy_dict", lambda cfg, config: calls.append(config) or real(cfg, config))
    params.reset()
    configs = (DataConfig(N=N64, K=7, subsample_seed=42, nphotons=1e6), TorchModelConfig(), TorchTrainingConfig(n_groups=200, test_data_file=EMBEDDED))
    bridge_ = MemmapDatasetBridge(EMBEDDED, configs, tmp_path, progress=False)
    assert len(calls) == 1 and calls[0].backend == "pytorch"
    assert params.get("gridsize") == 2 and params.get("N") == N64
    bridge_.get_grouped_data(N64, K=7, nsamples=200, seed=42)  # gridsize from params.cfg
    assert len(calls) == 1
    assert_same_grouped_data(bridge_.grouped_data(), baseline_grouped())


def test_memmap_path_never_materialises_grouped_diffraction(tmp_path, monkeypatch):
    from ptycho import raw_data

    def forbidden(*args, **kwargs):
        raise AssertionError("grouped diffraction was materialised while building the cache")

    monkeypatch.setattr(raw_data, "grouped_data_from", forbidden)
    monkeypatch.setattr(raw_data.RawData, "generate_grouped_data", forbidden)
    bridge_ = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    assert bridge_.experiment.grouping.n_groups == 200


def test_memmap_bridge_works_without_torch(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from ptycho_torch.memmap_bridge import MemmapDatasetBridge\n"
        "from tests.torch.test_data_pipeline import memmap_config, EMBEDDED\n"
        f"b = MemmapDatasetBridge(EMBEDDED, memmap_config(), {str(tmp_path)!r}, progress=False)\n"
        "print(b.grouped_data()['X_full'].shape)\n"
        "from ptycho_torch.dset_loader_pt_mmap import PtychoDataset\n"
        "try:\n    PtychoDataset(EMBEDDED)\nexcept ImportError as e:\n    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(200, 64, 64, 4)" in out.stdout
    assert "PtychoDataset needs PyTorch" in out.stdout and "pip install" in out.stdout


@pytest.fixture
def dataset_factory(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    def make(path=EMBEDDED, data_dir=tmp_path / "memmap", **kwargs):
        kwargs.setdefault("config", memmap_config(path))
        return PtychoDataset(path, data_dir=data_dir, progress=False, **kwargs)

    return make


def test_memmap_dataset_batches_equal_the_baseline_channels_first(dataset_factory):
    dataset = dataset_factory(ground_truth=True, y_convention="baseline")
    expected = baseline_grouped()
    batch, probe_, scale = dataset[list(range(len(dataset)))]
    assert len(dataset) == 200 and batch.batch_size == (200,)
    np.testing.assert_allclose(batch["images"].numpy(), expected["X_full"].transpose(0, 3, 1, 2), rtol=1e-6)
    # coordinates are float32 in the batch (PtychoPINN's dtype): equal to the float64 baseline cast once
    np.testing.assert_array_equal(batch["coords_relative"].numpy(), expected["coords_relative"].transpose(0, 3, 1, 2).astype(np.float32))
    np.testing.assert_array_equal(batch["coords_center"].numpy(), expected["coords_offsets"].transpose(0, 1, 3, 2).astype(np.float32))
    np.testing.assert_array_equal(batch["coords_global"].numpy(), expected["coords_nn"].transpose(0, 3, 1, 2).astype(np.float32))
    np.testing.assert_array_equal(batch["nn_indices"].numpy(), expected["nn_indices"])
    np.testing.assert_allclose(batch["Y"].numpy(), expected["Y"].transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-7)
    assert batch["images"].dtype.is_floating_point and str(batch["images"].dtype) == "torch.float32"
    assert tuple(probe_.shape) == (200, 4, 1, N64, N64) and str(probe_.dtype) == "torch.complex64"
    np.testing.assert_array_equal(probe_[7, 2, 0].numpy(), embedded_arrays()["probeGuess"].astype(np.complex64))
    assert tuple(scale.shape) == (200, 1, 1, 1)
    assert float(scale[0]) == pytest.approx(float(np.sqrt((N64 / 2) ** 2 / np.mean(np.sum(expected["diffraction"].astype(np.float64) ** 2, axis=(1, 2))))), rel=1e-6)


def test_memmap_dataset_indexing_forms(dataset_factory):
    import torch

    dataset = dataset_factory()
    by_list, _, _ = dataset[[3, 9]]
    by_tensor, _, _ = dataset[torch.tensor([3, 9])]
    by_array, _, _ = dataset[np.array([3, 9])]
    single, probe_, scale = dataset[9]
    assert torch.equal(by_list["images"], by_tensor["images"]) and torch.equal(by_list["images"], by_array["images"])
    assert tuple(single["images"].shape) == (4, N64, N64) and tuple(probe_.shape) == (4, 1, N64, N64) and tuple(scale.shape) == (1, 1, 1)
    assert torch.equal(single["images"], by_list["images"][1])
    assert torch.equal(dataset[-1][0]["images"], dataset[199][0]["images"])
    with pytest.raises(IndexError, match="index 200 is out of range for a dataset of 200 groups"):
        dataset[[0, 200]]
    empty, probe_, scale = dataset[[]]
    assert empty.batch_size == (0,) and tuple(empty["images"].shape) == (0, 4, N64, N64) and len(probe_) == len(scale) == 0


def test_memmap_dataset_multi_file_directory(dataset_factory, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    arrays = embedded_arrays()
    save_variant(scans / "a.npz")
    second_probe = (arrays["probeGuess"] * np.exp(0.5j)).astype(np.complex64)
    save_variant(scans / "b.npz", diffraction=arrays["diffraction"] * np.float32(2.0), probeGuess=second_probe)
    dataset = dataset_factory(scans, config=memmap_config(scans / "a.npz"))
    assert len(dataset) == 400
    batch, probe_, scale = dataset[[0, 199, 200, 399]]
    np.testing.assert_array_equal(batch["experiment_id"].numpy(), [0, 0, 1, 1])
    np.testing.assert_array_equal(probe_[2, 0, 0].numpy(), second_probe)
    assert float(scale[2]) == pytest.approx(float(scale[0]) / 2, rel=1e-6)
    expected = baseline_grouped()["X_full"].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(batch["images"].numpy(), expected[[0, 199, 0, 199]], rtol=1e-6)  # X_full is scale-free
    np.testing.assert_array_equal(batch["nn_indices"].numpy()[2], batch["nn_indices"].numpy()[0])


def test_memmap_dataloader_epoch_with_two_workers_covers_every_group_once(dataset_factory):
    from ptycho_torch.dataloader import TensorDictDataLoader

    dataset = dataset_factory()
    loader = TensorDictDataLoader(dataset, batch_size=32, shuffle=True, num_workers=2)
    expected = baseline_grouped()["nn_indices"]
    seen = []
    for batch, probe_, scale in loader:
        assert batch["images"].shape[1:] == (4, N64, N64) and probe_.shape[0] == scale.shape[0] == batch.batch_size[0]
        seen.append(batch["nn_indices"].numpy())
    seen = np.concatenate(seen)
    assert len(seen) == len(dataset) == 200
    as_rows = {tuple(row) for row in expected.tolist()}
    assert {tuple(row) for row in seen.tolist()} == as_rows
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, expected.tolist()))


def test_memmap_dataset_pickles_without_copying_the_map(dataset_factory):
    dataset = dataset_factory()
    dataset[[0]]  # opens the memory map
    blob = pickle.dumps(dataset)
    assert len(blob) < 2_000_000  # the 8 MB map is reopened by workers, not copied
    clone = pickle.loads(blob)
    assert (clone[[5, 6]][0]["images"] == dataset[[5, 6]][0]["images"]).all()


def test_memmap_dataset_configures_params_once_for_many_files(dataset_factory, tmp_path, monkeypatch):
    from ptycho_torch import dset_loader_pt_mmap as module
    from ptycho_torch.config_params import DataConfig, ModelConfig as TorchModelConfig, TrainingConfig as TorchTrainingConfig

    scans = tmp_path / "many"
    scans.mkdir()
    for name in ("a", "b", "c"):
        save_variant(scans / f"{name}.npz")
    calls = []
    real = module.update_legacy_dict
    monkeypatch.setattr(module, "update_legacy_dict", lambda cfg, config: calls.append(config) or real(cfg, config))
    configs = (DataConfig(N=N64, K=7, subsample_seed=42, nphotons=1e6), TorchModelConfig(), TorchTrainingConfig(n_groups=200, test_data_file=EMBEDDED))
    dataset = dataset_factory(scans, config=None, data_config=configs[0], model_config=configs[1], training_config=configs[2])
    assert len(dataset) == 600 and len(calls) == 1


# --- memmap golden parity: every path reproduces PtychoPINN's own TensorFlow-run outputs ------------
# tests/data/tf_baseline_grouping.npz (see tests/data/README.md); runs without torch except the dataset.


def golden_config(case, path):
    model = ModelConfig(N=case.N, gridsize=case.gridsize)
    return TrainingConfig(
        model=model, train_data_file=path, test_data_file=path, nphotons=1e6, n_groups=case.nsamples,
        neighbor_count=case.K, subsample_seed=case.seed, sequential_sampling=case.sequential_sampling,
        enable_oversampling=case.enable_oversampling,
    )


@pytest.mark.parametrize("case", golden.CASES, ids=golden.CASE_IDS)
@pytest.mark.parametrize("entry", [RawData.from_coords_without_pc, RawDataTorch], ids=["RawData", "RawDataTorch"])
def test_memmap_golden_raw_data_paths(case, entry):
    inputs = golden.case_inputs(case)
    raw = entry(inputs.xcoords, inputs.ycoords, inputs.diffraction, inputs.probeGuess, inputs.scan_index, inputs.objectGuess)
    grouping = raw.generate_grouping(case.N, **case.grouping_kwargs)
    golden.assert_matches_golden(case, {**raw.generate_grouped_data(case.N, **case.grouping_kwargs), "norm": grouping.norm})


@pytest.mark.parametrize("case", golden.CASES, ids=golden.CASE_IDS)
def test_memmap_golden_bridge_built_and_from_cache(case, tmp_path):
    path = golden.case_npz(case, tmp_path)
    built = MemmapDatasetBridge(path, golden_config(case, path), tmp_path / "memmap", progress=False)
    assert built.experiment.regrouped
    golden.assert_matches_golden(case, {**built.get_grouped_data(case.N, **case.grouping_kwargs), "norm": built.experiment.grouping.norm})
    reused = MemmapDatasetBridge(path, golden_config(case, path), tmp_path / "memmap", progress=False)
    assert not reused.experiment.regrouped  # the grouping now comes from the .groups_cache.npz file
    cached = reused.experiment.grouping
    golden.assert_matches_golden(case, {**cached.arrays(), "norm": cached.norm}, keys=golden.COORDINATE_KEYS)


@pytest.mark.parametrize("case", golden.CASES, ids=golden.CASE_IDS)
def test_memmap_golden_container_from_cache(case, tmp_path):
    path = golden.case_npz(case, tmp_path)
    container = PtychoDataContainerTorch.from_cache(path, golden_config(case, path), tmp_path / "memmap", progress=False)
    as_grouped = {
        "nn_indices": numpy(container.nn_indices),
        "coords_offsets": numpy(container.global_offsets),
        "coords_relative": numpy(container.local_offsets),
        "coords_start_relative": numpy(container.coords_nominal),  # float32 in the container
        "X_full": numpy(container.X),
        "Y": numpy(container.Y),
    }
    golden.assert_matches_golden(case, as_grouped, keys=as_grouped.keys())


def dataset_batch_as_grouped(dataset, indices):
    """A ``PtychoDataset`` batch in grouped-data layout (images and coordinates only), plus the scale."""
    batch, _, scale = dataset[indices]
    return {
        "nn_indices": batch["nn_indices"].numpy(),
        "coords_offsets": batch["coords_center"].numpy().transpose(0, 1, 3, 2),
        "coords_relative": batch["coords_relative"].numpy().transpose(0, 2, 3, 1),
        "coords_start_offsets": batch["coords_start_center"].numpy().transpose(0, 1, 3, 2),
        "coords_start_relative": batch["coords_start_relative"].numpy().transpose(0, 2, 3, 1),
        "X_full": batch["images"].numpy().transpose(0, 2, 3, 1),
    }, scale.numpy().reshape(-1)


@pytest.mark.parametrize("case", golden.CASES, ids=golden.CASE_IDS)
def test_memmap_golden_dataset_batches(case, dataset_factory, tmp_path):
    path = golden.case_npz(case, tmp_path)
    dataset = dataset_factory(path, config=golden_config(case, path))
    assert len(dataset) == case.nsamples
    got, scale = dataset_batch_as_grouped(dataset, list(range(len(dataset))))
    assert len(scale) == len(dataset) and (scale == scale[0]).all()
    golden.assert_matches_golden(case, {**got, "norm": scale[0]}, keys=got.keys())


@pytest.mark.parametrize("case", [c for c in golden.CASES if c.has_y], ids=[c.name for c in golden.CASES if c.has_y])
def test_memmap_golden_dataset_ground_truth_y_baseline_convention(case, dataset_factory, tmp_path):
    """The dataset's ``Y`` in PtychoPINN's convention (patch at group centre + relative offset)."""
    path = golden.case_npz(case, tmp_path)
    dataset = dataset_factory(path, config=golden_config(case, path), ground_truth=True, y_convention="baseline")
    batch, _, _ = dataset[list(range(8))]
    golden.assert_y_matches_golden(case, batch["Y"].numpy().transpose(0, 2, 3, 1))


# --- cache reuse ---------------------------------------------------------------------------------

def file_state(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), Path(path).stat().st_mtime_ns


class GroupingSpy:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = experiment_module.group_with_raw_data

        def spy(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(experiment_module, "group_with_raw_data", spy)


def test_cache_reuse_second_construction_reads_without_regrouping(tmp_path, monkeypatch):
    spy = GroupingSpy(monkeypatch)
    first = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    assert spy.calls == 1 and first.cache_path.name.endswith(".groups_cache.npz")
    before = file_state(first.cache_path)
    map_before = file_state(first.cache_path.parent / "diffraction.npy")

    def no_npz_diffraction(*args, **kwargs):
        raise AssertionError("the NPZ diffraction was read on a cache hit")

    monkeypatch.setattr("ptycho.scan_file.ScanFile.iter_disk_blocks", no_npz_diffraction)
    second = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    assert spy.calls == 1 and not second.experiment.regrouped
    assert file_state(second.cache_path) == before
    assert file_state(first.cache_path.parent / "diffraction.npy") == map_before
    a, b = first.grouped_data(), second.grouped_data()
    for key in ("nn_indices", "X_full", "coords_relative", "coords_offsets"):
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("change", [dict(subsample_seed=7), dict(gridsize=1), dict(neighbor_count=5), dict(n_groups=120)])
def test_cache_reuse_each_setting_gets_a_separate_cache(tmp_path, change):
    base = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    other = MemmapDatasetBridge(EMBEDDED, memmap_config(**change), tmp_path, progress=False)
    assert other.cache_path != base.cache_path and base.cache_path.exists() and other.cache_path.exists()
    assert other.experiment.regrouped
    again = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    assert not again.experiment.regrouped


def test_cache_reuse_two_datasets_never_share_a_cache(tmp_path):
    copy = save_variant(tmp_path / "copy.npz")
    a = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path / "memmap", progress=False)
    b = MemmapDatasetBridge(copy, memmap_config(copy), tmp_path / "memmap", progress=False)
    assert a.cache_path.parent != b.cache_path.parent and a.cache_path.exists() and b.cache_path.exists()


@pytest.mark.parametrize("what", ["coordinates", "diffraction"])
def test_cache_reuse_modified_npz_invalidates(tmp_path, monkeypatch, what):
    path = save_variant(tmp_path / "scan.npz")
    first = MemmapDatasetBridge(path, memmap_config(path), tmp_path / "memmap", progress=False).grouped_data()
    arrays = embedded_arrays()
    if what == "coordinates":
        save_variant(path, xcoords=arrays["xcoords"][::-1].copy())
    else:
        save_variant(path, diffraction=arrays["diffraction"] * np.float32(3.0))
    spy = GroupingSpy(monkeypatch)
    second_bridge = MemmapDatasetBridge(path, memmap_config(path), tmp_path / "memmap", progress=False)
    assert spy.calls == 1 and second_bridge.experiment.regrouped
    second = second_bridge.grouped_data()
    if what == "coordinates":
        np.testing.assert_array_equal(second["coords_nn"][:, 0, 0], arrays["xcoords"][::-1][second["nn_indices"]])
    else:
        np.testing.assert_allclose(second["diffraction"], 3 * first["diffraction"], rtol=1e-6)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_cache_reuse_damaged_cache_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    first = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    data = first.cache_path.read_bytes()
    first.cache_path.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    with caplog.at_level(logging.WARNING):
        again = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    assert "damaged" in caplog.text and again.experiment.regrouped
    np.testing.assert_array_equal(again.grouped_data()["nn_indices"], first.grouped_data()["nn_indices"])
    assert file_state(again.cache_path)[0] == hashlib.sha256(data).hexdigest() or np.load(again.cache_path, allow_pickle=False)["nn_indices"].shape == (200, 4)


def test_cache_reuse_remake_map_rebuilds(tmp_path, monkeypatch):
    MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, progress=False)
    spy = GroupingSpy(monkeypatch)
    again = MemmapDatasetBridge(EMBEDDED, memmap_config(), tmp_path, remake_map=True, progress=False)
    assert spy.calls == 1 and again.experiment.regrouped


def test_cache_reuse_unseeded_groups_are_drawn_once_and_reused(tmp_path):
    first = MemmapDatasetBridge(EMBEDDED, memmap_config(subsample_seed=None), tmp_path, progress=False)
    second = MemmapDatasetBridge(EMBEDDED, memmap_config(subsample_seed=None), tmp_path, progress=False)
    assert not second.experiment.regrouped
    np.testing.assert_array_equal(first.grouped_data()["nn_indices"], second.grouped_data()["nn_indices"])


BUILD_IN_SUBPROCESS = """
import json, sys
from tests.torch.test_data_pipeline import memmap_config, EMBEDDED
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
bridge = MemmapDatasetBridge(EMBEDDED, memmap_config(), sys.argv[1], progress=False)
print(json.dumps({"regrouped": bridge.experiment.regrouped, "nn": bridge.grouped_data()["nn_indices"].tolist()}))
"""


def test_cache_reuse_two_processes_building_at_once_build_once(tmp_path):
    import json

    procs = [subprocess.Popen([sys.executable, "-c", BUILD_IN_SUBPROCESS, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["regrouped"] for r in results) == [False, True]
    assert results[0]["nn"] == results[1]["nn"]
    caches = list(tmp_path.glob("*/*.groups_cache.npz"))
    assert len(caches) == 1 and not list(tmp_path.glob("*/.*.tmp-*"))


DDP_WORKER = """
import json, os, sys
from pathlib import Path
import torch.distributed as dist
from tests.torch.test_data_pipeline import memmap_config, EMBEDDED
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
dist.init_process_group("gloo")
dataset = PtychoDataset(EMBEDDED, config=memmap_config(), data_dir=sys.argv[1], progress=False)
# one file per rank: both ranks finish together, and their stdout lines can interleave
result = {"rank": dist.get_rank(), "regrouped": dataset.regrouped, "n": len(dataset)}
Path(sys.argv[2], f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
dist.destroy_process_group()
"""


@needs_torch
def test_cache_reuse_two_rank_torch_distributed_builds_once(tmp_path):
    import json

    pytest.importorskip("tensordict")
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", str(script), str(tmp_path / "memmap"), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["regrouped"] for r in results] == [True, False]
    assert [r["n"] for r in results] == [200, 200]


def test_object_is_never_read_without_ground_truth_nor_pickled(dataset_factory, tmp_path, monkeypatch):
    """objectGuess stays on disk with ground_truth=False: not read at construction, not copied into workers."""
    from ptycho.scan_file import ScanFile

    big_object = np.ones((1024, 1024), dtype=np.complex64)  # 8 MB: would dominate a pickled dataset
    npz = save_variant(tmp_path / "big_object.npz", objectGuess=big_object)
    loaded = []
    real_load = ScanFile.load
    monkeypatch.setattr(ScanFile, "load", lambda self, key: loaded.append(key) or real_load(self, key))
    dataset = dataset_factory(npz, config=memmap_config(npz))
    batch, _, _ = dataset[list(range(len(dataset)))]
    assert "Y" not in batch.keys() and "objectGuess" not in loaded
    assert not dataset.experiments[0].object_guess.loaded
    assert len(pickle.dumps(dataset)) < 1_000_000

    again = dataset_factory(npz, config=memmap_config(npz))  # from the cache
    assert "objectGuess" not in loaded and not again.experiments[0].object_guess.loaded


def test_a_bad_object_matters_only_when_ground_truth_is_asked_for(dataset_factory, tmp_path):
    npz = save_variant(tmp_path / "nan_object.npz", objectGuess=np.full((244, 244), np.nan, dtype=np.complex64))
    dataset = dataset_factory(npz, config=memmap_config(npz))
    np.testing.assert_array_equal(dataset[[0, 1]][0]["nn_indices"].numpy(), baseline_grouped()["nn_indices"][:2])
    with_truth = dataset_factory(npz, config=memmap_config(npz), ground_truth=True)
    with pytest.raises(ValueError, match=r"nan_object\.npz key 'objectGuess' has non-finite values"):
        with_truth[[0]]


def test_a_real_object_is_refused_at_construction_when_ground_truth_is_asked_for(dataset_factory, tmp_path):
    """Its dtype is in the NPZ header: the error comes before any build or batch, naming the file and key."""
    real = np.abs(embedded_arrays()["objectGuess"]).astype(np.float32)
    npz = save_variant(tmp_path / "real_object.npz", objectGuess=real)
    data_dir = tmp_path / "refused"
    with pytest.raises(ValueError, match=r"real_object\.npz key 'objectGuess' has real dtype float32; ground truth must be complex"):
        dataset_factory(npz, config=memmap_config(npz), ground_truth=True, data_dir=data_dir)
    assert not data_dir.exists() or not any(data_dir.iterdir())  # refused before anything was built
    assert len(dataset_factory(npz, config=memmap_config(npz), data_dir=data_dir)) == 200  # without ground truth it serves


def test_object_is_read_once_when_ground_truth_needs_it(dataset_factory, tmp_path, monkeypatch):
    from ptycho.scan_file import ScanFile

    loaded = []
    real_load = ScanFile.load
    monkeypatch.setattr(ScanFile, "load", lambda self, key: loaded.append(key) or real_load(self, key))
    dataset = dataset_factory(ground_truth=True, y_convention="baseline")
    expected = baseline_grouped()["Y"].transpose(0, 3, 1, 2)
    for rows in ([0, 1], [5, 6, 7]):
        np.testing.assert_allclose(dataset[rows][0]["Y"].numpy(), expected[rows], rtol=1e-6, atol=1e-7)
    assert loaded.count("objectGuess") == 1
    clone = pickle.loads(pickle.dumps(dataset))
    assert not clone.experiments[0].object_guess.loaded  # a worker reads its own copy when it needs one
    np.testing.assert_allclose(clone[[3]][0]["Y"].numpy(), expected[[3]], rtol=1e-6, atol=1e-7)
