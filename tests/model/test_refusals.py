"""Fields this package cannot honour are refused where configs are resolved, before any work (issue 28)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensordict")
pytest.importorskip("lightning")

from ptycho_torch.api.configs import ConfigManager  # noqa: E402
from ptycho_torch.cli_train import main as train_main  # noqa: E402
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig  # noqa: E402
from ptycho_torch.model import PtychoPINN_Lightning  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NPZ = ROOT / "datasets" / "sim_small.npz"
DATA = DataConfig(N=64, grid_size=(2, 2), K=7, nphotons=1e6)
MODEL = ModelConfig(n_filters_scale=1, cbam_encoder=False, use_shared_decoder=True)

FAMILIES = [
    ("model", {"hybrid_skip_connections": True}, "hybrid_skip_connections=True"),
    ("model", {"amp_loss": "Total_Variation"}, "amp_loss='Total_Variation'"),
    ("training", {"momentum": 0.5}, "momentum=0.5"),
    ("training", {"optimizer": "sgd", "adam_beta1": 0.5}, "adam_beta1=0.5"),
    ("training", {"epochs_fine_tune": 3}, "epochs_fine_tune=3"),
    ("training", {"enable_staged_finetuning": True}, "enable_staged_finetuning=True"),
    ("training", {"torch_loss_mode": "mae"}, "torch_loss_mode='mae'"),
    ("inference", {"patch_weighting": "uniform"}, "patch_weighting='uniform'"),
    ("data", {"phase_subtraction": False}, "phase_subtraction=False"),
]
CLASSES = {"data": "DataConfig", "model": "ModelConfig", "training": "TrainingConfig", "inference": "InferenceConfig"}


def configs_with(section: str, values: dict):
    built = {"data": DATA, "model": MODEL, "training": TrainingConfig(device="cpu"), "inference": InferenceConfig()}
    built[section] = replace(built[section], **values)
    return built


@pytest.mark.parametrize(("section", "values", "shown"), FAMILIES)
def test_ptycho_train_refuses_the_field_as_the_file_writes_it_before_any_work(tmp_path, capsys, section, values, shown):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({section: values}))
    status = train_main([str(NPZ), "--config", str(config), "--output-dir", str(tmp_path / "runs"), "--epochs", "1", "--n-groups", "16", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"ptycho-train: error: {config}: {section}.{shown} has no effect here: " in err and "leave it at" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("section", "values", "shown"), [family for family in FAMILIES if family[0] != "data"])  # DataConfig: PtychoDataset's check
def test_the_lightning_module_refuses_the_field_by_class_name(section, values, shown):
    built = configs_with(section, values)
    with pytest.raises(ValueError, match=rf"{CLASSES[section]}\.{shown.split('=')[0]}=.* has no effect here"):
        PtychoPINN_Lightning(built["model"], built["data"], built["training"], built["inference"])


@pytest.mark.parametrize(("section", "values", "shown"), FAMILIES)
def test_the_ptychodus_config_manager_refuses_the_field(section, values, shown):
    built = configs_with(section, values)
    with pytest.raises(ValueError, match=rf"{CLASSES[section]}\.{shown.split('=')[0]}=.* has no effect here"):
        ConfigManager(data_config=built["data"], model_config=built["model"], training_config=built["training"], inference_config=built["inference"])


def test_ptycho_train_reads_upstream_section_names_and_quotes_them(tmp_path, capsys):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"data_config": {"K": 7}, "training_config": {"momentum": 0.5}}))
    status = train_main([str(NPZ), "--config", str(config), "--output-dir", str(tmp_path / "runs"), "--quiet"])
    assert status == 2
    assert f"{config}: training_config.momentum=0.5 has no effect here: only optimizer='sgd' reads it" in capsys.readouterr().err


def test_the_ptychodus_config_manager_honours_its_group_counting_fields():
    manager = ConfigManager(data_config=replace(DATA, n_subsample=2, x_bounds=(0.2, 0.8)), model_config=MODEL)
    assert manager.data_config.n_subsample == 2


def _scan_directory(directory: Path, **scans: dict) -> Path:
    """A directory of cuts of the embedded scan: name -> {"points": n, "crop": side or None}."""
    import numpy as np

    directory.mkdir(parents=True)
    with np.load(NPZ, allow_pickle=False) as source:
        arrays = {name: source[name] for name in source.files}
    for name, cut in scans.items():
        n, crop = cut["points"], cut.get("crop")
        scan = {key: (value[:n] if key in ("diffraction", "xcoords", "ycoords", "xcoords_start", "ycoords_start", "scan_index") else value)
                for key, value in arrays.items()}
        if crop:
            lo = (64 - crop) // 2
            scan["diffraction"] = scan["diffraction"][:, lo:lo + crop, lo:lo + crop]
            scan["probeGuess"] = scan["probeGuess"][lo:lo + crop, lo:lo + crop]
        np.savez(directory / f"{name}.npz", **scan)
    return directory


@pytest.mark.parametrize("first, second", [(300, 200), (200, 300)], ids=["shorter second", "longer second"])
def test_ptycho_train_refuses_scans_of_different_lengths_without_n_groups_before_any_work(tmp_path, capsys, first, second):
    """One group per scan point (the default) was the first scan's count for every file: a shorter scan after it failed
    after both memory maps were written, a longer one silently lost its last points."""
    scans = _scan_directory(tmp_path / "scans", a={"points": first}, b={"points": second})
    status = train_main([str(scans), "--output-dir", str(tmp_path / "runs"), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"the scans hold different numbers of points (a.npz {first}, b.npz {second})" in err
    assert f"pass --n-groups G (groups per scan file, at most {min(first, second)})" in err
    assert not (tmp_path / "runs").exists()


def test_ptycho_train_refuses_more_groups_than_a_scan_has_points_naming_the_option_before_any_work(tmp_path, capsys):
    scans = _scan_directory(tmp_path / "scans", a={"points": 300}, b={"points": 200})
    status = train_main([str(scans), "--output-dir", str(tmp_path / "runs"), "--epochs", "1", "--n-groups", "250", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"{scans / 'b.npz'}: holds 200 scan points, fewer than the 250 groups per scan file" in err and "--n-groups 200 or fewer" in err
    assert "enable_oversampling" not in err
    assert not (tmp_path / "runs").exists()


def test_ptycho_train_refuses_a_directory_of_two_pattern_sizes_naming_the_odd_file_before_any_work(tmp_path, capsys):
    scans = _scan_directory(tmp_path / "scans", a={"points": 200}, b={"points": 200, "crop": 32})
    status = train_main([str(scans), "--output-dir", str(tmp_path / "runs"), "--epochs", "1", "--n-groups", "16", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"{scans / 'b.npz'}: its patterns are 32 x 32 but the other scans' (and data.N) are 64 x 64" in err
    assert not (tmp_path / "runs").exists()


def test_ptycho_train_refuses_seed_with_init_which_replaces_the_initialisation_it_seeds(tmp_path, capsys):
    """--seed seeds only the network's random initialisation; with --init the weights are the checkpoint's, so two runs with
    different seeds were bit for bit the same: a setting silently ignored."""
    status = train_main([str(NPZ), "--init", "pretrained", "--seed", "7", "--output-dir", str(tmp_path / "runs"), "--epochs", "1",
                         "--n-groups", "16", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "ptycho-train: error: --seed 7 seeds the network's random initialisation, which --init pretrained replaces" in err
    assert not (tmp_path / "runs").exists()
