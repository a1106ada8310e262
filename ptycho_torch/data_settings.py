"""The narrow, frozen settings the data pipeline consumes, made from resolved configs (torch-free).

:class:`ptycho_torch.store.groups_cache.GroupingKey` (:func:`grouping_key`): the grouping a ``ptycho``
config asks for; :class:`PipelineSettings` (:func:`pipeline_settings`): the ``DataConfig`` choices that
change a batch beyond it. The checks that precede them are :mod:`ptycho_torch.config_resolve`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptycho.grouping import GroupingSettings
from ptycho_torch.config_params import DataConfig, ModelConfig
from ptycho_torch.config_resolve import PtychoConfig
from ptycho_torch.store.groups_cache import GroupingKey

__all__ = ["PipelineSettings", "grouping_key", "pipeline_settings"]


@dataclass(frozen=True)
class PipelineSettings:
    """The ``DataConfig`` choices that change a batch beyond the grouping key."""

    normalize: str = "Batch"
    mode: str = "Unsupervised"

    def per_group(self, C: int) -> bool:
        """Whether each group gets its own scale: 'Group', except for single patterns outside supervised mode (as upstream)."""
        return self.normalize == "Group" and (C > 1 or self.mode == "Supervised")


def pipeline_settings(data: DataConfig | None, model: ModelConfig | None) -> PipelineSettings:
    """The batch-shaping settings of checked torch configs (defaults for a ``ptycho`` config)."""
    if data is None:
        return PipelineSettings(mode=model.mode if model is not None else "Unsupervised")
    return PipelineSettings(normalize=data.normalize, mode=model.mode if model is not None else "Unsupervised")


def grouping_key(config: PtychoConfig) -> GroupingKey:
    """The grouping a config asks for; ``n_groups=None`` (inference) means one group per scan point."""
    return GroupingKey(
        N=int(config.model.N),
        settings=GroupingSettings(
            gridsize=int(config.model.gridsize),
            K=int(config.neighbor_count),
            nsamples=None if config.n_groups is None else int(config.n_groups),
            seed=None if config.subsample_seed is None else int(config.subsample_seed),
            sequential_sampling=bool(config.sequential_sampling),
            enable_oversampling=bool(config.enable_oversampling),
            neighbor_pool_size=None if config.neighbor_pool_size is None else int(config.neighbor_pool_size),
        ),
    )
