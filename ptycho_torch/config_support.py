"""Which torch config fields this package accepts at their default only: the one table, and its check (torch-free).

PtychoPINN's ``config_params`` dataclasses carry fields of models, grouping and training stages this
package does not have. Each is accepted at its dataclass default (so PtychoPINN and Ptychodus configs
load) and refused at any other value, where configs are resolved: ``ptycho-train``, the
``PtychoPINN_Lightning`` constructor, ``PtychoDataset`` (``DataConfig``) and the Ptychodus API's
``ConfigManager``. A field honoured only together with another setting (``momentum`` with
``optimizer='sgd'``) is refused when that setting is not in effect. The accepted value is always the
field's dataclass default; the table holds only the names (``fnmatch`` patterns over the dataclass
fields) and what runs instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from typing import Any

from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig

__all__ = ["DEFAULT_ONLY", "Unsupported", "default_only_fields", "require_supported", "unsupported_settings"]

Honoured = Callable[[Any], bool]  # given the whole config: whether the field is in effect (then any value is fine)


@dataclass(frozen=True)
class Rule:
    """Fields (an ``fnmatch`` pattern) accepted at their default only, what runs instead, and when they are honoured after all."""

    pattern: str
    instead: str
    honoured_when: Honoured | None = None


_OTHER_GENERATORS = "only PtychoPINN's other generator architectures read it; this package's generator is the U-Net (architecture='cnn')"
_STITCHING = "ptycho-reconstruct and the Ptychodus InferenceEngine stitch every patch whole, weighted by the probe (specs/model.md)"
_STAGES = "this package trains in one stage at training.learning_rate (no fine-tuning stages)"
_LOSS = "the loss is model.loss_function ('Poisson' or 'MAE') plus truth_loss_weight times the error against ground truth"
_REGION = "the merged group region is sized from each batch's offsets (specs/model.md section 4)"

DEFAULT_ONLY: dict[type, tuple[Rule, ...]] = {
    DataConfig: (
        Rule("neighbor_function", "groups are PtychoPINN's K-nearest-neighbour groups of ptycho.grouping (set K and n_groups)"),
        Rule("K_quadrant", "groups are PtychoPINN's K-nearest-neighbour groups (neighbor_function 'Nearest'; set K)"),
        Rule("*_neighbor_distance", "groups are PtychoPINN's K-nearest-neighbour groups (set K)"),
        Rule("data_scaling", "patterns are scaled by PtychoPINN's Parseval factor sqrt((N/2)**2 / mean sum(d**2)) (see normalize)"),
        Rule("n_subsample", "the number of groups is TrainingConfig.n_groups, per scan file (None: 512, ptycho's default)"),
        Rule("?_bounds", "every scan point may seed a group, as in PtychoPINN's grouping"),
        Rule("scan_pattern", "the scan positions are read from the scan file"),
        Rule("probe_ramp_removal", "the batch probe is the probe stored in the scan file (mode 0)"),
        Rule("probe_normalize", "the model scales the probe to unit peak itself, whatever its stored scale (specs/model.md section 3)"),
        Rule("probe_scale", "the model scales the probe to unit peak itself, whatever its stored scale (specs/model.md section 3)"),
        Rule("phase_subtraction", "the object's absolute phase is left free (it is arbitrary)"),
    ),
    ModelConfig: (
        Rule("fno_*", _OTHER_GENERATORS),
        Rule("hybrid_*", _OTHER_GENERATORS),
        Rule("spectral_*", _OTHER_GENERATORS),
        Rule("learned_input_channels", _OTHER_GENERATORS),
        Rule("max_hidden_channels", _OTHER_GENERATORS),
        Rule("resnet_width", _OTHER_GENERATORS),
        Rule("generator_output_mode", "the U-Net outputs amplitude and phase (generator_output says whether as the object or its correction)"),
        Rule("decoder_last_c_outer_fraction", "the U-Net has no split last decoder layer"),
        Rule("decoder_spatial_kernel", "the U-Net has no spatial decoder attention (spatial_decoder)"),
        Rule("num_datasets", "each experiment's count scale comes from its data"),
        Rule("intensity_scale", "the count scale comes from the data (specs/model.md section 3); intensity_scale_trainable adds a learned gain"),
        Rule("max_position_jitter", _REGION),
        Rule("edge_pad", _REGION),
        Rule("offset", _REGION),
        Rule("probe_big", "the probe is the scan's, used at full size"),
        Rule("pad_object", _REGION),
        Rule("gaussian_smoothing_sigma", "the predicted object is not smoothed"),
        Rule("probe_mask*", "the probe is not masked"),
        Rule("amp_loss*", _LOSS),
        Rule("phase_loss*", _LOSS),
        Rule("probe_reference_coeff", _LOSS),
        Rule("amplitude_variance_*", _LOSS),
    ),
    TrainingConfig: (
        Rule("training_directories", "ptycho-train trains on its DATA argument, Ptychodus on its training directory"),
        Rule("nll", _LOSS),
        Rule("framework", "this package trains with Lightning"),
        Rule("epochs_fine_tune", _STAGES),
        Rule("fine_tune_gamma", _STAGES),
        Rule("stage_*", _STAGES),
        Rule("physics_weight_schedule", _STAGES),
        Rule("enable_staged_finetuning", _STAGES),
        Rule("finetune_*", _STAGES),
        Rule("plateau_*", "scheduler 'ReduceLROnPlateau' is not available; schedulers are 'Default', 'WarmupCosine' and 'Exponential'"),
        Rule("*warmup_epochs", "only scheduler='WarmupCosine' reads it", lambda c: c.scheduler == "WarmupCosine"),
        Rule("*min*_ratio", "only scheduler='WarmupCosine' reads it", lambda c: c.scheduler == "WarmupCosine"),
        Rule("momentum", "only optimizer='sgd' reads it", lambda c: c.optimizer == "sgd"),
        Rule("adam_beta?", "only optimizer='adam' or 'adamw' reads it", lambda c: c.optimizer in ("adam", "adamw")),
        Rule("gradient_clip_algorithm", "gradients are clipped only when gradient_clip_val is set", lambda c: bool(c.gradient_clip_val)),
        Rule("log_grad_norm", "gradient norms are not logged; metrics.csv holds the losses per epoch"),
        Rule("grad_norm_log_freq", "gradient norms are not logged; metrics.csv holds the losses per epoch"),
        Rule("torch_loss_mode", _LOSS),
        Rule("torch_mae_pred_l2_match_target", _LOSS),
    ),
    InferenceConfig: (
        Rule("middle_trim", _STITCHING),
        Rule("experiment_number", _STITCHING),
        Rule("patch_weighting", _STITCHING),
        Rule("pad_eval", _STITCHING),
        Rule("window", _STITCHING),
        Rule("*patch_stats*", _STITCHING),
    ),
}

# Ptychodus 1.7.0 sets these ModelConfig fields to DataConfig.C; the U-Net's channels follow C, so C is accepted too.
FOLLOW_C = ("C_model", "C_forward", "decoder_last_amp_channels")


@dataclass(frozen=True)
class Unsupported:
    """A field set to a value this package cannot honour: the config, the field, its value and default, and what runs instead."""

    config: str
    field: str
    value: Any
    default: Any
    instead: str

    def message(self, where: str | None = None) -> str:
        """``<where>.<field>=<value> has no effect here: <instead>; leave it at <default>`` (``where`` defaults to the class name)."""
        return f"{where or self.config}.{self.field}={_shown(self.value)} has no effect here: {self.instead}; leave it at {self.default!r} or remove it"


def default_only_fields(config_type: type) -> dict[str, Rule]:
    """The fields of ``config_type`` accepted at their default only, each with its rule (every pattern names a field)."""
    names = [f.name for f in fields(config_type)]
    found: dict[str, Rule] = {}
    for rule in DEFAULT_ONLY.get(config_type, ()):
        for name in names:
            if fnmatchcase(name, rule.pattern):
                found.setdefault(name, rule)
    return found


def unsupported_settings(config: Any, data: DataConfig | None = None, honoured: Collection[str] = ()) -> list[Unsupported]:
    """Every field of ``config`` (a torch config dataclass) set to a value this package does not honour.

    ``data``: the DataConfig beside a ModelConfig, whose ``C`` the fields ``FOLLOW_C`` may equal.
    ``honoured``: fields the caller's path does honour (the Ptychodus API counts groups with ``n_subsample``).
    """
    config_type = type(config)
    defaults = config_type()
    found = []
    for name, rule in default_only_fields(config_type).items():
        if name in honoured:
            continue
        value, default = getattr(config, name), getattr(defaults, name)
        if _same(value, default) or (rule.honoured_when is not None and rule.honoured_when(config)):
            continue
        found.append(Unsupported(config_type.__name__, name, value, default, rule.instead))
    if isinstance(config, ModelConfig):
        channels = {getattr(defaults, name) for name in FOLLOW_C} | ({data.C} if data is not None else set())
        for name in FOLLOW_C:
            if getattr(config, name) not in channels:
                found.append(Unsupported("ModelConfig", name, getattr(config, name), getattr(defaults, name),
                                         "the U-Net's channels follow DataConfig.C (Ptychodus sets this field to C)"))
    return found


def require_supported(*configs: Any, data: DataConfig | None = None, honoured: Collection[str] = (),
                      where: dict[str, str] | None = None) -> None:
    """Raise ValueError naming every unsupported setting of ``configs`` (None entries are skipped).

    ``data``: the DataConfig whose ``C`` ModelConfig's ``FOLLOW_C`` fields may equal, when it is not
    among ``configs`` (itself checked by the dataset). ``honoured``: see :func:`unsupported_settings`.
    ``where`` maps a class name to the name the user wrote it under (e.g. ``{"TrainingConfig": "train.json: training"}``).
    """
    data = data or next((config for config in configs if isinstance(config, DataConfig)), None)
    found = [item for config in configs if config is not None for item in unsupported_settings(config, data, honoured)]
    if found:
        where = where or {}
        raise ValueError("; ".join(item.message(where.get(item.config)) for item in found))


def _same(value: Any, default: Any) -> bool:
    if default is False and value is None:
        return True  # Ptychodus writes probe_mask=None for "no mask"
    if isinstance(default, tuple):
        try:
            return len(value) == len(default) and all(math.isclose(float(v), d, abs_tol=1e-12) for v, d in zip(value, default))
        except (TypeError, ValueError):
            return False
    if isinstance(default, (bool, str)) or default is None or isinstance(value, bool):
        return value is default or (value == default and type(value) is type(default))
    if hasattr(value, "shape"):  # an array or tensor (a probe mask)
        return False
    return value == default


def _shown(value: Any) -> str:
    if hasattr(value, "shape"):
        return f"<array of shape {tuple(value.shape)}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
