"""predict_patches builds its batch's group windows once, for the physics input and the group merge (issue 27)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensordict")

from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402
from ptycho_torch.model import physics  # noqa: E402
from ptycho_torch.model.pinn import PtychoPINN  # noqa: E402

NPZ = Path(__file__).resolve().parents[2] / "datasets" / "sim_small.npz"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    data = DataConfig(N=64, grid_size=(2, 2), K=7, nphotons=1e6, subsample_seed=42)
    model = ModelConfig(n_filters_scale=1, base_filters=16, object_big=True, cbam_encoder=False, use_shared_decoder=True)
    training = TrainingConfig(n_groups=16, device="cpu", num_workers=0, train_data_file=str(NPZ), test_data_file=str(NPZ))
    dataset = PtychoDataset(NPZ, data, model, training, data_dir=tmp_path_factory.mktemp("memmap"), progress=False)
    return (data, model, training), dataset[np.arange(6)]


@pytest.mark.parametrize("generator", [dict(), dict(generator_input="diffraction", generator_output="object")])
def test_windows_are_built_once_per_batch_and_the_patches_are_the_separate_steps(batch, generator, monkeypatch):
    (data, model_config, training), (td, probe, scale) = batch
    model = PtychoPINN(replace(model_config, **generator), data, training, InferenceConfig()).eval()
    with torch.inference_mode():
        inputs = model.generator_input(td, probe, scale.reshape(-1))  # the public steps, each building its own windows
        raw = model.generator_output(inputs)
        patches = model._estimate_from(inputs) * raw if model.model_config.generator_output == "correction" else raw
        coords = td["coords_relative"].float()
        unit = physics.unit_peak(physics.as_probe_modes(probe))
        M = physics.region_size(64, coords)
        region, _ = physics.merge_group(patches, physics.probe_weight(unit), coords, M)
        expected = physics.extract_from_region(region, coords, 64)

        built = []
        locate = physics.GroupWindows._locate
        monkeypatch.setattr(physics.GroupWindows, "_locate", lambda self, *args: built.append(1) or locate(self, *args))
        predicted = model.predict_patches(td, probe, scale)
    assert len(built) == 1
    assert torch.equal(predicted, expected)
