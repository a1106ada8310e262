"""A fit computes each group's physics input once and reads it in later epochs: same weights, less work."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402
from ptycho_torch.model import PtychoPINN_Lightning  # noqa: E402
from ptycho_torch.model.training import PtychoDataModule, build_trainer  # noqa: E402

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
    with caplog.at_level(logging.INFO, logger="ptycho_torch.model.lightning_module"):
        partial, computed, groups = fit(dataset, tmp_path / "partial", 12 * row_bytes)
    plain, _, _ = fit(dataset, tmp_path / "plain", 0)
    assert computed == EPOCHS * groups - 12  # the first epoch computes every group, the second all but the 12 kept
    assert same_weights(partial, plain)
    full = [r.getMessage() for r in caplog.records if "fill input_cache_bytes" in r.getMessage()]
    assert full == [f"the physics inputs of 12 groups fill input_cache_bytes={12 * row_bytes}; the other groups' are recomputed in every epoch"]


@pytest.mark.parametrize("value", [-1, 1.5, "1GB", True])
def test_a_budget_that_is_not_a_byte_count_is_refused_by_name(dataset, tmp_path, value):
    with pytest.raises(ValueError, match="input_cache_bytes"):
        fit(dataset, tmp_path / "bad", value)
