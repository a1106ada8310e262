"""One as_config for every path (issue 28): argument order, unknown keys, copies, tuples; torch-free."""

from __future__ import annotations

import logging

import pytest

from ptycho_torch.config_file import as_config
from ptycho_torch.config_params import DataConfig, TrainingConfig


def test_the_api_path_uses_the_same_function():
    from ptycho_torch.api import configs

    assert configs.as_config is as_config


def test_unknown_keys_are_refused_unless_dropping_is_asked_for(caplog):
    with pytest.raises(ValueError, match=r"unknown TrainingConfig field\(s\) \['optimiser'\]; valid fields are"):
        as_config({"optimiser": "sgd"}, TrainingConfig)
    with caplog.at_level(logging.WARNING):
        assert as_config({"epochs": 3, "newer": 1}, TrainingConfig, unknown="drop") == TrainingConfig(epochs=3)
    assert "newer" in caplog.text


def test_an_instance_is_copied_and_lists_become_tuples():
    data = DataConfig(N=32)
    copied = as_config(data, DataConfig)
    assert copied == data and copied is not data
    assert as_config({"grid_size": [1, 1]}, DataConfig).grid_size == (1, 1)
    with pytest.raises(TypeError, match="DataConfig must be given as a DataConfig, a dict or None, got str"):
        as_config("N=64", DataConfig)
