"""PyTorch side of PtychoPINN's data pipeline: bridges, memory map, grouping cache, dataset."""

import importlib
import logging

from ptycho_torch.torch_support import TORCH_AVAILABLE

logging.getLogger(__name__).addHandler(logging.NullHandler())

_PUBLIC = {
    "DataConfig": "ptycho_torch.config_params",
    "ModelConfig": "ptycho_torch.config_params",
    "TrainingConfig": "ptycho_torch.config_params",
    "InferenceConfig": "ptycho_torch.config_params",
    "DatagenConfig": "ptycho_torch.config_params",
    "to_model_config": "ptycho_torch.config_resolve",
    "to_training_config": "ptycho_torch.config_resolve",
    "to_inference_config": "ptycho_torch.config_resolve",
    "RawDataTorch": "ptycho_torch.raw_data_bridge",
    "PtychoDataContainerTorch": "ptycho_torch.data_container_bridge",
    "MemmapDatasetBridge": "ptycho_torch.memmap_bridge",
    "npz_headers": "ptycho_torch.dataloader",
    "PtychoDataset": "ptycho_torch.dataloader",
    "TensorDictDataLoader": "ptycho_torch.dataloader",
    "Collate": "ptycho_torch.dataloader",
    "Collate_Lightning": "ptycho_torch.dataloader",
}
"""Public name -> module; imported on first access, so ``import ptycho_torch`` never needs torch."""

__all__ = ["TORCH_AVAILABLE", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
