"""Torch configs read and rebuilt (torch-free): the one config-file format and the one :func:`as_config`.

A config file is JSON (or, with PyYAML, YAML) with one section per config, ``data`` or PtychoPINN's
``data_config``, etc. :func:`as_config` rebuilds a config from a dataclass, a plain dict (checkpoint
hyper-parameters, a file's section, JSON) or None on every path: files, checkpoints, the model, the
Ptychodus API. ``PRESETS`` are ``ptycho-train``'s named starting settings, applied under the file's
values (:func:`apply_preset`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Mapping

from ptycho_torch.config_params import DataConfig, DatagenConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_torch.store.atomic import read_regular

logger = logging.getLogger(__name__)

__all__ = ["ConfigFile", "ConfigFileError", "DEFAULT_PRESET", "PRESETS", "Preset", "TorchConfigs", "apply_preset", "as_config",
           "load_torch_configs", "read_config_file", "read_config_sections"]

SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "inference": InferenceConfig,
    "datagen": DatagenConfig,
}
"""The sections of a config file; each may also be spelled as PtychoPINN's config files do, with ``SPELLING_SUFFIX``."""
SPELLING_SUFFIX = "_config"  # "data_config" is the section "data"
YAML_SUFFIXES = (".yaml", ".yml")
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few kB; this bounds what is read
MAX_CONFIG_VALUES = 100_000  # values after YAML aliases are expanded (a 256 x 256 probe_mask fits)
# Fields that must be > 0 (or >= 0), by config class; None is left to the field's type check.
POSITIVE_FIELDS = {
    DataConfig: ("N", "C", "K", "nphotons"),
    ModelConfig: ("n_filters_scale", "object_estimate_steps"),
    TrainingConfig: ("epochs", "batch_size", "n_groups", "learning_rate", "n_devices", "accum_steps"),
    InferenceConfig: ("batch_size",),
}
NON_NEGATIVE_FIELDS = {DataConfig: ("subsample_seed",), TrainingConfig: ("num_workers", "warmup_epochs", "lr_warmup_epochs")}


def as_config(value: Any, config_type: type, *, unknown: Literal["refuse", "drop"] = "refuse"):
    """A new ``config_type`` dataclass from an instance (deep-copied, never aliased), a dataclass or a plain dict, or None (defaults).

    Lists become tuples where the field is typed as a tuple. Keys ``config_type`` does not know are a
    ValueError listing the valid fields (``unknown='refuse'``, for what a user or a file gives), or
    logged as a warning and dropped (``unknown='drop'``, for the configs stored in a checkpoint, so
    one written by a newer version still loads). Any other type of value is a TypeError.
    """
    if value is None:
        return config_type()
    if isinstance(value, config_type):
        return copy.deepcopy(value)
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if not isinstance(value, dict):
        raise TypeError(f"{config_type.__name__} must be given as a {config_type.__name__}, a dict or None, got {type(value).__name__}")
    known = {f.name for f in fields(config_type)}
    extra = sorted(set(map(str, value)) - known)
    if extra and unknown == "refuse":
        raise ValueError(f"unknown {config_type.__name__} field(s) {extra}; valid fields are {sorted(known)}")
    if extra:
        logger.warning("%s: ignoring unknown keys %s (a checkpoint written by another version)", config_type.__name__, ", ".join(extra))
    hints = typing.get_type_hints(config_type)
    return config_type(**{name: _as_tuple_if_typed(hints[name], item) for name, item in value.items() if name in known})


def _as_tuple_if_typed(hint: Any, item: Any) -> Any:
    if isinstance(item, list) and typing.get_origin(hint) is tuple:
        return tuple(item)
    return item


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


@dataclass(frozen=True)
class ConfigFile:
    """The configs of a file by section (``data``, ``model``, ...), the field names each section set, and how the file spelled it."""

    configs: dict[str, Any]
    given: dict[str, frozenset[str]]
    spelled: dict[str, str]

    @classmethod
    def defaults(cls, sections: dict[str, type]) -> ConfigFile:
        """What a file without any section gives: every config at its defaults."""
        return cls({name: config_type() for name, config_type in sections.items()}, {name: frozenset() for name in sections},
                   {name: name for name in sections})


def load_torch_configs(path) -> TorchConfigs:
    """Read ``{"data": {...}, "model": {...}, ...}`` (or ``data_config``, ``model_config``, ...); unknown sections or fields are errors."""
    return TorchConfigs(*read_config_sections(path, SECTIONS).values())


def read_config_sections(path, sections: dict[str, type] = SECTIONS) -> dict[str, Any]:
    """Each of ``sections`` (name -> config dataclass) read from a JSON/YAML file; a missing section is its defaults.

    A section ``data`` may also be written ``data_config`` (PtychoPINN's spelling), not both. Unknown
    sections or fields raise :class:`ConfigFileError` naming the file, the section and the valid names.
    """
    return read_config_file(path, sections).configs


def read_config_file(path, sections: dict[str, type] = SECTIONS) -> ConfigFile:
    """:func:`read_config_sections` and which fields the file set; every value is checked before any work.

    The file may hold at most ``MAX_CONFIG_BYTES`` and expand (YAML aliases) to at most
    ``MAX_CONFIG_VALUES`` values; each field must have its dataclass type (an integral float is taken
    for an int, a list for a tuple) and the counts and sizes of ``POSITIVE_FIELDS`` must be positive.
    Errors name the field as the file writes it, e.g. ``training.epochs`` or ``training_config.epochs``.
    """
    path = Path(path)
    document = _read_document(path)
    _require_bounded(path, document)
    if not isinstance(document, dict):
        raise ConfigFileError(f"{path} must hold a mapping of sections ({', '.join(sections)}), got {type(document).__name__}")
    spelled = _section_spellings(path, document, sections)
    configs, given = {}, {}
    for name, config_type in sections.items():
        values = document.get(spelled[name]) or {}
        configs[name] = _config(path, spelled[name], config_type, values)
        given[name] = frozenset(values)
    return ConfigFile(configs, given, spelled)


# ---- presets: named starting settings under the file's values ------------------------------------

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
    """Set the preset's fields on ``configs`` (section -> config), except those ``given`` (section -> field names) sets.

    A preset field read only while another setting is in effect (``config_resolve.DEFAULT_ONLY``'s ``honoured_when``, e.g.
    ``lr_min_ratio`` only with ``scheduler='WarmupCosine'``) is left at its default when the file turns that setting off:
    it goes with the preset's setting, which the file replaced."""
    from ptycho_torch.config_resolve import default_only_fields

    preset = PRESETS[name]
    applied, skipped = [], []
    for section, values in preset.sections.items():
        config = configs[section]
        rules = default_only_fields(type(config))
        for name_, value in values.items():
            if name_ not in given.get(section, frozenset()):
                setattr(config, name_, value)
                applied.append((section, config, name_, value, rules.get(name_)))
    for section, config, name_, value, rule in applied:
        if rule is not None and rule.honoured_when is not None and not rule.honoured_when(config):
            default = getattr(type(config)(), name_)
            setattr(config, name_, default)
            if value != default:
                skipped.append(f"{section}.{name_}")
    shown = [f"{section}.{name_}={value}" for section, config, name_, value, _ in applied if getattr(config, name_) == value]
    logger.info("preset %r: %s%s", preset.name, ", ".join(shown) or "every field at its default",
                f" (not {', '.join(skipped)}: the config file's settings do not read {'it' if len(skipped) == 1 else 'them'})" if skipped else "")


def _section_spellings(path: Path, document: dict, sections: dict[str, type]) -> dict[str, str]:
    """How the file names each section (``data`` or ``data_config``); unknown sections, or one written both ways, are errors."""
    spellings = {name: (name, name + SPELLING_SUFFIX) for name in sections}
    unknown = sorted(set(map(str, document)) - {spelling for pair in spellings.values() for spelling in pair})
    if unknown:
        raise ConfigFileError(f"{path}: unknown section(s) {unknown}; the sections are {list(sections)} "
                              f"(or {[name + SPELLING_SUFFIX for name in sections]})")
    spelled = {}
    for name, pair in spellings.items():
        written = [spelling for spelling in pair if spelling in document]
        if len(written) > 1:
            raise ConfigFileError(f"{path}: sections {written[0]!r} and {written[1]!r} are the same config; merge them into one")
        spelled[name] = written[0] if written else name
    return spelled


def _read_document(path: Path) -> Any:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist; check the path") from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{path} holds {size:,} bytes; a config file may hold at most {MAX_CONFIG_BYTES:,}: pass the configs only")
    try:
        text = read_regular(path)[: MAX_CONFIG_BYTES + 1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); write the config as JSON or YAML") from None
    try:
        if path.suffix.lower() in YAML_SUFFIXES:
            return _read_yaml(path, text)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path} is not valid JSON ({exc}); write JSON, or YAML with a .yaml suffix") from None
    except RecursionError:
        raise ConfigFileError(f"{path} nests its values too deeply to be a config; write flat sections of fields") from None


def _require_bounded(path: Path, document: Any) -> None:
    """Refuse a document of more than ``MAX_CONFIG_VALUES`` values, counting each use of a YAML alias (never recursing)."""
    pending, seen = [document], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigFileError(
                f"{path} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeat what they name); "
                "write the fields out without nested aliases"
            )
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, (list, tuple)):
            pending.extend(value)


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
        raise ConfigFileError(f"{path} is not valid YAML ({' '.join(str(exc).split())})") from None


def _config(path: Path, section: str, config_type: type, values: Any):
    if not isinstance(values, dict):
        raise ConfigFileError(f"{path}: section {section!r} must be a mapping of field names to values, got {type(values).__name__}")
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(map(str, values)) - known)
    if unknown:
        raise ConfigFileError(f"{path}: {section} has no field(s) {unknown}; {config_type.__name__} fields are {sorted(known)}")
    hints = typing.get_type_hints(config_type)
    checked = {name: _checked(hints[name], value, f"{path}: {section}.{name}") for name, value in values.items()}
    for name in _listed(POSITIVE_FIELDS, config_type):
        _require_at_least(checked.get(name), f"{path}: {section}.{name}", "> 0", lambda v: v > 0)
    for name in _listed(NON_NEGATIVE_FIELDS, config_type):
        _require_at_least(checked.get(name), f"{path}: {section}.{name}", ">= 0", lambda v: v >= 0)
    return as_config(checked, config_type)


def _listed(table: dict[type, tuple[str, ...]], config_type: type) -> tuple[str, ...]:
    """The fields ``table`` lists for ``config_type`` or the config class it extends (a command's own section)."""
    return next((table[cls] for cls in config_type.__mro__ if cls in table), ())


def _require_at_least(value: Any, where: str, bound: str, holds) -> None:
    if value is not None and not holds(value):
        raise ConfigFileError(f"{where} must be {bound}, got {value!r}")


def _checked(hint: Any, value: Any, where: str) -> Any:
    """``value`` as the field type ``hint`` (int from an integral float, tuple from a list), or ConfigFileError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _checked(inner, value, where)
    if origin is typing.Literal:
        if isinstance(value, str) and value in args:
            return value
        raise ConfigFileError(f"{where} must be one of {list(args)}, got {_shown(value)}")
    if origin in (tuple, list):
        items = args if origin is tuple else None
        if not isinstance(value, (list, tuple)) or (items is not None and len(value) != len(items)):
            shape = f"a list of {len(items)}" if items is not None else "a list"
            raise ConfigFileError(f"{where} must be {shape} ({_type_name(hint)}), e.g. {_example(hint)}, got {_shown(value)}")
        checked = [_checked(items[i] if items else args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(checked) if origin is tuple else checked
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigFileError(f"{where} must be true or false, got {_shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigFileError(f"{where} must be text, got {_shown(value)}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        if number and math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise ConfigFileError(f"{where} must be an integer, got {_shown(value)}{_yaml_number_hint(value)}")
    if hint is float:
        if number and math.isfinite(value):
            return float(value)
        raise ConfigFileError(f"{where} must be a finite number, got {_shown(value)}{_yaml_number_hint(value)}")
    return value


def _yaml_number_hint(value: Any) -> str:
    """PyYAML reads ``1e6`` (no dot) as text: say how to write it as a number."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f" (text, not a number: in YAML write {value!r} with a dot, e.g. 1.0e6, or without quotes)"
    return ""


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "")


def _example(hint: Any) -> str:
    args = typing.get_args(hint)
    return "[2, 2]" if args and all(arg is int for arg in args) else "[0.1, 0.9]" if args else "[]"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
