"""The optimizer and learning-rate scheduler a ``TrainingConfig`` asks for (``PtychoPINN_Lightning.configure_optimizers``)."""

from __future__ import annotations

import math

import torch

from ptycho_torch.config_resolve import lr_schedule

__all__ = ["EXPONENTIAL_GAMMA", "OPTIMIZERS", "build_optimizer", "build_scheduler"]

OPTIMIZERS = ("adam", "adamw", "sgd")
EXPONENTIAL_GAMMA = 0.95
"""Per-epoch factor of ``scheduler='Exponential'``; PtychoPINN's TrainingConfig has no field for it (its value is 0.95 too)."""


def build_optimizer(parameters, training_config) -> torch.optim.Optimizer:
    """``training_config.optimizer`` over ``parameters`` at ``learning_rate``, with ``weight_decay``.

    ``'adam'``/``'adamw'`` use ``betas=(adam_beta1, adam_beta2)``; ``'sgd'`` uses ``momentum``. Any
    other name is a ValueError naming the field.
    """
    tc = training_config
    parameters = [p for p in parameters if p.requires_grad]
    name = str(tc.optimizer).lower()
    common = {"lr": float(tc.learning_rate), "weight_decay": float(tc.weight_decay)}
    if name == "adam":
        return torch.optim.Adam(parameters, betas=(float(tc.adam_beta1), float(tc.adam_beta2)), **common)
    if name == "adamw":
        return torch.optim.AdamW(parameters, betas=(float(tc.adam_beta1), float(tc.adam_beta2)), **common)
    if name == "sgd":
        return torch.optim.SGD(parameters, momentum=float(tc.momentum), **common)
    raise ValueError(f"TrainingConfig.optimizer={tc.optimizer!r} is not available; use one of {list(OPTIMIZERS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, training_config):
    """The per-epoch scheduler of ``training_config.scheduler`` for ``optimizer``, or None for ``'Default'`` (constant rate).

    ``'Exponential'``: the rate times :data:`EXPONENTIAL_GAMMA` each epoch. ``'WarmupCosine'``: linear
    warm-up over ``lr_warmup_epochs`` (or ``warmup_epochs``), then cosine decay to ``lr_min_ratio``
    (or ``min_lr_ratio``) times the rate at ``epochs`` (:func:`ptycho_torch.config_resolve.lr_schedule`).
    """
    tc = training_config
    if tc.scheduler == "Default":
        return None
    if tc.scheduler == "Exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=EXPONENTIAL_GAMMA)
    if tc.scheduler == "WarmupCosine":
        schedule = lr_schedule(tc)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(int(tc.epochs), int(schedule["lr_warmup_epochs"]), float(schedule["lr_min_ratio"])))
    raise ValueError(f"TrainingConfig.scheduler={tc.scheduler!r} is not available; use 'Default', 'WarmupCosine' or 'Exponential'")


def warmup_cosine(epochs: int, warmup: int, min_ratio: float):
    """Learning-rate factor per epoch: linear warm-up, then cosine decay to ``min_ratio``."""

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        progress = (epoch - warmup) / max(1, epochs - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
