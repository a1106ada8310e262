"""Resolution of the torch configs, with every check: one place (torch-free).

- What is accepted at its default only: PtychoPINN's ``config_params`` dataclasses carry fields of
  models, grouping and training stages this package does not have. Each is accepted at its dataclass
  default (so PtychoPINN and Ptychodus configs load) and refused at any other value, where configs are
  resolved: ``ptycho-train``, the ``PtychoPINN_Lightning`` constructor, ``PtychoDataset``
  (``DataConfig``) and the Ptychodus API's ``ConfigManager``. A field honoured only together with
  another setting (``momentum`` with ``optimizer='sgd'``) is refused when that setting is not in
  effect. The accepted value is always the field's dataclass default; the table ``DEFAULT_ONLY`` holds
  only the names (``fnmatch`` patterns over the dataclass fields) and what runs instead
  (:func:`require_supported`).
- The group grid (:func:`grid_side`, the one square-grid and ``C`` check) and the other ``DataConfig``
  refusals of the data pipeline (:func:`check_data_config`).
- The translation to ``ptycho.config`` dataclasses (:func:`to_model_config`,
  :func:`to_training_config`, :func:`to_inference_config`; PtychoPINN's ``config_bridge`` re-exports
  them) and the one ``ptycho`` config of a dataset (:func:`to_ptycho_config`, :func:`resolve_call_slots`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ptycho.config.config import (
    GeneratorFields,
    InferenceConfig as TFInferenceConfig,
    LRScheduleFields,
    ModelConfig as TFModelConfig,
    ObjectProbeFields,
    OptimizerFields,
    TrainingConfig as TFTrainingConfig,
    validate_inference_config,
    validate_model_config,
    validate_training_config,
)
from ptycho_torch.config_params import DataConfig, DatagenConfig, InferenceConfig, ModelConfig, TrainingConfig

__all__ = [
    "DEFAULT_ONLY",
    "PtychoConfig",
    "Unsupported",
    "check_data_config",
    "check_strategy",
    "default_only_fields",
    "grid_side",
    "lr_schedule",
    "require_supported",
    "resolve_call_slots",
    "to_inference_config",
    "to_model_config",
    "to_ptycho_config",
    "to_training_config",
    "unsupported_settings",
]

# ---- fields accepted at their default only --------------------------------------------------------

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


def check_strategy(strategy, field: str = "TrainingConfig.strategy") -> None:
    """A ``TrainingConfig.strategy`` must be None, ``'auto'``, a strategy Lightning knows (its name in any case, as Lightning
    reads it) or a Lightning ``Strategy`` object (it is read with several devices only): anything else is a ValueError
    naming ``field``, before any work. Without Lightning installed nothing can train, so nothing is checked."""
    try:
        from lightning.pytorch.strategies import Strategy, StrategyRegistry
    except ImportError:
        return
    if strategy is None or isinstance(strategy, Strategy):
        return
    known = StrategyRegistry.available_strategies()
    name = strategy.lower() if isinstance(strategy, str) else strategy
    if name != "auto" and name not in known:
        ddp = [name for name in known if name.startswith("ddp")][:4]
        raise ValueError(f"{field}={strategy!r} is not a Lightning strategy; use 'ddp' (the default), 'auto', {', '.join(map(repr, ddp[1:]))} "
                         "or another name of lightning.pytorch.strategies.StrategyRegistry")


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


# ---- the group grid and the data pipeline's refusals --------------------------------------------

NORMALIZE_MODES = ("Batch", "Group")
SQUARE_GRID_FIX = "Non-square grids are not supported (the grouping and the TensorFlow model need gridsize x gridsize, e.g. (2, 2))"
CHANNELS_FIX = "set C={size} or change grid_size"


def grid_side(grid_size: Any, C: Any = None, *, where: str = "DataConfig", square_fix: str = SQUARE_GRID_FIX,
              channels_fix: str = CHANNELS_FIX) -> int:
    """The side of the square group grid ``grid_size`` (the one check of it); with ``C``, also that a group's ``C`` patterns fill it.

    Refused (ValueError naming ``<where>.grid_size`` or ``<where>.C``): a grid that is not a (y, x) pair
    of integers, a non-square grid ("is not square", then ``square_fix``), ``C`` other than
    ``grid_size[0] * grid_size[1]`` ("does not match", then ``channels_fix`` with ``{size}`` the grid's
    size). ``where`` and the fixes name things as the user wrote them (a config file's section, Ptychodus's settings).
    """
    try:
        rows, cols = (int(size) for size in grid_size)
    except (TypeError, ValueError):
        raise ValueError(f"{where}.grid_size must be a (y, x) pair, got {grid_size!r}") from None
    if rows != cols:
        raise ValueError(f"{where}.grid_size={tuple(grid_size)} is not square: {square_fix}")
    if C is not None and C != rows * cols:
        raise ValueError(
            f"{where}.C={C} does not match grid_size={tuple(grid_size)}: a group holds grid_size[0] * grid_size[1] = "
            f"{rows * cols} patterns; {channels_fix.format(size=rows * cols)}"
        )
    return rows


def check_data_config(data: DataConfig) -> None:
    """Refuse the ``DataConfig`` settings the data pipeline cannot honour, naming the field; consistent settings pass.

    The grid (:func:`grid_side`: square, ``C`` its size), ``normalize`` ('Batch' or 'Group') and the
    fields accepted at their default only (``DEFAULT_ONLY``).
    """
    grid_side(data.grid_size, data.C)
    if data.normalize not in NORMALIZE_MODES:
        raise ValueError(
            f"DataConfig.normalize={data.normalize!r} has no effect here: the dataset normalises per experiment "
            "('Batch') or per group ('Group'); use one of those"
        )
    require_supported(data)


# ---- translation to ptycho.config (PtychoPINN's config_bridge) ----------------------------------

TORCH_DEFAULT_NPHOTONS = 1e5
TF_DEFAULT_NPHOTONS = 1e9

MODE_TO_MODEL_TYPE = {'Unsupervised': 'pinn', 'Supervised': 'supervised'}
ACTIVATION_TO_TF = {
    'silu': 'swish',
    'swish': 'swish',
    'sigmoid': 'sigmoid',
    'softplus': 'softplus',
    'relu': 'relu',
}


def _field_names(config_type: type) -> frozenset[str]:
    return frozenset(item.name for item in fields(config_type))


def _checked_overrides(overrides: Mapping[str, Any] | None, target: type) -> dict[str, Any]:
    """Return a copy of ``overrides`` after rejecting keys that are not fields of ``target``."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(
            f'overrides must be a mapping of field names to values, got {type(overrides)!r}'
        )
    unknown = sorted(set(overrides) - _field_names(target))
    if unknown:
        raise ValueError(
            f'unknown override key(s) {unknown} for ptycho.config.{target.__name__}; '
            f'valid keys are {sorted(_field_names(target))}'
        )
    return dict(overrides)


def _model_type(mode: Any) -> str:
    try:
        return MODE_TO_MODEL_TYPE[mode]
    except (KeyError, TypeError):
        raise ValueError(
            f'Invalid mode {mode!r}: ModelConfig.mode must be one of {sorted(MODE_TO_MODEL_TYPE)}'
        ) from None


def _amp_activation(name: Any) -> str:
    key = name.casefold() if isinstance(name, str) else name
    try:
        return ACTIVATION_TO_TF[key]
    except (KeyError, TypeError):
        raise ValueError(
            f'Unknown activation {name!r}: ModelConfig.amp_activation has no TensorFlow equivalent; '
            f"use one of {sorted(ACTIVATION_TO_TF)} ('silu' becomes 'swish')"
        ) from None


def _probe_mask_enabled(probe_mask: Any) -> bool:
    if probe_mask is None:
        return False
    if isinstance(probe_mask, bool):
        return probe_mask
    if hasattr(probe_mask, 'shape'):
        return True
    raise ValueError(
        'ModelConfig.probe_mask must be None, a bool or a mask tensor/array, '
        f'got {type(probe_mask)!r}'
    )


CARRIED_MODEL_FIELDS = tuple(f.name for group in (GeneratorFields, ObjectProbeFields) for f in fields(group))
"""ModelConfig fields both sides inherit from ``ptycho.config.config`` (same name and meaning), copied as they are."""

CARRIED_TRAINING_FIELDS = tuple(f.name for group in (OptimizerFields, LRScheduleFields) for f in fields(group))
"""TrainingConfig fields both sides inherit, copied as they are (``lr_warmup_epochs``/``lr_min_ratio`` then by :func:`lr_schedule`)."""


def _copied_from(config: Any, name: str) -> Callable[[], Any]:
    return lambda: getattr(config, name)


def lr_schedule(training: TrainingConfig) -> dict[str, Any]:
    """``lr_warmup_epochs``/``lr_min_ratio``: PtychoPINN main's fields if set, else the older ``warmup_epochs``/``min_lr_ratio``."""
    default = TrainingConfig()
    warmup = training.lr_warmup_epochs if training.lr_warmup_epochs != default.lr_warmup_epochs else training.warmup_epochs
    ratio = training.lr_min_ratio if training.lr_min_ratio != default.lr_min_ratio else training.min_lr_ratio
    return {'lr_warmup_epochs': warmup, 'lr_min_ratio': ratio}


def to_model_config(
    data: DataConfig, model: ModelConfig, overrides: Mapping[str, Any] | None = None
) -> TFModelConfig:
    """A ``ptycho.config.ModelConfig`` from the torch ``DataConfig`` and ``ModelConfig``.

    Translated: ``N`` (pixels), ``gridsize`` from the square ``grid_size``, ``model_type`` from
    ``mode`` (``'Unsupervised'`` -> ``'pinn'``, ``'Supervised'`` -> ``'supervised'``),
    ``amp_activation`` (``'silu'`` -> ``'swish'``), ``probe_mask`` (a mask array or tensor -> True),
    ``probe_scale``; ``CARRIED_MODEL_FIELDS`` are copied as they are. ``overrides`` (``ptycho``
    ModelConfig field names) win: an overridden field is not translated, so it cannot fail translation.

    Refused (ValueError naming the field): a non-square or malformed ``grid_size`` ("Non-square
    grids"), an unknown ``mode`` ("Invalid mode") or ``amp_activation`` ("Unknown activation"), a
    ``probe_mask`` that is not None, a bool or an array, override keys that are not fields, and what
    ``validate_model_config`` refuses (e.g. ``N`` not a positive integer).
    """
    translations: dict[str, Callable[[], Any]] = {
        'N': lambda: data.N,
        'gridsize': lambda: grid_side(data.grid_size),
        'n_filters_scale': lambda: model.n_filters_scale,
        'model_type': lambda: _model_type(model.mode),
        'amp_activation': lambda: _amp_activation(model.amp_activation),
        'probe_mask': lambda: _probe_mask_enabled(model.probe_mask) or model.probe_mask_tensor is not None,
        'probe_scale': lambda: data.probe_scale,
        **{name: _copied_from(model, name) for name in CARRIED_MODEL_FIELDS},
    }
    checked = _checked_overrides(overrides, TFModelConfig)
    values = {name: translate() for name, translate in translations.items() if name not in checked}
    values.update(checked)
    config = TFModelConfig(**values)
    validate_model_config(config)
    return config


def _copied_model(tf_model: TFModelConfig) -> TFModelConfig:
    if not isinstance(tf_model, TFModelConfig):
        raise TypeError(
            'tf_model must be a ptycho.config.ModelConfig (see to_model_config), '
            f'got {type(tf_model)!r}'
        )
    return replace(tf_model)


def _nphotons(data: DataConfig, overrides: Mapping[str, Any]) -> float:
    if 'nphotons' in overrides:
        return overrides['nphotons']
    if data.nphotons == TORCH_DEFAULT_NPHOTONS:
        raise ValueError(
            f'nphotons default divergence: DataConfig.nphotons is still the PyTorch default '
            f'{TORCH_DEFAULT_NPHOTONS:g}, while TensorFlow defaults to {TF_DEFAULT_NPHOTONS:g}; the two '
            'backends would silently scale intensities differently. Set DataConfig(nphotons=...) to '
            f'the real photon count or pass overrides={{"nphotons": {TF_DEFAULT_NPHOTONS:g}}}'
        )
    return data.nphotons


def to_training_config(
    tf_model: TFModelConfig,
    data: DataConfig,
    pt_model: ModelConfig,
    training: TrainingConfig,
    overrides: Mapping[str, Any] | None = None,
    *,
    require_run_fields: bool = True,
) -> TFTrainingConfig:
    """A ``ptycho.config.TrainingConfig`` from ``tf_model`` (see :func:`to_model_config`) and the torch configs.

    Translated: ``nepochs`` from ``epochs``, ``nll_weight`` from ``nll``, ``neighbor_count`` from
    ``K``, ``subsample_seed``, ``n_groups`` (groups per scan file), ``nphotons`` (photons per
    pattern), the learning-rate schedule (:func:`lr_schedule`) and ``CARRIED_TRAINING_FIELDS``;
    ``backend`` is ``'pytorch'``. ``overrides`` (``ptycho`` TrainingConfig field names) win.

    Needs ``train_data_file`` and ``n_groups`` (from ``training`` or ``overrides``), and an explicit
    photon count: the torch default ``nphotons=1e5`` is refused ("nphotons default divergence") since
    TensorFlow's is 1e9. Warns (UserWarning) when there is no ``test_data_file``. With
    ``require_run_fields=False`` (the data pipeline, whose batches none of these change) only
    ``train_data_file`` is needed: ``DataConfig.nphotons`` is taken as given and ``n_groups=None``
    means the ``ptycho`` default (512). Also refused (ValueError): override keys that are not fields,
    a ``tf_model`` that is not a ``ptycho`` ModelConfig (TypeError), and what
    ``validate_training_config`` refuses.
    """
    checked = _checked_overrides(overrides, TFTrainingConfig)
    values: dict[str, Any] = {
        'model': _copied_model(tf_model),
        'train_data_file': training.train_data_file,
        'test_data_file': training.test_data_file,
        'batch_size': training.batch_size,
        'nepochs': training.epochs,
        'nll_weight': 1.0 if training.nll else 0.0,
        'nphotons': _nphotons(data, checked) if require_run_fields else data.nphotons,
        'n_groups': training.n_groups,
        'subsample_seed': data.subsample_seed,
        'neighbor_count': data.K,
        'intensity_scale_trainable': pt_model.intensity_scale_trainable,
        'output_dir': training.output_dir,
        'backend': 'pytorch',
        **{name: getattr(training, name) for name in CARRIED_TRAINING_FIELDS},
        **lr_schedule(training),
    }
    values.update(checked)
    if values['train_data_file'] is None:
        raise ValueError(
            'train_data_file is required: training needs the scan to train on; set '
            "TrainingConfig(train_data_file=...) or pass overrides={'train_data_file': Path('train.npz')}"
        )
    if require_run_fields and values['n_groups'] is None and values.get('n_images') is None:
        raise ValueError(
            'training needs n_groups (the number of groups to sample): set '
            "TrainingConfig(n_groups=...) or pass overrides={'n_groups': 512}"
        )
    if require_run_fields and values['test_data_file'] is None:
        warnings.warn(
            'no test_data_file for training: evaluation after training will have no data; set '
            'TrainingConfig(test_data_file=...) or pass '
            "overrides={'test_data_file': Path('test.npz')}",
            UserWarning,
            stacklevel=2,
        )
    config = TFTrainingConfig(**values)
    validate_training_config(config)
    return config


def to_inference_config(
    tf_model: TFModelConfig,
    data: DataConfig,
    inference: InferenceConfig,
    overrides: Mapping[str, Any] | None = None,
) -> TFInferenceConfig:
    """A ``ptycho.config.InferenceConfig`` from ``tf_model`` and the torch configs; ``overrides`` win.

    ``neighbor_count`` is ``DataConfig.K``, ``subsample_seed`` is ``DataConfig.subsample_seed``;
    ``n_groups`` unset means one group per scan point. Needs ``model_path`` and ``test_data_file`` in
    ``overrides`` (torch inference configs carry no paths): their absence is a ValueError ("model_path
    is required"), as are override keys that are not fields and what ``validate_inference_config``
    refuses.
    """
    checked = _checked_overrides(overrides, TFInferenceConfig)
    values: dict[str, Any] = {
        'model': _copied_model(tf_model),
        'model_path': None,
        'test_data_file': None,
        'subsample_seed': data.subsample_seed,
        'neighbor_count': data.K,
        'backend': 'pytorch',
    }
    values.update(checked)
    for name, example in (('model_path', 'model_dir'), ('test_data_file', 'test.npz')):
        if values[name] is None:
            raise ValueError(
                f"{name} is required: inference needs it and the torch InferenceConfig has no path "
                f"fields; pass overrides={{'{name}': Path('{example}')}}"
            )
    config = TFInferenceConfig(**values)
    validate_inference_config(config)
    return config


# ---- the one ptycho config of a dataset ---------------------------------------------------------

PtychoConfig = TFTrainingConfig | TFInferenceConfig
_MODEL_FIELDS = frozenset(f.name for f in fields(TFModelConfig))


def to_ptycho_config(
    npz_path,
    data: DataConfig | None = None,
    model: ModelConfig | None = None,
    training: TrainingConfig | None = None,
    *,
    config: PtychoConfig | None = None,
    overrides: dict | None = None,
) -> PtychoConfig:
    """A ``ptycho`` TrainingConfig/InferenceConfig: ``config`` as given, or torch configs through :func:`to_training_config`.

    ``overrides`` may name fields of the ``ptycho`` ModelConfig (N, gridsize, ...) and of the
    TrainingConfig (n_groups, nphotons, subsample_seed, ...). ``train_data_file`` defaults to the scan.
    Torch configs are checked by :func:`check_data_config`; the bridge's demands for a
    training run (photon count, n_groups, test file) are left to where a model is trained, since
    none of them changes a batch.
    """
    model_overrides, other = _split_overrides(overrides or {})
    if config is not None:
        if data is not None or model is not None or training is not None:
            raise ValueError("pass either config= (a ptycho TrainingConfig/InferenceConfig) or the torch configs, not both")
        if not isinstance(config, (TFTrainingConfig, TFInferenceConfig)):
            raise TypeError(f"config must be a ptycho.config TrainingConfig or InferenceConfig, got {type(config).__name__}")
        return replace(config, model=replace(config.model, **model_overrides), **other)
    data, model, training = data or DataConfig(), model or ModelConfig(), training or TrainingConfig()
    check_data_config(data)
    if training.train_data_file is None:
        other.setdefault("train_data_file", Path(npz_path))
    tf_model = to_model_config(data, model, model_overrides)
    return to_training_config(tf_model, data, model, training, other, require_run_fields=False)


def _split_overrides(overrides: dict) -> tuple[dict, dict]:
    model = {key: value for key, value in overrides.items() if key in _MODEL_FIELDS}
    return model, {key: value for key, value in overrides.items() if key not in _MODEL_FIELDS}


_POSITIONAL_SLOTS = (
    ("second", (("data_config", DataConfig), ("model_config", ModelConfig))),
    ("third", (("data_config", DataConfig), ("model_config", ModelConfig))),
    ("fourth", (("training_config", TrainingConfig),)),
    ("fifth", (("inference_config", InferenceConfig), ("data_dir", (str, os.PathLike)))),
    ("sixth", (("datagen_config", DatagenConfig), ("remake_map", bool))),
)
_KEYWORD_TYPES = {
    "data_config": DataConfig,
    "model_config": ModelConfig,
    "training_config": TrainingConfig,
    "inference_config": InferenceConfig,
    "datagen_config": DatagenConfig,
    "data_dir": (str, os.PathLike),
    "remake_map": bool,
}


def resolve_call_slots(positional: tuple, keywords: dict) -> dict:
    """Sort ``PtychoDataset``'s arguments after the path into named slots, by type.

    Accepts PtychoPINN's order ``(model_config, data_config, training_config, data_dir, remake_map)``
    and this project's ``(data_config, model_config, training_config, inference_config, datagen_config)``;
    a value of the wrong type, or one slot given twice, is a TypeError naming the slot.
    """
    if len(positional) > len(_POSITIONAL_SLOTS):
        raise TypeError(f"PtychoDataset takes at most {len(_POSITIONAL_SLOTS) + 1} positional arguments, got {len(positional) + 1}")
    slots = dict(keywords)
    for name, value in keywords.items():
        if value is not None and not isinstance(value, _KEYWORD_TYPES[name]):
            raise TypeError(f"PtychoDataset {name}= must be {_type_names(_KEYWORD_TYPES[name])}, got {type(value).__name__}")
    given_positionally: set[str] = set()
    for (place, choices), value in zip(_POSITIONAL_SLOTS, positional):
        if value is None:
            continue
        name = next((slot for slot, kind in choices if isinstance(value, kind)), None)
        if name is None:
            expected = " or ".join(_type_names(kind) for _, kind in choices)
            raise TypeError(f"PtychoDataset's {place} positional argument must be {expected}, got {type(value).__name__}")
        if name in given_positionally or keywords.get(name) is not None:
            raise TypeError(f"PtychoDataset got {name} twice (the {place} positional argument is another {type(value).__name__})")
        given_positionally.add(name)
        slots[name] = value
    return slots


def _type_names(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("a path" if k is os.PathLike else ("a str" if k is str else f"a {k.__name__}") for k in kinds)
