"""ConfigManager and DataloaderFormats as the plugin uses them; torch-free (runs in the torch-free CI pass)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from ptycho_torch.api.base_api import ConfigManager, DataloaderFormats
from ptycho_torch.config_params import DataConfig, DatagenConfig, InferenceConfig, ModelConfig, TrainingConfig


def test_config_manager_defaults_dicts_and_dataclasses():
    manager = ConfigManager()
    assert manager.data_config == DataConfig() and manager.datagen_config == DatagenConfig()
    assert manager.training_config == TrainingConfig() and manager.inference_config == InferenceConfig()

    # checkpoint hyper-parameters come back as plain dicts, tuples possibly as lists
    manager = ConfigManager(data_config={"N": 32, "grid_size": [1, 1], "C": 1}, model_config=ModelConfig(n_filters_scale=1))
    assert manager.data_config == DataConfig(N=32, grid_size=(1, 1), C=1)
    assert isinstance(manager.data_config.grid_size, tuple)
    assert manager.model_config.n_filters_scale == 1


def test_config_manager_copies_what_it_is_given():
    model = ModelConfig(n_filters_scale=1)
    manager = ConfigManager(model_config=model)
    manager.model_config.n_filters_scale = 3
    assert model.n_filters_scale == 1


def test_unknown_checkpoint_keys_are_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ptycho_torch.api.configs"):
        manager = ConfigManager(training_config={"epochs": 3, "from_a_newer_version": True})
    assert manager.training_config.epochs == 3
    assert any("from_a_newer_version" in message for message in caplog.messages)


def test_wrong_config_type_names_what_was_given():
    with pytest.raises(TypeError, match="DataConfig must be given as a DataConfig, a dict or None, got str"):
        ConfigManager(data_config="N=64")


def test_validate_arch_compatibility_lists_every_mismatch_and_accepts_a_match():
    network = SimpleNamespace(
        data_config=DataConfig(N=64), model_config=ModelConfig(n_filters_scale=1, cbam_encoder=True),
        training_config=TrainingConfig(), inference_config=InferenceConfig(),
    )
    model = SimpleNamespace(model=network)
    ConfigManager.from_loaded_model(model).validate_arch_compatibility(model)

    manager = ConfigManager(data_config=DataConfig(N=128), model_config=ModelConfig(n_filters_scale=2, cbam_encoder=False, object_estimate_steps=5),
                            training_config=TrainingConfig(epochs=1))
    with pytest.raises(ValueError) as error:
        manager.validate_arch_compatibility(model)
    message = str(error.value)
    for expected in ("data_config.N: configs 128 vs model 64", "model_config.n_filters_scale: configs 2 vs model 1", "model_config.cbam_encoder: configs False vs model True",
                     "model_config.object_estimate_steps: configs 5 vs model 2"):  # the network was trained on 2-step estimates
        assert expected in message
    assert "epochs" not in message  # training settings do not fix the architecture


def test_from_loaded_model_takes_the_network_configs():
    network = SimpleNamespace(hparams={"data_config": {"N": 32}, "model_config": {"n_filters_scale": 1}})
    manager = ConfigManager.from_loaded_model(SimpleNamespace(model=network, data_config=DataConfig(N=64)))
    assert manager.data_config.N == 32 and manager.model_config.n_filters_scale == 1
    assert manager.arch_frozen


def test_dataloader_formats_have_the_plugin_values():
    assert [f.value for f in DataloaderFormats] == ["lightning_module", "lightning_only_module", "tensordict", "pytorch", "numpy"]
    assert DataloaderFormats("lightning_only_module") is DataloaderFormats.LIGHTNING_ONLY_MODULE
