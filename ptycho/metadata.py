"""PtychoPINN's NPZ metadata record: a JSON string under ``_metadata``, written and read without pickle."""

from __future__ import annotations

import json
import logging
import socket
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from ptycho.config.config import ModelConfig, TrainingConfig
from ptycho.scan_file import METADATA_KEY, parse_metadata

logger = logging.getLogger(__name__)

__all__ = ["MetadataManager", "load_config_from_metadata"]

_CHECKED_PHYSICS = ("nphotons", "N", "gridsize")


def _library_version() -> str:
    try:
        return version("ptychopinn")
    except PackageNotFoundError:
        return "unknown"


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON serialisable")


class MetadataManager:
    """Create, save, load, check and merge the metadata record of a dataset NPZ (as PtychoPINN's).

    The record is stored as a scalar unicode array holding JSON, so ``np.load(allow_pickle=False)``
    reads it. Files from older PtychoPINN that stored it as a pickled object array load without it,
    with a warning: it is never unpickled.
    """

    METADATA_KEY = METADATA_KEY
    CURRENT_SCHEMA_VERSION = "1.0.0"

    @staticmethod
    def create_metadata(config: TrainingConfig, script_name: str, **additional_params) -> dict[str, Any]:
        """The record for a dataset made by ``script_name`` with ``config``'s physics and training settings."""
        metadata: dict[str, Any] = {
            "schema_version": MetadataManager.CURRENT_SCHEMA_VERSION,
            "creation_info": {"timestamp": _utc_now(), "script": script_name, "hostname": socket.gethostname(), "ptychopinn_version": _library_version()},
            "physics_parameters": {
                "nphotons": config.nphotons,
                "gridsize": config.model.gridsize,
                "N": config.model.N,
                "probe_trainable": config.probe_trainable,
                "intensity_scale_trainable": config.intensity_scale_trainable,
                "nll_weight": config.nll_weight,
                "model_type": config.model.model_type,
            },
            "training_parameters": {"n_images": config.n_images, "batch_size": config.batch_size, "nepochs": config.nepochs},
            "data_transformations": [],
        }
        if additional_params:
            metadata["additional_parameters"] = additional_params
        return metadata

    @staticmethod
    def save_with_metadata(file_path, data_dict: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
        """``np.savez_compressed`` of ``data_dict`` plus the JSON record under ``_metadata``."""
        if MetadataManager.METADATA_KEY in data_dict:
            raise ValueError(f"data_dict already has a {MetadataManager.METADATA_KEY!r} key; pass the record as metadata=")
        record = np.array(json.dumps(metadata, indent=2, default=_json_default))
        np.savez_compressed(file_path, **data_dict, **{MetadataManager.METADATA_KEY: record})
        logger.debug("saved %s with metadata", file_path)

    @staticmethod
    def load_with_metadata(file_path) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """``(arrays, metadata)``; metadata is None when absent, unreadable or pickled (never unpickled)."""
        arrays: dict[str, np.ndarray] = {}
        metadata = None
        with np.load(file_path, allow_pickle=False) as data:
            for key in data.files:
                try:
                    value = data[key]
                except ValueError as exc:  # an object array: refused rather than unpickled
                    if key != MetadataManager.METADATA_KEY:
                        raise ValueError(f"{file_path} key {key!r} holds Python objects; pickled members are refused ({exc})") from None
                    logger.warning("%s: skipping the pickled %r record (never unpickled); re-save it as a JSON string", file_path, key)
                    continue
                if key == MetadataManager.METADATA_KEY:
                    metadata = parse_metadata(value, f"{file_path} key {key!r}")
                else:
                    arrays[key] = value
        return arrays, metadata

    @staticmethod
    def validate_parameters(metadata: dict[str, Any] | None, current_config: TrainingConfig) -> list[str]:
        """One message per physics setting (nphotons, N, gridsize) that differs between the record and ``current_config``."""
        if not metadata:
            return []
        stored = metadata.get("physics_parameters", {})
        current = {"nphotons": current_config.nphotons, "N": current_config.model.N, "gridsize": current_config.model.gridsize}
        messages = []
        for name in _CHECKED_PHYSICS:
            if name not in stored:
                continue
            differs = abs(stored[name] - current[name]) > 1e-9 if name == "nphotons" else stored[name] != current[name]
            if differs:
                messages.append(f"{name} mismatch: dataset={stored[name]}, config={current[name]}")
        return messages

    @staticmethod
    def add_transformation_record(metadata: dict[str, Any] | None, tool_name: str, operation: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """Append a record of ``tool_name`` applying ``operation`` (a new record when ``metadata`` is None)."""
        if metadata is None:
            metadata = {"schema_version": MetadataManager.CURRENT_SCHEMA_VERSION, "data_transformations": []}
        entry = {"tool": tool_name, "timestamp": _utc_now(), "operation": operation, "parameters": parameters}
        metadata.setdefault("data_transformations", []).append(entry)
        return metadata

    @staticmethod
    def get_nphotons(metadata: dict[str, Any] | None, default: float = 1e9) -> float:
        """The record's photon count, or ``default``."""
        if metadata is None:
            return default
        return metadata.get("physics_parameters", {}).get("nphotons", default)

    @staticmethod
    def merge_metadata(metadata_list: list[dict[str, Any] | None], merge_strategy: str = "preserve_first") -> dict[str, Any]:
        """Merge records: ``preserve_first`` keeps the first, ``validate_consistent`` also checks nphotons, N and gridsize agree."""
        if merge_strategy not in ("preserve_first", "validate_consistent"):
            raise ValueError(f"Unknown merge strategy: {merge_strategy!r}; use 'preserve_first' or 'validate_consistent'")
        records = [m for m in metadata_list if m is not None]
        merged: dict[str, Any] = dict(records[0]) if records else {"schema_version": MetadataManager.CURRENT_SCHEMA_VERSION}
        if merge_strategy == "validate_consistent":
            first = merged.get("physics_parameters", {})
            for i, other in enumerate(records[1:], 1):
                physics = other.get("physics_parameters", {})
                for name in _CHECKED_PHYSICS:
                    if name in physics and name in first and physics[name] != first[name]:
                        raise ValueError(f"Inconsistent {name} in metadata {i}: {physics[name]} vs {first[name]}")
        merged["merge_info"] = {"timestamp": _utc_now(), "strategy": merge_strategy, "source_count": len(records)}
        return merged


def load_config_from_metadata(metadata: dict[str, Any]) -> TrainingConfig:
    """A TrainingConfig rebuilt from a record's physics and training parameters (PtychoPINN's defaults elsewhere)."""
    physics = metadata.get("physics_parameters", {})
    training = metadata.get("training_parameters", {})
    model = ModelConfig(N=physics.get("N", 64), gridsize=physics.get("gridsize", 1), model_type=physics.get("model_type", "pinn"))
    return TrainingConfig(
        model=model,
        nphotons=physics.get("nphotons", 1e9),
        probe_trainable=physics.get("probe_trainable", False),
        intensity_scale_trainable=physics.get("intensity_scale_trainable", True),
        nll_weight=physics.get("nll_weight", 1.0),
        n_groups=training.get("n_images") or 1000,
        batch_size=training.get("batch_size", 32),
        nepochs=training.get("nepochs", 50),
    )
