"""Typed configuration dataclasses and their bridge to the legacy ``ptycho.params.cfg``."""

from .config import (
    KEY_MAPPINGS,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
    dataclass_to_legacy_dict,
    update_legacy_dict,
    validate_inference_config,
    validate_model_config,
    validate_training_config,
)

__all__ = [
    'InferenceConfig',
    'KEY_MAPPINGS',
    'ModelConfig',
    'TrainingConfig',
    'dataclass_to_legacy_dict',
    'update_legacy_dict',
    'validate_inference_config',
    'validate_model_config',
    'validate_training_config',
]
