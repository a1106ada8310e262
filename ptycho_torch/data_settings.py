"""What each ``DataConfig`` setting does in the data pipeline: used, left to the model, or refused."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ptycho_torch.config_params import DataConfig, ModelConfig

__all__ = ["PipelineSettings", "check_data_config", "pipeline_settings"]

NORMALIZE_MODES = ("Batch", "Group")

# field -> (the one value accepted, what the dataset does instead); any other value has no effect here
_ONLY_VALUE: dict[str, tuple[Any, str]] = {
    "neighbor_function": (
        "Nearest",
        "groups are PtychoPINN's K-nearest-neighbour groups of ptycho.grouping (set K and n_groups)",
    ),
    "data_scaling": (
        "Parseval",
        "patterns are scaled by PtychoPINN's Parseval factor sqrt((N/2)**2 / mean sum(d**2)) (see normalize)",
    ),
    "n_subsample": (
        7,
        "the number of groups is TrainingConfig.n_groups, per scan file (None: 512, ptycho's default)",
    ),
    "x_bounds": ((0.1, 0.9), "every scan point may seed a group, as in PtychoPINN's grouping"),
    "y_bounds": ((0.1, 0.9), "every scan point may seed a group, as in PtychoPINN's grouping"),
    "probe_ramp_removal": (False, "the batch probe is the probe stored in the scan file (mode 0)"),
}


@dataclass(frozen=True)
class PipelineSettings:
    """The ``DataConfig`` choices that change a batch beyond the grouping key."""

    normalize: str = "Batch"
    mode: str = "Unsupervised"

    def per_group(self, C: int) -> bool:
        """Whether each group gets its own scale: 'Group', except for single patterns outside supervised mode (as upstream)."""
        return self.normalize == "Group" and (C > 1 or self.mode == "Supervised")


def check_data_config(data: DataConfig) -> None:
    """Refuse settings this pipeline cannot honour, naming the field; consistent settings pass."""
    _check_channels(data)
    if data.normalize not in NORMALIZE_MODES:
        raise ValueError(
            f"DataConfig.normalize={data.normalize!r} has no effect here: the dataset normalises per experiment "
            "('Batch') or per group ('Group'); use one of those"
        )
    for name, (accepted, instead) in _ONLY_VALUE.items():
        value = getattr(data, name)
        if not _same(value, accepted):
            raise ValueError(
                f"DataConfig.{name}={value!r} has no effect here: {instead}; leave it at {accepted!r}"
            )


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


def _same(value: Any, accepted: Any) -> bool:
    if isinstance(accepted, tuple):
        try:
            return len(value) == len(accepted) and all(math.isclose(float(v), a, abs_tol=1e-12) for v, a in zip(value, accepted))
        except (TypeError, ValueError):
            return False
    if isinstance(accepted, bool) or isinstance(accepted, str):
        return value == accepted and type(value) is type(accepted)
    return value == accepted
