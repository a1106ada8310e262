"""Typed model, training and inference configurations and their bridge to ``ptycho.params.cfg``."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field, fields
import math
import numbers
import os
from pathlib import Path
from typing import Any, Literal, get_args
import warnings

__all__ = [
    'GeneratorFields',
    'GroupingFields',
    'InferenceConfig',
    'KEY_MAPPINGS',
    'LRScheduleFields',
    'ModelConfig',
    'ObjectProbeFields',
    'OptimizerFields',
    'TrainingConfig',
    'dataclass_to_legacy_dict',
    'update_legacy_dict',
    'validate_inference_config',
    'validate_model_config',
    'validate_training_config',
]

MODEL_TYPES = ('pinn', 'supervised')
ARCHITECTURES = (
    'cnn', 'ffno', 'fno', 'hybrid', 'stable_hybrid', 'fno_vanilla', 'neuralop_uno', 'hybrid_resnet',
    'hybrid_resnet_ffno_ptychoblock_encoder', 'hybrid_resnet_ptychoblock_ffno_encoder',
    'spectral_resnet_bottleneck_net', 'spectral_resnet_bottleneck_linear_decoder',
    'hybrid_resnet_ffno_bottleneck', 'hybrid_resnet_convnext_bottleneck',
)
"""PtychoPINN's generator architectures (2026-07); this package provides no model, it only carries the choice."""
FnoInputTransform = Literal['none', 'sqrt', 'log1p', 'instancenorm']
GeneratorOutputMode = Literal['real_imag', 'amp_phase_logits', 'amp_phase']
TorchLossMode = Literal['poisson', 'mae']
GradientClipAlgorithm = Literal['norm', 'value', 'agc']
OptimizerName = Literal['adam', 'adamw', 'sgd']
FNO_INPUT_TRANSFORMS = get_args(FnoInputTransform)
GENERATOR_OUTPUT_MODES = get_args(GeneratorOutputMode)
OBJECT_LAYOUTS = ('single_patch', 'grouped_patches')
TRAINING_CANVASES = ('independent', 'relative_overlap')
TRAINING_PATCH_WEIGHTINGS = ('central_mask', 'uniform', 'probe')
TORCH_LOSS_MODES = get_args(TorchLossMode)
GRADIENT_CLIP_ALGORITHMS = get_args(GradientClipAlgorithm)
OPTIMIZERS = get_args(OptimizerName)
SCHEDULERS = ('Default', 'Exponential', 'WarmupCosine', 'ReduceLROnPlateau', 'MultiStage', 'Adaptive')
AMP_ACTIVATIONS = ('sigmoid', 'swish', 'softplus', 'relu')
BACKENDS = ('tensorflow', 'pytorch')
DEFAULT_TRAINING_N_GROUPS = 512

KEY_MAPPINGS: dict[str, str] = {
    'object_big': 'object.big',
    'probe_big': 'probe.big',
    'probe_mask': 'probe.mask',
    'probe_trainable': 'probe.trainable',
    'intensity_scale_trainable': 'intensity_scale.trainable',
    'positions_provided': 'positions.provided',
    'output_dir': 'output_prefix',
    'train_data_file': 'train_data_file_path',
    'test_data_file': 'test_data_file_path',
}
"""Dataclass field name -> legacy ``params.cfg`` key, where they differ."""


# ---- field groups more than one schema declares: this module's configs and ptycho_torch.config_params' ----
# Each group is declared once, here (torch-free), and inherited. ``kw_only`` keeps the subclasses'
# own fields positional in their order; an inherited field is passed by keyword.
# ptycho_torch.config_resolve copies the fields of the groups both packages share across the bridge.


@dataclass(kw_only=True)
class GeneratorFields:
    """PtychoPINN's generator architecture (both ModelConfigs); validated by ``validate_model_config``."""

    architecture: str = 'cnn'
    fno_modes: int = 12
    fno_width: int = 32
    fno_blocks: int = 4
    fno_cnn_blocks: int = 2
    learned_input_channels: int = 1
    max_hidden_channels: int | None = None
    resnet_width: int | None = None
    fno_input_transform: FnoInputTransform = 'none'
    generator_output_mode: GeneratorOutputMode = 'real_imag'


@dataclass(kw_only=True)
class ObjectProbeFields:
    """Object and probe settings of the forward model (both ModelConfigs); ``probe_mask`` is per class (its type differs)."""

    object_big: bool = True
    probe_big: bool = True
    probe_mask_sigma: float = 1.0
    probe_mask_diameter: float | None = None
    pad_object: bool = True
    gaussian_smoothing_sigma: float = 0.0


@dataclass(kw_only=True)
class OptimizerFields:
    """The torch trainer's loss mode, gradient clipping and optimizer (both TrainingConfigs)."""

    torch_loss_mode: TorchLossMode = 'poisson'
    torch_mae_pred_l2_match_target: bool = False
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: GradientClipAlgorithm = 'norm'
    optimizer: OptimizerName = 'adam'
    momentum: float = 0.9
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999


@dataclass(kw_only=True)
class LRScheduleFields:
    """The torch trainer's learning-rate schedule (both TrainingConfigs)."""

    scheduler: str = 'Default'
    lr_warmup_epochs: int = 0
    lr_min_ratio: float = 0.1
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    plateau_min_lr: float = 5e-5
    plateau_threshold: float = 0.0


@dataclass(kw_only=True)
class GroupingFields:
    """How scan points are grouped (this TrainingConfig and InferenceConfig); ``n_images`` is ``n_groups``'s deprecated alias."""

    n_groups: int | None = None
    n_images: int | None = None
    n_subsample: int | None = None
    subsample_seed: int | None = None
    neighbor_count: int = 4
    enable_oversampling: bool = False
    neighbor_pool_size: int | None = None


@dataclass
class ModelConfig(ObjectProbeFields, GeneratorFields):
    """Model architecture; mutable so a caller may set ``N`` once the data size is known.

    The fields of :class:`GeneratorFields` and :class:`ObjectProbeFields` are inherited and keyword-only.
    """

    N: int = 64
    gridsize: int = 1
    n_filters_scale: int = 2
    model_type: str = 'pinn'
    amp_activation: str = 'sigmoid'
    object_layout: str | None = None
    training_canvas: str | None = None
    training_patch_weighting: str | None = None
    probe_mask: bool = False
    probe_scale: float = 4.0


@dataclass
class TrainingConfig(GroupingFields, LRScheduleFields, OptimizerFields):
    """Training workflow and grouping settings; ``n_groups=None`` means 512 groups.

    The fields of :class:`GroupingFields`, :class:`OptimizerFields` and :class:`LRScheduleFields` are
    inherited and keyword-only.
    """

    model: ModelConfig
    train_data_file: Path | None = None
    test_data_file: Path | None = None
    batch_size: int = 16
    nepochs: int = 50
    mae_weight: float = 0.0
    nll_weight: float = 1.0
    realspace_mae_weight: float = 0.0
    realspace_weight: float = 0.0
    nphotons: float = 1e9
    positions_provided: bool = True
    probe_trainable: bool = False
    intensity_scale_trainable: bool = True
    output_dir: Path = field(default_factory=lambda: Path('training_outputs'))
    sequential_sampling: bool = False
    backend: str = 'tensorflow'

    def __post_init__(self) -> None:
        self.n_groups = _resolve_n_groups(self.n_groups, self.n_images)
        if self.n_groups is None:
            self.n_groups = DEFAULT_TRAINING_N_GROUPS
        _convert_paths(self, ('train_data_file', 'test_data_file', 'output_dir'))


@dataclass
class InferenceConfig(GroupingFields):
    """Inference workflow and grouping settings; ``n_groups=None`` means every group.

    ``sequential_sampling`` is not one of PtychoPINN's InferenceConfig fields: its default None
    leaves ``params.cfg['sequential_sampling']`` as a TrainingConfig set it (as PtychoPINN does)
    and means False for grouping. The fields of :class:`GroupingFields` are inherited and keyword-only.
    """

    model: ModelConfig
    model_path: Path
    test_data_file: Path
    sequential_sampling: bool | None = None
    debug: bool = False
    output_dir: Path = field(default_factory=lambda: Path('inference_outputs'))
    backend: str = 'tensorflow'

    def __post_init__(self) -> None:
        self.n_groups = _resolve_n_groups(self.n_groups, self.n_images)
        _convert_paths(self, ('model_path', 'test_data_file', 'output_dir'))


def _resolve_n_groups(n_groups: int | None, n_images: int | None) -> int | None:
    if n_images is None:
        return n_groups
    warnings.warn(
        "'n_images' is deprecated; use 'n_groups' (the number of groups, whatever the gridsize)",
        DeprecationWarning,
        stacklevel=4,
    )
    if n_groups is not None and n_groups != n_images:
        raise ValueError(
            f'n_groups={n_groups} and its deprecated alias n_images={n_images} disagree; '
            'pass only n_groups'
        )
    return n_images


def _convert_paths(config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, (str, os.PathLike)) and not isinstance(value, Path):
            setattr(config, name, Path(value))


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == 'bool_'


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not _is_bool(value) and math.isfinite(value)


def _require_positive_int(owner: str, name: str, value: Any, hint: str = '') -> None:
    if not _is_int(value) or value <= 0:
        raise ValueError(f'{owner}.{name} must be a positive integer, got {value!r}{hint}')


def _require_optional_positive_int(owner: str, name: str, value: Any) -> None:
    if value is not None:
        _require_positive_int(owner, name, value, ' (or None)')


def _require_bool(owner: str, name: str, value: Any) -> None:
    if not _is_bool(value):
        raise ValueError(f'{owner}.{name} must be True or False, got {value!r}')


def _require_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{owner}.{name} must be one of {list(choices)}, got {value!r}')


def _require_real(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    low_inclusive: bool = True,
) -> None:
    above_low = _is_real(value) and (value >= low if low_inclusive else value > low)
    if not (above_low and value <= high):
        bracket = '[' if low_inclusive else '('
        upper = 'inf)' if math.isinf(high) else f'{high}]'
        raise ValueError(
            f'{owner}.{name} must be a finite number in {bracket}{low}, {upper}, got {value!r}'
        )


def validate_model_config(config: ModelConfig) -> None:
    """Raise ValueError naming the first invalid field of ``config``."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f'expected a ptycho.config.ModelConfig, got {type(config).__name__}')
    owner = 'ModelConfig'
    _require_positive_int(
        owner, 'N', config.N, '; set model.N to the diffraction pattern size before use'
    )
    _require_positive_int(owner, 'gridsize', config.gridsize)
    _require_positive_int(owner, 'n_filters_scale', config.n_filters_scale)
    _require_choice(owner, 'model_type', config.model_type, MODEL_TYPES)
    _require_choice(owner, 'architecture', config.architecture, ARCHITECTURES)
    for name in ('fno_modes', 'fno_width', 'fno_blocks', 'learned_input_channels'):
        _require_positive_int(owner, name, getattr(config, name))
    if not _is_int(config.fno_cnn_blocks) or config.fno_cnn_blocks < 0:
        raise ValueError(f'{owner}.fno_cnn_blocks must be a non-negative integer, got {config.fno_cnn_blocks!r}')
    for name in ('max_hidden_channels', 'resnet_width'):
        _require_optional_positive_int(owner, name, getattr(config, name))
    _require_choice(owner, 'fno_input_transform', config.fno_input_transform, FNO_INPUT_TRANSFORMS)
    _require_choice(owner, 'generator_output_mode', config.generator_output_mode, GENERATOR_OUTPUT_MODES)
    _require_choice(owner, 'amp_activation', config.amp_activation, AMP_ACTIVATIONS)
    for name, choices in (('object_layout', OBJECT_LAYOUTS), ('training_canvas', TRAINING_CANVASES),
                          ('training_patch_weighting', TRAINING_PATCH_WEIGHTINGS)):
        if getattr(config, name) is not None:
            _require_choice(owner, name, getattr(config, name), choices)
    for name in ('object_big', 'probe_big', 'probe_mask', 'pad_object'):
        _require_bool(owner, name, getattr(config, name))
    _require_real(owner, 'probe_mask_sigma', config.probe_mask_sigma, low=0.0)
    if config.probe_mask_diameter is not None:
        _require_real(owner, 'probe_mask_diameter', config.probe_mask_diameter, low=0.0, low_inclusive=False)
    _require_real(owner, 'probe_scale', config.probe_scale, low=0.0, low_inclusive=False)
    _require_real(owner, 'gaussian_smoothing_sigma', config.gaussian_smoothing_sigma, low=0.0)


def _validate_grouping(owner: str, config: TrainingConfig | InferenceConfig) -> None:
    _require_optional_positive_int(owner, 'n_groups', config.n_groups)
    _require_optional_positive_int(owner, 'n_subsample', config.n_subsample)
    if config.subsample_seed is not None and (
        not _is_int(config.subsample_seed) or config.subsample_seed < 0
    ):
        raise ValueError(
            f'{owner}.subsample_seed must be a non-negative integer or None, '
            f'got {config.subsample_seed!r}'
        )
    _require_positive_int(owner, 'neighbor_count', config.neighbor_count)
    _require_optional_positive_int(owner, 'neighbor_pool_size', config.neighbor_pool_size)
    _require_bool(owner, 'enable_oversampling', config.enable_oversampling)
    if config.sequential_sampling is not None or isinstance(config, TrainingConfig):
        _require_bool(owner, 'sequential_sampling', config.sequential_sampling)
    _require_choice(owner, 'backend', config.backend, BACKENDS)


def _validate_optimisation(owner: str, config: TrainingConfig) -> None:
    """The torch training fields PtychoPINN's TrainingConfig carries (this package only validates them)."""
    _require_choice(owner, 'torch_loss_mode', config.torch_loss_mode, TORCH_LOSS_MODES)
    _require_bool(owner, 'torch_mae_pred_l2_match_target', config.torch_mae_pred_l2_match_target)
    if config.gradient_clip_val is not None:
        _require_real(owner, 'gradient_clip_val', config.gradient_clip_val, low=0.0)
    _require_choice(owner, 'gradient_clip_algorithm', config.gradient_clip_algorithm, GRADIENT_CLIP_ALGORITHMS)
    _require_choice(owner, 'optimizer', config.optimizer, OPTIMIZERS)
    _require_choice(owner, 'scheduler', config.scheduler, SCHEDULERS)
    for name in ('momentum', 'lr_min_ratio'):
        _require_real(owner, name, getattr(config, name), low=0.0, high=1.0)
    for name in ('adam_beta1', 'adam_beta2'):
        _require_real(owner, name, getattr(config, name), low=0.0, high=1.0)
    for name in ('weight_decay', 'plateau_min_lr', 'plateau_threshold'):
        _require_real(owner, name, getattr(config, name), low=0.0)
    _require_real(owner, 'plateau_factor', config.plateau_factor, low=0.0, high=1.0, low_inclusive=False)
    for name in ('lr_warmup_epochs', 'plateau_patience'):
        if not _is_int(getattr(config, name)) or getattr(config, name) < 0:
            raise ValueError(f'{owner}.{name} must be a non-negative integer, got {getattr(config, name)!r}')


def validate_training_config(config: TrainingConfig) -> None:
    """Raise ValueError naming the first invalid field of ``config`` (model included)."""
    if not isinstance(config, TrainingConfig):
        raise TypeError(f'expected a ptycho.config.TrainingConfig, got {type(config).__name__}')
    validate_model_config(config.model)
    owner = 'TrainingConfig'
    _require_positive_int(owner, 'batch_size', config.batch_size)
    _require_positive_int(owner, 'nepochs', config.nepochs)
    for name in ('mae_weight', 'nll_weight'):
        _require_real(owner, name, getattr(config, name), low=0.0, high=1.0)
    for name in ('realspace_mae_weight', 'realspace_weight'):
        _require_real(owner, name, getattr(config, name), low=0.0)
    _require_real(owner, 'nphotons', config.nphotons, low=0.0, low_inclusive=False)
    for name in ('positions_provided', 'probe_trainable', 'intensity_scale_trainable'):
        _require_bool(owner, name, getattr(config, name))
    _validate_grouping(owner, config)
    _validate_optimisation(owner, config)


def validate_inference_config(config: InferenceConfig) -> None:
    """Raise ValueError naming the first invalid field of ``config`` (model included)."""
    if not isinstance(config, InferenceConfig):
        raise TypeError(f'expected a ptycho.config.InferenceConfig, got {type(config).__name__}')
    validate_model_config(config.model)
    owner = 'InferenceConfig'
    for name in ('model_path', 'test_data_file'):
        if not isinstance(getattr(config, name), Path):
            raise ValueError(f'{owner}.{name} must be a path, got {getattr(config, name)!r}')
    _require_bool(owner, 'debug', config.debug)
    _validate_grouping(owner, config)


_VALIDATORS = {
    ModelConfig: validate_model_config,
    TrainingConfig: validate_training_config,
    InferenceConfig: validate_inference_config,
}


def _validator_for(obj: Any) -> Any:
    for config_type, validator in _VALIDATORS.items():
        if isinstance(obj, config_type):
            return validator
    raise TypeError(
        'expected a ptycho.config ModelConfig, TrainingConfig or InferenceConfig, '
        f'got {type(obj).__name__}'
    )


def _legacy_value(value: Any) -> Any:
    return str(value) if isinstance(value, os.PathLike) else value


def dataclass_to_legacy_dict(obj: ModelConfig | TrainingConfig | InferenceConfig) -> dict[str, Any]:
    """Flatten ``obj`` (and its nested ``model``) into legacy keys; Paths become strings.

    None values are kept here; :func:`update_legacy_dict` skips them.
    """
    _validator_for(obj)
    flat: dict[str, Any] = {}
    for item in fields(obj):
        value = getattr(obj, item.name)
        if item.name == 'model':
            flat.update(dataclass_to_legacy_dict(value))
        else:
            flat[KEY_MAPPINGS.get(item.name, item.name)] = _legacy_value(value)
    return flat


def update_legacy_dict(
    cfg: MutableMapping[str, Any], obj: ModelConfig | TrainingConfig | InferenceConfig
) -> None:
    """Validate ``obj`` and write its legacy keys into ``cfg``; None values never overwrite."""
    _validator_for(obj)(obj)
    cfg.update(
        {key: value for key, value in dataclass_to_legacy_dict(obj).items() if value is not None}
    )
