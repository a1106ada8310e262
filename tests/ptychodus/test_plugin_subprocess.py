"""The GUI's path: Ptychodus's SubprocessReconstructor trains and reconstructs in fresh spawned children."""

from __future__ import annotations

import pytest

pytest.importorskip("ptychodus")
pytest.importorskip("torch")
pytest.importorskip("tensordict")
pytest.importorskip("lightning")
pytest.importorskip("scipy")

import numpy as np  # noqa: E402
from ptychodus.api.reconstruct import ReconstructOutput, TrainOutput  # noqa: E402
from ptychodus.model.ptychopinn_torch.reconstructor import build_reconstructor  # noqa: E402

from tests.ptychodus.plugin_support import plugin_settings, reconstruct_input  # noqa: E402

N_POINTS = 64  # a tiny scan: this test proves the names resolve in a fresh process, not quality


def test_subprocess_reconstructor_trains_saves_loads_and_reconstructs(tmp_path, monkeypatch):
    monkeypatch.setenv("PTYCHOPINN_CACHE_DIR", str(tmp_path / "cache"))  # inherited by the spawned children
    monkeypatch.setenv("PTYCHOPINN_INIT", "random")  # train from random weights whatever ships in the package
    data, model, training, inference = plugin_settings(
        model_size=64, num_filters_scale=1, epochs=1, coordinate_subsampling_factor=1, num_dataloader_workers=0
    )
    reconstructor = build_reconstructor("Unsupervised", data, model, inference, training)
    parameters = reconstruct_input(N_POINTS)

    directory = tmp_path / "train"
    directory.mkdir()
    reconstructor.export_training_data(directory / "train_data.npz", parameters)
    outputs = list(reconstructor.train(directory, directory))

    assert len(outputs) == 1 and isinstance(outputs[0], TrainOutput)
    assert len(outputs[0].training_loss) == 1 and outputs[0].validation_loss
    assert reconstructor.is_model_loaded()
    saved = tmp_path / "model.ckpt"
    reconstructor.save_model(saved)  # the GUI's Save Model copies the trained checkpoint
    assert saved.stat().st_size > 0

    reconstructor.load_model_from_file(saved)  # the GUI's Load Model
    results = list(reconstructor.reconstruct(parameters))
    assert len(results) == 1 and isinstance(results[0], ReconstructOutput)
    array = results[0].product.object_.get_layer(0)
    assert array.shape == parameters.product.object_.get_layer(0).shape
    assert np.iscomplexobj(array) and np.isfinite(array).all() and np.abs(array).max() > 0
