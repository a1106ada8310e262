"""Named starting settings of ``ptycho-train``, applied under the config file and the options (torch-free)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PRESET", "PRESETS", "Preset", "apply_preset"]


@dataclass(frozen=True)
class Preset:
    """Field values by config section (``model``, ``training``, ...); fields not named keep their dataclass default."""

    name: str
    summary: str
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


PRESETS = {
    preset.name: preset
    for preset in (
        Preset("recommended", "the settings this package recommends and benchmarks (benchmarks/bench_model.py, preset "
               "'default', without its truth term, which a real scan cannot have)", MappingProxyType({
                   "model": MappingProxyType(dict(n_filters_scale=1, base_filters=16, cbam_encoder=False, use_shared_decoder=True,
                                                  batch_norm=True)),
                   "training": MappingProxyType(dict(epochs=10, batch_size=8, learning_rate=2e-3, scheduler="WarmupCosine",
                                                     lr_warmup_epochs=0, lr_min_ratio=0.0)),
               })),
        Preset("ptychopinn", "PtychoPINN's own settings: every field at its ptycho_torch.config_params default"),
    )
}
DEFAULT_PRESET = "recommended"


def apply_preset(name: str, configs: Mapping[str, Any], given: Mapping[str, frozenset[str]]) -> None:
    """Set the preset's fields on ``configs`` (section -> config), except those ``given`` (section -> field names) sets."""
    preset = PRESETS[name]
    applied = []
    for section, values in preset.sections.items():
        for name_, value in values.items():
            if name_ not in given.get(section, frozenset()):
                setattr(configs[section], name_, value)
                applied.append(f"{section}.{name_}={value}")
    logger.info("preset %r: %s", preset.name, ", ".join(applied) or "every field at its default")
