"""The configs a user hands the memmap dataset, turned into one ``ptycho`` config and a grouping key."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from pathlib import Path

from ptycho.config.config import InferenceConfig as TFInferenceConfig
from ptycho.config.config import ModelConfig as TFModelConfig
from ptycho.config.config import TrainingConfig as TFTrainingConfig
from ptycho.grouping import GroupingSettings
from ptycho_torch.config_bridge import to_model_config, to_training_config
from ptycho_torch.config_params import DataConfig, DatagenConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_torch.data_settings import check_data_config
from ptycho_torch.store.groups_cache import GroupingKey

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
    """A ``ptycho`` TrainingConfig/InferenceConfig: ``config`` as given, or torch configs through ``config_bridge``.

    ``overrides`` may name fields of the ``ptycho`` ModelConfig (N, gridsize, ...) and of the
    TrainingConfig (n_groups, nphotons, subsample_seed, ...). ``train_data_file`` defaults to the scan.
    Torch configs are checked by ``data_settings.check_data_config``; the bridge's demands for a
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
