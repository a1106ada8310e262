"""Every DataConfig setting of the data pipeline is honoured or refused by name; the dataset demands nothing it does not use."""

from __future__ import annotations

import logging
import shutil
import warnings

import numpy as np
import pytest

from ptycho import params
from ptycho_torch.config_bridge import to_model_config, to_training_config
from ptycho_torch.config_params import DataConfig, ModelConfig, TrainingConfig
from ptycho_torch.config_resolve import check_data_config, to_ptycho_config
from ptycho_torch.data_settings import PipelineSettings
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from tests.torch.test_data_pipeline import EMBEDDED, N64, baseline_grouped, embedded_arrays

REFUSED = [
    ("neighbor_function", "Min_dist"),
    ("neighbor_function", "4_quadrant"),
    ("data_scaling", "Max"),
    ("n_subsample", 2),
    ("x_bounds", (0.05, 0.95)),
    ("y_bounds", (0.0, 1.0)),
    ("probe_ramp_removal", True),
    ("K_quadrant", 60),
    ("min_neighbor_distance", 1.0),
    ("max_neighbor_distance", 5.0),
    ("scan_pattern", "Rectangular"),
    ("probe_normalize", False),
    ("probe_scale", 2.0),
    ("phase_subtraction", False),
    ("normalize", "Each"),
    ("normalize", "None"),
]


def readme_configs(**data):
    """The README's training example, with no photon count: the dataset does not need one."""
    return DataConfig(N=N64, K=7, subsample_seed=42, **data), ModelConfig(), TrainingConfig(n_groups=200)


def dataset(*configs, path=EMBEDDED, data_dir, **kwargs):
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    return PtychoDataset(path, *configs, data_dir=data_dir, progress=False, **kwargs)


@pytest.mark.parametrize(("C", "grid_size"), [(9, (2, 2)), (4, (3, 3)), (4, (1, 1)), (1, (2, 2))])
def test_channel_count_must_match_the_grid(C, grid_size):
    data = DataConfig(N=N64, C=C, grid_size=grid_size)
    with pytest.raises(ValueError, match=rf"DataConfig\.C={C} does not match grid_size=\({grid_size[0]}, {grid_size[1]}\).*set C={grid_size[0] * grid_size[1]}"):
        to_ptycho_config(EMBEDDED, data, ModelConfig(), TrainingConfig(n_groups=10))


def _ptychodus_check(data):
    from ptycho_torch.api.data import _check_channels

    _check_channels(data)


def _ptycho_train_check(data):
    from ptycho_torch.cli_train import _settle_channels

    _settle_channels(data, frozenset({"C"}), "train.json: data")


GRID_CHECKS = {  # every path that checks the group grid, and the fix it names (config_resolve.grid_side)
    "dataset": (check_data_config, r"DataConfig\.grid_size=\(3, 2\) is not square: Non-square grids are not supported"),
    "bridge": (lambda data: to_model_config(data, ModelConfig()), r"DataConfig\.grid_size=\(3, 2\) is not square: Non-square grids"),
    "ptychodus": (_ptychodus_check, r"DataConfig\.grid_size=\(3, 2\) is not square: set Grid Size X and Y to the same value"),
    "ptycho-train": (_ptycho_train_check, r"^train\.json: data\.grid_size=\(3, 2\) is not square: use e\.g\. \[2, 2\]$"),
}


@pytest.mark.parametrize("path", sorted(GRID_CHECKS))
def test_every_path_refuses_a_non_square_grid_through_the_one_check(path):
    check, message = GRID_CHECKS[path]
    with pytest.raises(ValueError, match=message):
        check(DataConfig(N=N64, C=6, grid_size=(3, 2)))


@pytest.mark.parametrize("path", ["ptychodus", "ptycho-train"])
def test_every_path_refuses_channels_that_do_not_fill_the_grid_naming_its_fix(path):
    fix = {"ptychodus": "set Num Channels to 4", "ptycho-train": "set C to 4 or leave it out"}[path]
    with pytest.raises(ValueError, match=rf"C=9 does not match grid_size=\(2, 2\): a group holds .* = 4 patterns; {fix}"):
        GRID_CHECKS[path][0](DataConfig(N=N64, C=9, grid_size=(2, 2)))


@pytest.mark.parametrize("grid_size", [2, (2,), (2, 2, 2), ("two", "two")])
def test_a_malformed_grid_is_a_value_error_naming_the_field_on_the_ptychodus_path(grid_size):
    # it was a bare "cannot unpack" TypeError from the Ptychodus data loader
    with pytest.raises(ValueError, match=r"DataConfig\.grid_size must be a \(y, x\) pair"):
        _ptychodus_check(DataConfig(N=N64, grid_size=grid_size))


@pytest.mark.parametrize(("name", "value"), REFUSED)
def test_a_setting_the_pipeline_cannot_honour_is_refused_by_name(name, value):
    data = DataConfig(N=N64, **{name: value})
    with pytest.raises(ValueError, match=rf"DataConfig\.{name}={value!r}".replace("(", r"\(").replace(")", r"\)") + " has no effect here"):
        to_ptycho_config(EMBEDDED, data, ModelConfig(), TrainingConfig(n_groups=10))


def test_ptychodus_defaults_and_json_lists_pass_the_checks():
    check_data_config(DataConfig())
    check_data_config(DataConfig(x_bounds=[0.1, 0.9], y_bounds=[0.1, 0.9], normalize="Group", C=9, grid_size=(3, 3)))


def test_settings_left_to_the_model_reach_the_ptycho_config():
    data = DataConfig(N=N64, probe_scale=4.0, nphotons=1e7)
    config = to_ptycho_config(EMBEDDED, data, ModelConfig(), TrainingConfig(n_groups=10))
    assert (config.model.probe_scale, config.nphotons) == (4.0, 1e7)


def test_readme_default_configs_build_a_dataset_without_any_warning(tmp_path, caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            data = dataset(*readme_configs(), data_dir=tmp_path)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert len(data) == 200 and params.cfg["nphotons"] == DataConfig().nphotons
    np.testing.assert_array_equal(data[list(range(200))][0]["nn_indices"].numpy(), baseline_grouped()["nn_indices"])


def test_the_bridge_still_demands_a_photon_count_for_a_training_config():
    data, model, training = readme_configs()
    with pytest.raises(ValueError, match="nphotons"):
        to_training_config(to_model_config(data, model), data, model, TrainingConfig(train_data_file="t.npz", n_groups=10))


def test_n_groups_is_per_scan_file(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a.npz", "b.npz"):
        shutil.copyfile(EMBEDDED, scans / name)
    data, model, _ = readme_configs()
    both = dataset(data, model, TrainingConfig(n_groups=50), path=scans, data_dir=tmp_path / "memmap")
    assert len(both) == 100
    assert np.bincount(both[list(range(100))][0]["experiment_id"].numpy()).tolist() == [50, 50]


def _energy_of_groups(nn):
    diffraction = embedded_arrays()["diffraction"].astype(np.float64)
    return np.sum(diffraction**2, axis=(2, 3) if diffraction.ndim == 4 else (1, 2))[nn]


def test_group_normalisation_scales_each_group_by_its_own_parseval_factor(tmp_path):
    batch_data = dataset(*readme_configs(), data_dir=tmp_path)
    group_data = dataset(*readme_configs(normalize="Group"), data_dir=tmp_path)
    assert not group_data.regrouped  # normalisation is not part of the groups cache
    rows = list(range(200))
    (by_batch, _, batch_scale), (by_group, probe, group_scale) = batch_data[rows], group_data[rows]
    nn = by_group["nn_indices"].numpy()
    expected_scale = np.sqrt((N64 / 2) ** 2 / _energy_of_groups(nn).mean(axis=1))
    assert tuple(group_scale.shape) == (200, 1, 1, 1)
    group_scale = group_scale.reshape(-1)
    np.testing.assert_allclose(group_scale.numpy(), expected_scale, rtol=1e-6)
    assert np.ptp(group_scale.numpy()) > 0.01 * group_scale.numpy().mean()  # really per group
    np.testing.assert_array_equal(by_group["rms_scaling_constant"].reshape(-1).numpy(), group_scale.numpy())
    raw = embedded_arrays()["diffraction"][nn]
    np.testing.assert_allclose(by_group["images"].numpy(), raw * expected_scale[:, None, None, None].astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(by_batch["images"].numpy(), raw * batch_scale.numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.sum(by_group["images"].numpy().astype(np.float64) ** 2, axis=(2, 3)).mean(axis=1), (N64 / 2) ** 2, rtol=1e-5)
    single, single_probe, single_scale = group_data[7]
    np.testing.assert_allclose(single["images"].numpy(), by_group["images"][7].numpy())
    assert float(single_scale) == pytest.approx(expected_scale[7], rel=1e-6) and tuple(probe.shape) == (200, 4, 1, N64, N64)


@pytest.mark.parametrize(("mode", "per_group"), [("Unsupervised", False), ("Supervised", True)])
def test_group_normalisation_of_single_patterns_follows_upstream(mode, per_group):
    assert PipelineSettings("Group", mode).per_group(C=1) is per_group
    assert PipelineSettings("Group", mode).per_group(C=4) is True
    assert PipelineSettings("Batch", mode).per_group(C=4) is False


def test_memmap_bridge_refuses_group_normalisation_it_cannot_apply(tmp_path):
    data, model, training = readme_configs(normalize="Group")
    with pytest.raises(ValueError, match=r"DataConfig\.normalize='Group' has no effect on MemmapDatasetBridge"):
        MemmapDatasetBridge(EMBEDDED, (data, model, training), tmp_path, progress=False)
