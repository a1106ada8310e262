"""The one way a torch config is rebuilt from a dataclass, a plain dict (checkpoint hyper-parameters, JSON) or None, without torch."""

from __future__ import annotations

import copy
import logging
import typing
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

__all__ = ["as_config"]


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
