"""The installed ``ptychopinn`` version, recorded in every cache this package writes."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def library_version() -> str:
    try:
        return version("ptychopinn")
    except PackageNotFoundError:
        return "unknown"
