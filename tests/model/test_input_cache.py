"""A fit computes each group's physics input once and reads it in later epochs: same weights, less work."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")

from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402
from ptycho_torch.model import PtychoPINN_Lightning  # noqa: E402
from ptycho_torch.model.input_cache import InputCache  # noqa: E402
from ptycho_torch.model.training import PtychoDataModule, build_trainer  # noqa: E402
from ptycho_torch.tensordict_loader import TensorDictDataLoader  # noqa: E402

NPZ = Path(__file__).resolve().parents[2] / "datasets" / "sim_small.npz"
EPOCHS = 2


def configs():
    data = DataConfig(N=64, grid_size=(2, 2), K=7, nphotons=1e6, subsample_seed=42)
    model = ModelConfig(n_filters_scale=1, base_filters=8, object_big=True, cbam_encoder=False, use_shared_decoder=True)
    training = TrainingConfig(n_groups=40, epochs=EPOCHS, batch_size=8, learning_rate=2e-3, device="cpu", num_workers=0,
                              train_data_file=str(NPZ), test_data_file=str(NPZ))
    return data, model, training, InferenceConfig(batch_size=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data, model, training, _ = configs()
    return PtychoDataset(NPZ, data, model, training, data_dir=tmp_path_factory.mktemp("memmap"), progress=False)


@pytest.fixture(scope="module")
def other_scan(tmp_path_factory):
    """The embedded scan's positions and probe with every pattern mirrored: the same groups, other data."""
    with np.load(NPZ, allow_pickle=False) as scan:
        arrays = {key: scan[key] for key in scan.files}
    arrays["diffraction"] = np.ascontiguousarray(arrays["diffraction"][:, :, ::-1])
    path = tmp_path_factory.mktemp("other") / "mirrored.npz"
    np.savez(path, **arrays)
    data, model, training, _ = configs()
    return PtychoDataset(path, data, model, training, data_dir=tmp_path_factory.mktemp("memmap-other"), progress=False)


def fit(dataset, run_dir: Path, cache_bytes: int):
    """Fits a fresh model with ``input_cache_bytes`` set; returns it, the groups whose physics input was computed, and the groups fitted."""
    data, model_config, training, inference = configs()
    model = PtychoPINN_Lightning(model_config, data, training, inference, seed=0)
    model.input_cache_bytes = cache_bytes
    computed = [0]
    original = model.network.generator_input

    def counting(batch, *args, **kwargs):
        computed[0] += int(batch["images"].shape[0])
        return original(batch, *args, **kwargs)

    model.network.generator_input = counting
    module = PtychoDataModule(dataset, data, model_config, training)
    build_trainer(training, run_dir, progress=False).fit(model, datamodule=module)
    return model, computed[0], len(module.train_indices) + len(module.val_indices)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_each_groups_physics_input_is_computed_once_per_fit_and_the_weights_are_the_same_bits(dataset, tmp_path):
    cached, computed_cached, groups = fit(dataset, tmp_path / "cached", 2**30)
    plain, computed_plain, _ = fit(dataset, tmp_path / "plain", 0)
    assert computed_plain == EPOCHS * groups
    assert computed_cached == groups  # the first epoch's training and validation batches only
    assert same_weights(cached, plain)
    assert cached._input_cache is None  # released when the fit ends


def test_groups_beyond_the_budget_are_recomputed_and_the_weights_stay_the_same(dataset, tmp_path, caplog):
    row_bytes = 2 * 4 * 64 * 64 * 4  # [Re, Im] of 4 members, float32
    with caplog.at_level(logging.INFO, logger="ptycho_torch.model.input_cache"):
        partial, computed, groups = fit(dataset, tmp_path / "partial", 12 * row_bytes)
    plain, _, _ = fit(dataset, tmp_path / "plain", 0)
    assert computed == EPOCHS * groups - 12  # the first epoch computes every group, the second all but the 12 kept
    assert same_weights(partial, plain)
    full = [r.getMessage() for r in caplog.records if "fill input_cache_bytes" in r.getMessage()]
    assert full == [f"the physics inputs of 12 groups fill input_cache_bytes={12 * row_bytes}; the other groups' are recomputed in every epoch"]


@pytest.mark.parametrize("value", [-1, 1.5, "1GB", True, None])
def test_a_budget_that_is_not_a_byte_count_is_refused_by_name_when_set(value):
    data, model_config, training, inference = configs()
    model = PtychoPINN_Lightning(model_config, data, training, inference)
    with pytest.raises(ValueError, match=r"input_cache_bytes=.* must be a whole number of bytes >= 0"):
        model.input_cache_bytes = value
    model.input_cache_bytes = np.int64(2**20)  # any integer type
    assert model.input_cache_bytes == 2**20 and type(model.input_cache_bytes) is int


def loader(dataset, shuffle: bool = False):
    return TensorDictDataLoader(dataset, batch_size=8, shuffle=shuffle, generator=torch.Generator().manual_seed(1))


def fit_with_loaders(train, val, cache_bytes: int, tmp_path: Path, sanity_steps: int = 2):
    data, model_config, training, inference = configs()
    model = PtychoPINN_Lightning(model_config, data, training, inference, seed=0)
    model.input_cache_bytes = cache_bytes
    trainer = L.Trainer(accelerator="cpu", max_epochs=EPOCHS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=sanity_steps, default_root_dir=tmp_path)
    trainer.fit(model, loader(train, shuffle=True), loader(val))
    return model, float(trainer.callback_metrics["val_loss"])


def test_groups_of_two_scans_with_the_same_positions_never_read_each_others_inputs(dataset, other_scan, tmp_path):
    cached, cached_loss = fit_with_loaders(dataset, other_scan, 2**30, tmp_path)
    plain, plain_loss = fit_with_loaders(dataset, other_scan, 0, tmp_path)
    assert same_weights(cached, plain)
    assert cached_loss == plain_loss


class Boom(Exception):
    pass


def test_a_fit_that_raises_releases_the_inputs_it_kept(dataset, tmp_path):
    data, model_config, training, inference = configs()
    model = PtychoPINN_Lightning(model_config, data, training, inference, seed=0)

    class RaiseAfterTheFirstEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            assert pl_module._input_cache.rows  # the first epoch kept its inputs
            raise Boom

    trainer = L.Trainer(accelerator="cpu", max_epochs=EPOCHS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[RaiseAfterTheFirstEpoch()], default_root_dir=tmp_path)
    with pytest.raises(Boom):
        trainer.fit(model, loader(dataset, shuffle=True))
    assert model._input_cache is None


def test_kept_inputs_are_never_read_outside_a_fit(dataset):
    data, model_config, training, inference = configs()
    model = PtychoPINN_Lightning(model_config, data, training, inference, seed=0)
    batch = dataset[np.arange(8)]
    with torch.no_grad():
        expected = float(model.loss_of(batch))
        td, probe, scale = batch
        poisoned = InputCache(2**30)
        poisoned.put(poisoned.keys_of(td, probe, scale.reshape(-1)), torch.zeros(8, 8, 64, 64))
        model._input_cache = poisoned  # as a fit that died without Lightning's hooks would leave it
        assert float(model.loss_of(batch)) == expected
    assert model._input_cache is None


def test_the_fit_logs_what_it_kept(dataset, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ptycho_torch.model.lightning_module"):
        _, _, groups = fit(dataset, tmp_path / "logged", 2**30)
    kept = [r.getMessage() for r in caplog.records if "computed once and kept" in r.getMessage()]
    assert kept == [f"{groups} groups' physics inputs were computed once and kept ({groups * 2 * 4 * 64 * 64 * 4 / 2**20:.1f} MiB of input_cache_bytes)"]


@pytest.mark.parametrize("physical_bytes, expected", [(4 * 2**30, 512 * 2**20), (64 * 2**30, 2 * 2**30)])
def test_the_default_budget_is_2_gib_or_an_eighth_of_the_machines_memory(monkeypatch, physical_bytes, expected):
    import os

    from ptycho_torch.model import input_cache

    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": physical_bytes // 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    data, model_config, training, inference = configs()
    assert input_cache.default_budget() == expected
    assert PtychoPINN_Lightning(model_config, data, training, inference).input_cache_bytes == expected
