"""What each ``DataConfig`` setting does in the data pipeline: used, left to the model, or refused."""

from __future__ import annotations

from dataclasses import dataclass

from ptycho_torch.config_params import DataConfig, ModelConfig
from ptycho_torch.config_support import require_supported

__all__ = ["PipelineSettings", "check_data_config", "pipeline_settings"]

NORMALIZE_MODES = ("Batch", "Group")


@dataclass(frozen=True)
class PipelineSettings:
    """The ``DataConfig`` choices that change a batch beyond the grouping key."""

    normalize: str = "Batch"
    mode: str = "Unsupervised"

    def per_group(self, C: int) -> bool:
        """Whether each group gets its own scale: 'Group', except for single patterns outside supervised mode (as upstream)."""
        return self.normalize == "Group" and (C > 1 or self.mode == "Supervised")


def check_data_config(data: DataConfig) -> None:
    """Refuse settings this pipeline cannot honour, naming the field (``config_support.DEFAULT_ONLY``); consistent settings pass."""
    _check_channels(data)
    if data.normalize not in NORMALIZE_MODES:
        raise ValueError(
            f"DataConfig.normalize={data.normalize!r} has no effect here: the dataset normalises per experiment "
            "('Batch') or per group ('Group'); use one of those"
        )
    require_supported(data)


def pipeline_settings(data: DataConfig | None, model: ModelConfig | None) -> PipelineSettings:
    """The batch-shaping settings of checked torch configs (defaults for a ``ptycho`` config)."""
    if data is None:
        return PipelineSettings(mode=model.mode if model is not None else "Unsupervised")
    return PipelineSettings(normalize=data.normalize, mode=model.mode if model is not None else "Unsupervised")


def _check_channels(data: DataConfig) -> None:
    try:
        rows, cols = (int(size) for size in data.grid_size)
    except (TypeError, ValueError):
        return  # the config bridge explains a malformed grid_size
    if data.C != rows * cols:
        raise ValueError(
            f"DataConfig.C={data.C} does not match grid_size={tuple(data.grid_size)}: a group holds "
            f"grid_size[0] * grid_size[1] = {rows * cols} patterns; set C={rows * cols} or change grid_size"
        )
