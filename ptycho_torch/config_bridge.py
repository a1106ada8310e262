"""Translate ``ptycho_torch.config_params`` configs into ``ptycho.config`` dataclasses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any
import warnings

from ptycho.config.config import (
    InferenceConfig as TFInferenceConfig,
    ModelConfig as TFModelConfig,
    TrainingConfig as TFTrainingConfig,
    validate_inference_config,
    validate_model_config,
    validate_training_config,
)

from .config_params import (
    DataConfig,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
)

__all__ = [
    'to_inference_config',
    'to_model_config',
    'to_training_config',
]

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


def _gridsize(grid_size: Any) -> int:
    try:
        rows, cols = grid_size
    except (TypeError, ValueError):
        raise ValueError(f'DataConfig.grid_size must be a (y, x) pair, got {grid_size!r}') from None
    if rows != cols:
        raise ValueError(
            f'DataConfig.grid_size={tuple(grid_size)} is not square: Non-square grids are not '
            'supported (the grouping and the TensorFlow model need gridsize x gridsize, e.g. (2, 2))'
        )
    return int(rows)


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


CARRIED_MODEL_FIELDS = (
    'architecture', 'fno_modes', 'fno_width', 'fno_blocks', 'fno_cnn_blocks', 'learned_input_channels',
    'max_hidden_channels', 'resnet_width', 'fno_input_transform', 'generator_output_mode',
    'probe_mask_sigma', 'probe_mask_diameter',
)
"""ModelConfig fields with the same name and meaning on both sides, copied as they are."""

CARRIED_TRAINING_FIELDS = (
    'gradient_clip_val', 'gradient_clip_algorithm', 'optimizer', 'momentum', 'weight_decay',
    'adam_beta1', 'adam_beta2', 'scheduler', 'plateau_factor', 'plateau_patience', 'plateau_min_lr',
    'plateau_threshold', 'torch_loss_mode', 'torch_mae_pred_l2_match_target',
)
"""TrainingConfig fields with the same name and meaning on both sides, copied as they are."""


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
        'gridsize': lambda: _gridsize(data.grid_size),
        'n_filters_scale': lambda: model.n_filters_scale,
        'model_type': lambda: _model_type(model.mode),
        'amp_activation': lambda: _amp_activation(model.amp_activation),
        'object_big': lambda: model.object_big,
        'probe_big': lambda: model.probe_big,
        'probe_mask': lambda: _probe_mask_enabled(model.probe_mask) or model.probe_mask_tensor is not None,
        'pad_object': lambda: model.pad_object,
        'probe_scale': lambda: data.probe_scale,
        'gaussian_smoothing_sigma': lambda: model.gaussian_smoothing_sigma,
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
