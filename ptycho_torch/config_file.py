"""Torch configs from a JSON (or, with PyYAML, YAML) file laid out as upstream's: one section per config."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ptycho_torch.config_coerce import as_config
from ptycho_torch.config_params import DataConfig, DatagenConfig, InferenceConfig, ModelConfig, TrainingConfig

__all__ = ["ConfigFileError", "TorchConfigs", "load_torch_configs", "read_config_sections"]

SECTIONS = {
    "data_config": DataConfig,
    "model_config": ModelConfig,
    "training_config": TrainingConfig,
    "inference_config": InferenceConfig,
    "datagen_config": DatagenConfig,
}
YAML_SUFFIXES = (".yaml", ".yml")


class ConfigFileError(ValueError):
    """A config file that cannot be read as torch configs; the message names the file, key and fix."""


@dataclass(frozen=True)
class TorchConfigs:
    """The five torch configs of a file; a missing section is that config's defaults."""

    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    inference: InferenceConfig
    datagen: DatagenConfig


def load_torch_configs(path) -> TorchConfigs:
    """Read ``{"data_config": {...}, "model_config": {...}, ...}``; unknown sections or fields are errors."""
    return TorchConfigs(*read_config_sections(path, SECTIONS).values())


def read_config_sections(path, sections: dict[str, type]) -> dict[str, Any]:
    """Each of ``sections`` (name -> config dataclass) read from a JSON/YAML file; a missing section is its defaults.

    Unknown sections or fields raise :class:`ConfigFileError` naming the file, the section and the valid names.
    """
    path = Path(path)
    document = _read_document(path)
    if not isinstance(document, dict):
        raise ConfigFileError(f"{path} must hold a mapping of sections ({', '.join(sections)}), got {type(document).__name__}")
    unknown = sorted(set(document) - set(sections))
    if unknown:
        raise ConfigFileError(f"{path}: unknown section(s) {unknown}; the sections are {list(sections)}")
    return {name: _config(path, name, config_type, document.get(name) or {}) for name, config_type in sections.items()}


def _read_document(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist; check the path") from None
    if path.suffix.lower() in YAML_SUFFIXES:
        return _read_yaml(path, text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path} is not valid JSON ({exc}); write JSON, or YAML with a .yaml suffix") from None


def _read_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigFileError(
            f"{path} is YAML, which needs PyYAML (pip install pyyaml), not installed here; or write the config as JSON"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML ({exc})") from None


def _config(path: Path, section: str, config_type: type, values: Any):
    if not isinstance(values, dict):
        raise ConfigFileError(f"{path}: section {section!r} must be a mapping of field names to values, got {type(values).__name__}")
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigFileError(f"{path}: {section} has no field(s) {unknown}; {config_type.__name__} fields are {sorted(known)}")
    return as_config(values, config_type)  # JSON lists become tuples for tuple fields (grid_size, bounds)
