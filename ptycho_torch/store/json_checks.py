"""Checks that JSON this package reads back (manifests, cache metadata) has the shape it writes."""

from __future__ import annotations

import json
from typing import get_args


def parse_json_object(text: str | bytes) -> dict:
    """A JSON object, or ValueError for anything else (wrong shape, too deeply nested, not UTF-8)."""
    try:
        values = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(values, dict):
        raise ValueError(f"expected a JSON object, found {type(values).__name__}")
    return values


def has_signature(values: dict, signature: dict) -> bool:
    """Whether ``values`` has every field of ``signature`` with its type."""
    return all(name in values and has_type(values[name], kind) for name, kind in signature.items())


def has_type(value, kind) -> bool:
    """Whether a JSON value has the Python type ``kind`` (``int`` excludes bool; unions accept any member)."""
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(kind, type):
        return isinstance(value, kind)
    return any(has_type(value, option) for option in get_args(kind)) if get_args(kind) else True
