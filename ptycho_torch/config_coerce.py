"""Configs from dataclasses, plain dicts (checkpoint hyper-parameters, JSON) or None, without torch."""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass

__all__ = ["as_config"]


def as_config(value, config_type):
    """A ``config_type`` dataclass from an instance, a plain dict or None (defaults); unknown keys are refused."""
    if value is None:
        return config_type()
    if isinstance(value, config_type):
        return value
    if is_dataclass(value):
        value = asdict(value)
    if not isinstance(value, dict):
        raise TypeError(f"expected a {config_type.__name__} or a dict, got {type(value).__name__}")
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown {config_type.__name__} field(s) {unknown}; valid fields are {sorted(known)}")
    defaults = config_type()
    tuples = {k: tuple(v) for k, v in value.items() if isinstance(v, list) and isinstance(getattr(defaults, k), tuple)}
    return config_type(**{**value, **tuples})
