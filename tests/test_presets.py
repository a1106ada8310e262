"""ptycho-train starts from the recommended settings; PtychoPINN's are one preset away; the config file and options win."""

import json
from pathlib import Path

import pytest

from ptycho_torch.cli_train import build_configs, parse_args

EMBEDDED = Path(__file__).resolve().parents[1] / "datasets" / "sim_small.npz"


def configs(*options):
    args = parse_args([str(EMBEDDED), *map(str, options)])
    return build_configs(args, EMBEDDED)


def test_without_a_config_file_training_uses_the_recommended_settings():
    _, model, training, _, _ = configs()
    assert (model.n_filters_scale, model.base_filters, model.cbam_encoder, model.use_shared_decoder, model.batch_norm) == (1, 16, False, True, True)
    assert model.truth_loss_weight == 0
    assert (training.epochs, training.batch_size, training.learning_rate) == (10, 8, 2e-3)
    assert (training.scheduler, training.lr_warmup_epochs, training.lr_min_ratio) == ("WarmupCosine", 0, 0.0)


def test_the_ptychopinn_preset_is_every_field_at_its_default():
    _, model, training, _, _ = configs("--preset", "ptychopinn")
    assert (model.n_filters_scale, model.cbam_encoder, model.batch_norm, training.epochs, training.batch_size) == (2, True, False, 50, 16)


def test_the_config_file_and_the_options_win_over_the_preset(tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"model": {"batch_norm": False}, "training": {"epochs": 3, "learning_rate": 1e-3}}))
    _, model, training, _, _ = configs("--config", config, "--epochs", 2)
    assert (model.batch_norm, model.n_filters_scale, training.epochs, training.learning_rate, training.batch_size) == (False, 1, 2, 1e-3, 8)


def test_an_unknown_preset_is_a_usage_error():
    with pytest.raises(SystemExit):
        parse_args([str(EMBEDDED), "--preset", "fast"])


def test_the_diffraction_units_come_from_the_option_else_the_config_file(tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"data": {"diffraction_units": "counts", "K": 7}}))
    assert configs().diffraction_units == "auto"
    assert configs("--config", config).diffraction_units == "counts"
    assert configs("--config", config, "--diffraction-units", "amplitude").diffraction_units == "amplitude"
    assert configs("--config", config).data.K == 7 and not hasattr(configs("--config", config).data, "diffraction_units")
    config.write_text(json.dumps({"data": {"diffraction_units": "photons"}}))
    with pytest.raises(ValueError, match="data.diffraction_units must be one of"):
        configs("--config", config)
    config.write_text(json.dumps({"data": {"K": 0}}))
    with pytest.raises(ValueError, match="data.K must be > 0"):
        configs("--config", config)


@pytest.mark.parametrize("scheduler", ["Exponential", "Default"])
def test_a_config_file_choosing_another_scheduler_is_not_refused_for_the_presets_warmup_cosine_fields(tmp_path, scheduler):
    # the recommended preset's lr_min_ratio 0 goes with its WarmupCosine schedule; a file that picks another schedule did not set it
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"training": {"scheduler": scheduler}}))
    _, _, training, _, _ = configs("--config", config)
    assert training.scheduler == scheduler and training.learning_rate == 2e-3
    config.write_text(json.dumps({"training": {"scheduler": scheduler, "lr_min_ratio": 0.5}}))  # set in the file: still refused
    with pytest.raises(ValueError, match="training.lr_min_ratio=0.5 has no effect here"):
        configs("--config", config)
