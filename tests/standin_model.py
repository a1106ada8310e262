"""A tiny stand-in for the shipped model (``ptycho_torch/pretrained``): same architecture, random weights, written in seconds."""

from __future__ import annotations

from pathlib import Path

STANDIN_SEED = 123  # not the CLI's default --seed 0, so its weights differ from a fresh network's


def standin_network(N: int = 64, seed: int = STANDIN_SEED):
    from ptycho_torch.config_params import DataConfig, ModelConfig
    from ptycho_torch.model.pinn import PtychoPINN

    model = ModelConfig(n_filters_scale=1, base_filters=16, cbam_encoder=False, use_shared_decoder=True, batch_norm=True, truth_loss_weight=0.0)
    return PtychoPINN(model, DataConfig(N=N, grid_size=(2, 2), K=7), seed=seed)


def write_standin(path: Path, N: int = 64, seed: int = STANDIN_SEED) -> Path:
    """Write the stand-in checkpoint as the shipped one is written: weights and configs only."""
    import torch

    network = standin_network(N, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": network.state_dict(), "hyper_parameters": {**network.configs(), "seed": seed}}, path)
    return path


def ship_standin(monkeypatch, directory: Path) -> Path:
    """Make the stand-in the shipped model ``pretrained`` (``ptycho_torch.pretrained.MODELS_DIR`` -> ``directory``)."""
    import ptycho_torch.pretrained as pretrained

    path = write_standin(directory / pretrained.SHIPPED["pretrained"][0])
    monkeypatch.setattr(pretrained, "MODELS_DIR", directory)
    return path
