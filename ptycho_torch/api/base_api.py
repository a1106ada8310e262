"""The API Ptychodus's PtychoPINN-Torch plugin drives: configs, data, model, trainer and inference engine."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ptycho_torch.api.configs import ConfigManager
from ptycho_torch.api.data import DataloaderFormats, PtychoDataLoader
from ptycho_torch.config_coerce import as_config
from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_torch.lightning_utils import find_best_checkpoint
from ptycho_torch.run_dirs import discard_failed_run

logger = logging.getLogger(__name__)

__all__ = [
    "ConfigManager",
    "DataloaderFormats",
    "InferenceEngine",
    "PtychoDataLoader",
    "PtychoModel",
    "Trainer",
]

ORCHESTRATION = "lightning"
CPU_INFERENCE_BATCH = 128  # groups per inference batch on the CPU: a few hundred MB at N=64, C=4


class PtychoModel:
    """A network (``.model``, a ``PtychoPINN_Lightning``, or None before one is made or loaded) and its four configs.

    Each config may be given as its dataclass, a dict (e.g. checkpoint hyper-parameters) or None
    (defaults); a value of another type is a TypeError. ``_new_model`` builds a fresh network;
    ``_extract_configs_from_checkpoint`` reads a checkpoint's configs with ``weights_only=True`` on
    the CPU (a missing, empty, foreign or code-carrying file is a ``CheckpointError`` naming it).
    """

    def __init__(self, model_config=None, data_config=None, training_config=None, inference_config=None):
        self.model_config: ModelConfig = as_config(model_config, ModelConfig, unknown="drop")
        self.data_config: DataConfig = as_config(data_config, DataConfig, unknown="drop")
        self.training_config: TrainingConfig = as_config(training_config, TrainingConfig, unknown="drop")
        self.inference_config: InferenceConfig = as_config(inference_config, InferenceConfig, unknown="drop")
        self.model = None

    @classmethod
    def _new_model(cls, model, config_manager: ConfigManager) -> PtychoModel:
        """A freshly initialised network of class ``model`` built from ``config_manager``'s configs."""
        cm = config_manager
        wrapped = cls(model_config=cm.model_config, data_config=cm.data_config, training_config=cm.training_config, inference_config=cm.inference_config)
        wrapped.model = model(cm.model_config, cm.data_config, cm.training_config, cm.inference_config)
        return wrapped

    @staticmethod
    def _extract_configs_from_checkpoint(path):
        """``(data, model, training, inference)`` configs stored in a checkpoint's hyper-parameters (None where absent).

        Read with ``weights_only=True`` on the CPU, so a GPU checkpoint opens anywhere and nothing is unpickled.
        """
        from ptycho_torch.model.checkpoints import read_checkpoint

        hparams = read_checkpoint(Path(path))["hyper_parameters"]
        classes = (("data_config", DataConfig), ("model_config", ModelConfig), ("training_config", TrainingConfig), ("inference_config", InferenceConfig))
        return tuple(as_config(hparams[name], cls, unknown="drop") if hparams.get(name) is not None else None for name, cls in classes)


class Trainer:
    """Trains a :class:`PtychoModel` on a :class:`PtychoDataLoader`; ``._trainer`` is the ``lightning.Trainer``.

    Checkpoints (``checkpoints/best-checkpoint.ckpt``, ``last.ckpt``), ``configs/*.json`` and
    ``metrics.csv`` go to the loader's run directory ``output_dir``. Refused (ValueError): an
    orchestration other than ``'lightning'``, a loader not built as ``'lightning_only_module'``.
    A run that fails or is interrupted re-raises; its directory is removed, or kept marked
    ``INCOMPLETE`` when it holds checkpoints.
    """

    def __init__(self, model: PtychoModel, dataloader: PtychoDataLoader, config_manager: ConfigManager, trainer):
        self.model = model
        self.dataloader = dataloader
        self.config_manager = config_manager
        self._trainer = trainer
        self.best_checkpoint: Path | None = None

    @classmethod
    def _from_lightning(cls, model: PtychoModel, dataloader: PtychoDataLoader, orchestration: str = ORCHESTRATION, config_manager: ConfigManager | None = None) -> Trainer:
        """A Lightning trainer writing checkpoints and configs into ``dataloader.output_dir``."""
        from ptycho_torch.model.training import build_trainer

        _check_orchestration(orchestration)
        if dataloader.data_module is None:
            raise ValueError("training with Lightning needs a PtychoDataLoader built with data_format 'lightning_only_module'")
        config_manager = config_manager or dataloader.config_manager
        trainer = build_trainer(config_manager.training_config, Path(dataloader.output_dir))
        return cls(model, dataloader, config_manager, trainer)

    def train(self, orchestration: str = ORCHESTRATION, experiment_name: str = "") -> Path | None:
        """Fit the model; returns the best checkpoint in the run directory (also kept as ``best_checkpoint``)."""
        _check_orchestration(orchestration)
        run_dir = Path(self.dataloader.output_dir)
        logger.info("training %s in %s", experiment_name or "PtychoPINN", run_dir)
        try:
            self._trainer.fit(self.model.model, datamodule=self.dataloader.data_module)
            if self._trainer.interrupted:
                raise KeyboardInterrupt(f"training in {run_dir} was interrupted")
        except BaseException:
            discard_failed_run(run_dir)
            raise
        self.best_checkpoint = find_best_checkpoint(run_dir)
        logger.info("best checkpoint: %s", self.best_checkpoint)
        return self.best_checkpoint


def _require_same_patterns(dataset, network) -> None:
    """The loader's patterns and groups must be those the network was built for (else it fails deep in a convolution)."""
    N, C = getattr(network, "N", dataset.N), getattr(network, "C", dataset.C)
    if dataset.N != N or dataset.C != C:
        raise ValueError(
            f"the loaded model was trained on groups of {C} patterns of {N} x {N} (data_config N={N}, grid_size {int(C ** 0.5)} x {int(C ** 0.5)}) but the data "
            f"holds groups of {dataset.C} patterns of {dataset.N} x {dataset.N}; build the PtychoDataLoader with the "
            "model's configs (ConfigManager.from_loaded_model), or use a model trained at this size"
        )


def _check_orchestration(orchestration: str) -> None:
    if str(orchestration).lower() != ORCHESTRATION:
        raise ValueError(f"orchestration {orchestration!r} is not supported; use 'lightning' (mlflow is not used by this package)")


class InferenceEngine:
    """Predicts every group of a loader's dataset and stitches the patches into one complex object.

    Refused (ValueError): a :class:`PtychoModel` without a network; configs whose architecture fields
    differ from the network's; loader data whose pattern size ``N`` or group size ``C`` differ from
    those the network was trained on.
    """

    def __init__(self, config_manager: ConfigManager, ptycho_model: PtychoModel):
        if ptycho_model.model is None:
            raise ValueError("the PtychoModel holds no network; load a checkpoint first")
        self.config_manager = config_manager
        self.ptycho_model = ptycho_model

    def predict_and_stitch(self, loader: PtychoDataLoader, *, progress: bool = True) -> np.ndarray:
        """Complex64 ``(H, W)`` object: ``ceil(scan span + N)`` pixels per axis, centred on the scan's bounding box.

        That is the grid of Ptychodus's default object for the same positions, so the result lands
        where the input object was. Runs on the GPU when torch sees one, else on the CPU with at
        most ``CPU_INFERENCE_BATCH`` groups per batch; each group of the loader is predicted once.
        """
        import torch

        from ptycho_torch.model.stitching import reconstruct_object

        self.config_manager.validate_arch_compatibility(self.ptycho_model)
        network = self.ptycho_model.model
        _require_same_patterns(loader.dataset, network)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        network.to(device).eval()
        batch_size = max(1, int(self.config_manager.inference_config.batch_size))
        if device == "cpu" and batch_size > CPU_INFERENCE_BATCH:
            logger.info("inference batch %d capped at %d groups on the CPU to bound memory", batch_size, CPU_INFERENCE_BATCH)
            batch_size = CPU_INFERENCE_BATCH
        with torch.inference_mode():
            result = reconstruct_object(network, loader.dataset, batch_size=batch_size, progress=progress)
        if isinstance(result, torch.Tensor):
            result = result.detach().cpu().numpy()
        return np.asarray(result)
