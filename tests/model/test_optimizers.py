"""The optimizer, scheduler, clipping and device settings of TrainingConfig take effect (issue 28)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensordict")
pytest.importorskip("lightning")

from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig  # noqa: E402
from ptycho_torch.model import PtychoPINN_Lightning  # noqa: E402
from ptycho_torch.model.training import PtychoDataModule, build_trainer, choose_accelerator  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NPZ = ROOT / "datasets" / "sim_small.npz"
DATA = DataConfig(N=64, grid_size=(2, 2), K=7, nphotons=1e6, subsample_seed=42)
MODEL = ModelConfig(n_filters_scale=1, cbam_encoder=False, use_shared_decoder=True)
TRAINING = TrainingConfig(n_groups=16, epochs=1, batch_size=8, device="cpu", num_workers=0)


def optimizer_of(**training):
    configured = PtychoPINN_Lightning(MODEL, DATA, replace(TRAINING, **training), InferenceConfig()).configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


def test_adam_takes_betas_and_weight_decay_from_the_config():
    optimizer = optimizer_of(adam_beta1=0.5, adam_beta2=0.99, weight_decay=0.01, learning_rate=2e-3)
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.Adam
    assert group["betas"] == (0.5, 0.99) and group["weight_decay"] == 0.01 and group["lr"] == 2e-3


def test_adamw_is_adamw_with_its_weight_decay():
    optimizer = optimizer_of(optimizer="adamw", weight_decay=0.05)
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["weight_decay"] == 0.05


def test_sgd_is_sgd_with_its_momentum():
    optimizer = optimizer_of(optimizer="sgd", momentum=0.5)
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["momentum"] == 0.5


def test_an_unknown_optimizer_is_refused_by_name():
    with pytest.raises(ValueError, match=r"TrainingConfig.optimizer='lbfgs'.*adam"):
        optimizer_of(optimizer="lbfgs")


def test_the_exponential_schedule_decays_by_gamma_each_epoch():
    from ptycho_torch.model.optimizers import EXPONENTIAL_GAMMA

    configured = PtychoPINN_Lightning(MODEL, DATA, replace(TRAINING, scheduler="Exponential"), InferenceConfig()).configure_optimizers()
    assert configured["lr_scheduler"]["scheduler"].gamma == EXPONENTIAL_GAMMA == 0.95


def test_the_saved_optimizer_state_after_a_fit_is_the_configured_one(tmp_path):
    training = replace(TRAINING, optimizer="sgd", momentum=0.5, weight_decay=0.01)
    model = PtychoPINN_Lightning(MODEL, DATA, training, InferenceConfig())
    trainer = build_trainer(training, tmp_path / "run", progress=False)
    trainer.fit(model, datamodule=PtychoDataModule(NPZ, DATA, MODEL, training, data_dir=tmp_path / "memmap", progress=False))
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]["param_groups"][0]
    assert saved["momentum"] == 0.5 and saved["weight_decay"] == 0.01 and "betas" not in saved


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_the_clipping_algorithm_reaches_the_trainer(tmp_path, algorithm):
    trainer = build_trainer(replace(TRAINING, gradient_clip_val=0.5, gradient_clip_algorithm=algorithm), tmp_path)
    assert trainer.gradient_clip_val == 0.5 and trainer.gradient_clip_algorithm == algorithm


def test_agc_clipping_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"TrainingConfig.gradient_clip_algorithm='agc'.*'norm' or 'value'"):
        build_trainer(replace(TRAINING, gradient_clip_val=0.5, gradient_clip_algorithm="agc"), tmp_path)


def test_the_default_device_is_auto_and_silent_without_cuda(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrainingConfig().device == "auto"
    with caplog.at_level(logging.DEBUG, logger="ptycho_torch.model.training"):
        assert choose_accelerator(TrainingConfig()) == ("cpu", 1)
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="ptycho_torch.model.training"):
        assert choose_accelerator(TrainingConfig(device="cuda")) == ("cpu", 1)
    assert [record.getMessage() for record in caplog.records] == [
        "TrainingConfig.device='cuda' but no CUDA device is available: training on the CPU"]


def test_an_unknown_device_is_refused_by_name():
    with pytest.raises(ValueError, match=r"TrainingConfig.device='tpu' is not a device; use one of"):
        choose_accelerator(TrainingConfig(device="tpu"))
