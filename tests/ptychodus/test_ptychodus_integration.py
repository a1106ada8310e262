"""Ptychodus 1.7.0's PtychoPINN plugins driving this package through Ptychodus's own code (no GUI, no TensorFlow)."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ptychodus")

from ptychodus.api.geometry import PixelGeometry  # noqa: E402
from ptychodus.api.io import save_ptychopinn_training_data  # noqa: E402
from ptychodus.api.object import Object, ObjectCenter  # noqa: E402
from ptychodus.api.probe import ProbeSequence  # noqa: E402
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence  # noqa: E402
from ptychodus.api.product import Product, ProductMetadata  # noqa: E402
from ptychodus.api.reconstruct import ReconstructInput  # noqa: E402
from ptychodus.api.settings import SettingsRegistry  # noqa: E402

from ptycho import params  # noqa: E402
from ptycho.config.config import update_legacy_dict  # noqa: E402
from ptycho.loader import PtychoDataContainer, load  # noqa: E402
from ptycho.raw_data import RawData  # noqa: E402
from ptycho_torch.config_bridge import to_model_config, to_training_config  # noqa: E402
from ptycho_torch.config_resolve import to_ptycho_config  # noqa: E402
from ptycho_torch.memmap_bridge import MemmapDatasetBridge  # noqa: E402

# Ptychodus's torch settings carry no test file; the bridge's reminder about it is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:no test_data_file for training:UserWarning")

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "datasets" / "sim_small.npz"
N = 64
PIXEL_M = 10e-9
CENTER = ObjectCenter(x_m=1.5e-6, y_m=-2.0e-6)
BAD_PIXELS = ((0, 0), (12, 50), (33, 30))
PHOTONS = 1e6
OVERRIDES = {"n_groups": 128, "nphotons": PHOTONS}


# --- a Ptychodus product built with Ptychodus's API -----------------------------------------------

@functools.cache
def embedded() -> dict[str, np.ndarray]:
    with np.load(EMBEDDED, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def probe_stack() -> np.ndarray:
    """Two probe modes ``(modes, H, W)``; mode 0 is the embedded probe."""
    probe = embedded()["probeGuess"]
    ramp = np.exp(0.3j * np.arange(N))[None, :]
    return np.stack([probe, 0.3 * probe * ramp]).astype(np.complex64)


def bad_pixel_mask() -> np.ndarray:
    mask = np.zeros((N, N), dtype=bool)
    mask[tuple(np.array(BAD_PIXELS).T)] = True
    return mask


def reconstruct_input() -> ReconstructInput:
    """Patterns as raw uint16 detector counts, a bad-pixel mask, and a product positioned in metres."""
    arrays = embedded()
    counts = np.rint(arrays["diffraction"].astype(np.float64) ** 2).astype(np.uint16)
    middle = (arrays["objectGuess"].shape[0] - 1) / 2
    x_m = CENTER.x_m + (arrays["xcoords"] - middle) * PIXEL_M
    y_m = CENTER.y_m + (arrays["ycoords"] - middle) * PIXEL_M
    product = Product(
        metadata=ProductMetadata(
            name="sim_small", comments="", detector_distance_m=2.0, photon_energy_eV=10_000.0,
            probe_photon_count=PHOTONS, exposure_time_s=0.1, mass_attenuation_m2_per_kg=0.0,
            tomography_angle_deg=0.0,
        ),
        probe_positions=ProbePositionSequence(
            [ProbePosition(index, x, y) for index, (x, y) in enumerate(zip(x_m, y_m))]
        ),
        probes=ProbeSequence(probe_stack(), None, PixelGeometry(PIXEL_M, PIXEL_M)),
        object_=Object(arrays["objectGuess"], PixelGeometry(PIXEL_M, PIXEL_M), CENTER),
        losses=[],
    )
    return ReconstructInput(diffraction_patterns=counts, bad_pixels=bad_pixel_mask(), product=product)


def object_pixels(parameters: ReconstructInput) -> tuple[np.ndarray, np.ndarray]:
    """Ptychodus's own mapping of the probe positions to object pixels (x, y)."""
    geometry = parameters.product.object_.get_geometry()
    positions = parameters.product.probe_positions
    return (
        geometry.map_probe_positions_to_object_x_px(positions),
        geometry.map_probe_positions_to_object_y_px(positions),
    )


@pytest.fixture
def exported(tmp_path) -> tuple[Path, ReconstructInput]:
    """Ptychodus's training-data export, alone in a directory (what a plugin gets as ``input_path``)."""
    parameters = reconstruct_input()
    path = tmp_path / "input" / "train_data.npz"
    path.parent.mkdir()
    save_ptychopinn_training_data(path, parameters)
    return path, parameters


def exported_counts(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data["diff3d"]


# --- the plugins' own settings and config builders ------------------------------------------------

def torch_plugin_configs(model_size: int = N, grid: int = 2, K: int = 7) -> tuple:
    """The five configs the torch plugin's ``_build_configs`` makes from its settings, set as in the GUI."""
    from ptychodus.model.ptychopinn_torch.reconstructor import _build_configs
    from ptychodus.model.ptychopinn_torch.settings import (
        PtychoPINNTorchDataSettings,
        PtychoPINNTorchInferenceSettings,
        PtychoPINNTorchModelSettings,
        PtychoPINNTorchTrainingSettings,
    )

    registry = SettingsRegistry()
    data = PtychoPINNTorchDataSettings(registry)
    data.model_size.set_value(model_size)
    data.grid_size_x.set_value(grid)
    data.grid_size_y.set_value(grid)
    data.num_channels.set_value(grid * grid)
    data.num_nearest_neighbors_for_lookup.set_value(K)
    return _build_configs(
        "Unsupervised",
        data,
        PtychoPINNTorchModelSettings(registry),
        PtychoPINNTorchTrainingSettings(registry),
        PtychoPINNTorchInferenceSettings(registry),
    )


def tensorflow_plugin_settings(gridsize: int) -> tuple:
    from ptychodus.model.ptychopinn.settings import (
        PtychoPINNInferenceSettings,
        PtychoPINNModelSettings,
        PtychoPINNTrainingSettings,
    )

    registry = SettingsRegistry()
    model = PtychoPINNModelSettings(registry)
    model.gridsize.set_value(gridsize)
    return model, PtychoPINNTrainingSettings(registry), PtychoPINNInferenceSettings(registry)


def require_torch_dataset():
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    from ptycho_torch.dataloader import TensorDictDataLoader
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    return PtychoDataset, TensorDictDataLoader


# --- discovery ------------------------------------------------------------------------------------

def test_ptychodus_finds_this_package_by_its_distribution_name(caplog):
    from ptychodus.model.ptychopinn import PtychoPINNReconstructorLibrary

    version = importlib.metadata.version("ptychopinn")
    assert version
    assert importlib.util.find_spec("ptycho_torch") and importlib.util.find_spec("ptycho")
    with caplog.at_level(logging.INFO, logger="ptychodus.model.ptychopinn.core"):
        library = PtychoPINNReconstructorLibrary(SettingsRegistry(), is_developer_mode_enabled=False)
    assert [reconstructor.name for reconstructor in library] == ["PINN", "Supervised"]
    assert f"PtychoPINN {version}" in caplog.messages


# --- torch plugin: its configs drive the memmap dataset ------------------------------------------

def test_torch_plugin_configs_drive_the_data_pipeline_and_the_bridge_guards_a_training_config():
    data, model, training, _, _ = torch_plugin_configs()
    # the data pipeline needs neither (no batch depends on them); n_groups None is ptycho's default
    config = to_ptycho_config(EMBEDDED, data, model, training)
    assert (config.n_groups, config.nphotons) == (512, data.nphotons)
    # a training config for a model still needs an explicit photon count and group count
    tf_model = to_model_config(data, model)
    with pytest.raises(ValueError, match=r"(?s)nphotons.*overrides"):
        to_training_config(tf_model, data, model, training, {"n_groups": 128, "train_data_file": EMBEDDED})
    with pytest.raises(ValueError, match="n_groups"):
        to_training_config(tf_model, data, model, training, {"nphotons": PHOTONS, "train_data_file": EMBEDDED})
    config = to_ptycho_config(EMBEDDED, data, model, training, overrides=OVERRIDES)
    assert (config.model.N, config.model.gridsize, config.neighbor_count) == (N, 2, 7)
    assert (config.n_groups, config.nphotons, config.train_data_file) == (128, PHOTONS, EMBEDDED)


def test_torch_plugin_default_model_size_is_refused_naming_the_fix(tmp_path):
    data, model, training, _, _ = torch_plugin_configs(model_size=128)
    with pytest.raises(ValueError, match=r"N=128 does not match the 64 x 64 .*set N=64"):
        MemmapDatasetBridge(EMBEDDED, (data, model, training), tmp_path, overrides=OVERRIDES, progress=False)


@pytest.mark.parametrize("grid", [1, 2])
def test_torch_plugin_configs_build_a_ptycho_dataset_that_iterates(tmp_path, grid):
    PtychoDataset, TensorDictDataLoader = require_torch_dataset()
    import torch

    configs = torch_plugin_configs(grid=grid)
    dataset = PtychoDataset(EMBEDDED, *configs, overrides=OVERRIDES, data_dir=tmp_path, progress=False)
    C = grid * grid
    assert (len(dataset), dataset.N, dataset.C) == (128, N, C)

    amplitude = embedded()["diffraction"]
    loader = TensorDictDataLoader(dataset, batch_size=configs[2].batch_size, shuffle=True)
    seen = []
    for batch, probe, scale in loader:
        B = batch.batch_size[0]
        assert batch["images"].shape == (B, C, N, N) and batch["images"].dtype == torch.float32
        assert batch["coords_relative"].shape == (B, C, 1, 2) and batch["coords_center"].shape == (B, 1, 1, 2)
        assert probe.shape == (B, C, 1, N, N) and probe.dtype == torch.complex64 and scale.shape == (B, 1, 1, 1)
        members = batch["nn_indices"].numpy()
        expected = amplitude[members] * scale.numpy()
        np.testing.assert_allclose(batch["images"].numpy(), expected, rtol=1e-6)
        seen.append(members)
    seen = np.concatenate(seen)
    every_group = dataset[list(range(len(dataset)))][0]["nn_indices"].numpy()
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, every_group.tolist()))
    energy = np.sum(amplitude.astype(np.float64) ** 2, axis=(1, 2))
    assert float(scale[0]) == pytest.approx(np.sqrt((N / 2) ** 2 / energy[every_group].mean()), rel=1e-6)


def test_torch_plugin_default_configs_build_a_dataset_without_overrides_or_warnings(tmp_path, caplog):
    PtychoDataset, _ = require_torch_dataset()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            dataset = PtychoDataset(EMBEDDED, *torch_plugin_configs(), data_dir=tmp_path, progress=False)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert (len(dataset), dataset.C) == (512, 4)  # n_groups unset: ptycho's default of 512 groups per scan


# --- Ptychodus's training-data export -------------------------------------------------------------

def test_exported_training_data_trains_through_ptycho_dataset(exported, tmp_path, caplog):
    PtychoDataset, _ = require_torch_dataset()
    path, parameters = exported
    counts = exported_counts(path)
    assert counts.dtype == np.uint16  # Ptychodus keeps the detector dtype

    with caplog.at_level(logging.WARNING, logger="ptycho_torch"):
        dataset = PtychoDataset(
            path.parent, *torch_plugin_configs(), overrides=OVERRIDES, data_dir=tmp_path / "memmap", progress=False
        )
    assert any("photon counts" in message and "sqrt" in message for message in caplog.messages)

    batch, probe, scale = dataset[list(range(len(dataset)))]
    members = batch["nn_indices"].numpy()
    images = batch["images"].numpy() / scale.numpy()
    np.testing.assert_allclose(images, np.sqrt(counts[members].astype(np.float64)), rtol=1e-6)
    measured = ~bad_pixel_mask()
    np.testing.assert_allclose(images[..., measured], embedded()["diffraction"][members][..., measured], rtol=1e-6)

    np.testing.assert_array_equal(probe[0, 0].numpy(), probe_stack())  # every mode, (P, N, N)
    x_px, y_px = object_pixels(parameters)
    scan = dataset.experiments[0].scan
    np.testing.assert_array_equal(scan.xcoords, x_px)
    np.testing.assert_array_equal(scan.ycoords, y_px)
    centre, relative = batch["coords_center"].numpy(), batch["coords_relative"].numpy()
    np.testing.assert_allclose(centre[:, 0, 0, 0, None] - relative[:, :, 0, 0], x_px[members], rtol=0, atol=1e-4)  # float32
    np.testing.assert_allclose(centre[:, 0, 0, 1, None] - relative[:, :, 0, 1], y_px[members], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(batch["coords_global"].numpy()[:, :, 0, 0], x_px[members].astype(np.float32))

    assert scan.bad_pixels.dtype == bool
    np.testing.assert_array_equal(scan.bad_pixels, bad_pixel_mask())


BRIDGE_WITHOUT_TORCH = """
import logging, sys
sys.modules["torch"] = None
logging.basicConfig(level=logging.WARNING, format="%(message)s")
import numpy as np
from ptycho.config.config import ModelConfig, TrainingConfig
from ptycho.loader import load
from ptycho_torch.memmap_bridge import MemmapDatasetBridge

npz, memmap_dir, out = sys.argv[1:]
config = TrainingConfig(model=ModelConfig(N=64, gridsize=2), train_data_file=npz, n_groups=128,
                        neighbor_count=7, subsample_seed=3, nphotons=1e6)
bridge = MemmapDatasetBridge(npz, config, memmap_dir, progress=False)
grouped = bridge.grouped_data()
container = load(lambda: grouped, bridge.probe, which=None, create_split=False)
np.savez(out, diffraction=grouped["diffraction"], coords_nn=grouped["coords_nn"], nn_indices=grouped["nn_indices"],
         stored_probe=bridge.probe, container_probe=container.probe, bad_pixels=bridge.experiment.scan.bad_pixels)
"""


def test_exported_training_data_loads_in_the_bridge_without_torch(exported, tmp_path):
    path, parameters = exported
    out = tmp_path / "grouped.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", BRIDGE_WITHOUT_TORCH, str(path), str(tmp_path / "memmap"), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "photon counts" in result.stderr and "sqrt" in result.stderr

    with np.load(out, allow_pickle=False) as got:
        members = got["nn_indices"]
        amplitude = np.sqrt(exported_counts(path)[members].astype(np.float64)).transpose(0, 2, 3, 1)
        np.testing.assert_allclose(got["diffraction"], amplitude, rtol=1e-6)
        x_px, y_px = object_pixels(parameters)
        np.testing.assert_array_equal(got["coords_nn"][:, 0, 0, :], x_px[members])
        np.testing.assert_array_equal(got["coords_nn"][:, 0, 1, :], y_px[members])
        np.testing.assert_array_equal(got["stored_probe"], probe_stack())
        np.testing.assert_array_equal(got["container_probe"], probe_stack()[0])
        np.testing.assert_array_equal(got["bad_pixels"], bad_pixel_mask())


# --- TensorFlow plugin: its child's data path, TensorFlow absent ---------------------------------

def assert_container_matches(container: PtychoDataContainer, parameters: ReconstructInput, amplitude: np.ndarray, C: int) -> None:
    """X, local_offsets and global_offsets in the contract dtypes, built from Ptychodus's positions."""
    B = container.X.shape[0]
    assert container.X.shape == (B, N, N, C) and container.X.dtype == np.float32
    assert container.local_offsets.shape == (B, 1, 2, C) and container.local_offsets.dtype == np.float64
    assert container.global_offsets.shape == (B, 1, 2, 1) and container.global_offsets.dtype == np.float64
    np.testing.assert_array_equal(container.probe, probe_stack()[0])

    members = container.nn_indices
    x_px, y_px = object_pixels(parameters)
    member_xy = np.stack([x_px[members], y_px[members]], axis=1)  # (B, 2, C)
    np.testing.assert_allclose(container.global_offsets[:, 0, :, 0], member_xy.mean(axis=2), rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        container.global_offsets[:, 0] - container.local_offsets[:, 0], member_xy, rtol=0, atol=1e-9
    )
    grouped = amplitude[members].transpose(0, 2, 3, 1)
    norm = np.sqrt((N / 2) ** 2 / np.mean(np.sum(grouped.astype(np.float64) ** 2, axis=(1, 2))))
    np.testing.assert_allclose(container.X, grouped * norm, rtol=1e-5)


def test_tensorflow_plugin_reconstruct_data_path_without_tensorflow(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    from ptychodus.api.preprocess.diffraction import inpaint_bad_pixels
    from ptychodus.model.ptychopinn._subprocess import _create_raw_data
    from ptychodus.model.ptychopinn.reconstructor import _build_inference_config

    parameters = reconstruct_input()
    model_settings, _, inference_settings = tensorflow_plugin_settings(gridsize=1)
    n = len(parameters.product.probe_positions)
    inference_settings.n_samples.set_value(n)  # one group per scan point; the GUI default is 1
    config = _build_inference_config(model_settings, "PINN", parameters.diffraction_patterns.shape[-1], is_developer_mode_enabled=False)
    update_legacy_dict(params.cfg, config)

    raw = _create_raw_data(parameters)
    assert raw.probeGuess.shape == (N, N) and raw.probe_modes.shape == (2, N, N)
    grouped = raw.generate_grouped_data(
        config.model.N,
        K=inference_settings.n_nearest_neighbors.get_value(),
        nsamples=inference_settings.n_samples.get_value(),
        gridsize=config.model.gridsize,
    )
    container = load(lambda: grouped, raw.probeGuess, which=None, create_split=False)

    np.testing.assert_array_equal(container.nn_indices[:, 0], np.arange(n))
    repaired = inpaint_bad_pixels(parameters.diffraction_patterns, parameters.bad_pixels)
    assert_container_matches(container, parameters, np.sqrt(repaired.astype(np.float64)), C=1)


def test_tensorflow_plugin_training_data_path_without_tensorflow(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    from ptychodus.model.ptychopinn.reconstructor import _build_training_config

    path, parameters = exported
    model_settings, training_settings, _ = tensorflow_plugin_settings(gridsize=2)
    config = _build_training_config(model_settings, training_settings, "PINN")
    assert config.model.N == 0  # the parent does not know the pattern size
    with pytest.raises(ValueError, match="model.N"):
        update_legacy_dict(params.cfg, config)

    raw = RawData.from_file(path)
    config.model.N = raw.diff3d.shape[-1]  # what the child does before using the config
    update_legacy_dict(params.cfg, config)
    assert (params.get("N"), params.get("gridsize")) == (N, 2)
    assert params.get("nphotons") == training_settings.nphotons.get_value()

    grouped = raw.generate_grouped_data(
        config.model.N, K=config.neighbor_count, nsamples=config.n_groups, gridsize=config.model.gridsize
    )
    container = load(lambda: grouped, raw.probeGuess, which=None, create_split=False)
    assert container.X.shape[0] == config.n_groups
    assert_container_matches(container, parameters, np.sqrt(exported_counts(path).astype(np.float64)), C=4)
