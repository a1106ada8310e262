"""Reading a PtychoPINN checkpoint safely: ``weights_only=True`` always, and one clear error per kind of bad file."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

__all__ = ["CheckpointError", "load_network", "read_checkpoint", "read_checkpoint_bytes", "REQUIRED_CONFIGS", "SETTINGS_BEFORE_THEY_EXISTED",
           "upgrade_legacy_settings"]

REQUIRED_CONFIGS = ("model_config", "data_config")  # what rebuilds the network; training/inference default if absent
# What a checkpoint written before a ModelConfig field existed was trained with (checked in this order).
SETTINGS_BEFORE_THEY_EXISTED = (("generator_input", "diffraction"), ("generator_output", "object"), ("base_filters", 32))
NETWORK_PREFIX = "network."  # state-dict keys of PtychoPINN_Lightning's PtychoPINN; checkpoints of 0b10270 and before have none
_FIX = "use a .ckpt written by ptycho-train (or PtychoPINN_Lightning training), e.g. RUN_DIR/checkpoints/best-checkpoint.ckpt"


class CheckpointError(ValueError):
    """A file that is not a usable PtychoPINN checkpoint; the message names it, says what is wrong and what to do."""


def read_checkpoint_bytes(path) -> bytes:
    """The bytes of the checkpoint file ``path``; missing, empty or not a regular file is a clear error."""
    from ptycho_torch.store.atomic import NotRegularFileError, read_regular

    path = Path(path)
    try:
        data = read_regular(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist; {_FIX}") from None
    except (NotRegularFileError, IsADirectoryError):
        raise CheckpointError(f"checkpoint {path} is not a regular file; {_FIX}") from None
    if not data:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes; its writing was interrupted?); {_FIX}")
    return data


def read_checkpoint(path, data: bytes | None = None, map_location="cpu", overrides: dict | None = None) -> dict:
    """The checkpoint dict of ``path`` (or of its ``data``), loaded with ``weights_only=True``, checked to be PtychoPINN's.

    It must hold a ``state_dict`` and, unless ``overrides`` supply them, the ``REQUIRED_CONFIGS`` in
    ``hyper_parameters``. A file that needs unpickling of arbitrary objects is refused: nothing in it runs.
    """
    data = read_checkpoint_bytes(path) if data is None else data
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} holds Python objects a weights-only load refuses ({_refused_global(exc)}; nothing in "
            f"it was run); it was not written by PtychoPINN training; {_FIX}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable torch checkpoint (truncated or another format: "
                              f"{type(exc).__name__}: {_first_line(exc)}); {_FIX}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} holds no 'state_dict' (network weights); {_FIX}")
    hparams = checkpoint.get("hyper_parameters")
    missing = [name for name in REQUIRED_CONFIGS
               if not (isinstance(hparams, dict) and hparams.get(name) is not None) and (overrides or {}).get(name) is None]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} holds no {' or '.join(missing)} in 'hyper_parameters', so the network it was trained "
            f"with is unknown (not written by PtychoPINN_Lightning training?); {_FIX}"
        )
    return checkpoint


def _refused_global(exc: BaseException) -> str:
    """The weights-only unpickler's own reason (e.g. ``Unsupported global: GLOBAL posix.system``), not its advice to bypass it."""
    reasons = [line.split("error:", 1)[-1].strip() for line in str(exc).splitlines() if "WeightsUnpickler error" in line]
    return reasons[0][:200] if reasons else "an object other than tensors and plain values"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def upgrade_legacy_settings(stored_model_config) -> dict:
    """``{field: value}`` of the settings a checkpoint's stored ``model_config`` dict predates, at their old behaviour.

    Before ``generator_input`` the network read the diffraction; before ``generator_output`` it output the
    object itself; before ``base_filters`` its first width was 32 per ``n_filters_scale``.
    """
    if not isinstance(stored_model_config, dict):
        return {}
    return {name: old for name, old in SETTINGS_BEFORE_THEY_EXISTED if name not in stored_model_config}


def network_state(state_dict: dict) -> dict:
    """The state dict of the plain network: Lightning's ``network.`` prefix removed (older checkpoints have none)."""
    return {key[len(NETWORK_PREFIX):] if key.startswith(NETWORK_PREFIX) else key: value for key, value in state_dict.items()}


def load_network(path, map_location="cpu", **overrides):
    """The plain :class:`~ptycho_torch.model.pinn.PtychoPINN` of a checkpoint, in eval mode, without Lightning.

    Reads with ``weights_only=True`` (:func:`read_checkpoint`); keyword configs (``model_config``,
    ``data_config``, ``training_config``, ``inference_config``) override the stored ones. Weights that do
    not fit the network of the configs raise :class:`CheckpointError`.
    """
    from dataclasses import replace

    from ptycho_torch.config_file import as_config
    from ptycho_torch.config_params import ModelConfig
    from ptycho_torch.model.pinn import CONFIG_NAMES, PtychoPINN

    checkpoint = read_checkpoint(path, map_location=map_location, overrides=overrides)
    hparams = checkpoint.get("hyper_parameters") or {}
    configs = {name: overrides[name] if overrides.get(name) is not None else hparams.get(name) for name in CONFIG_NAMES}
    legacy = upgrade_legacy_settings(hparams.get("model_config"))
    if legacy:
        configs["model_config"] = replace(as_config(configs["model_config"], ModelConfig), **legacy)
    network = PtychoPINN(**configs, seed=int(hparams.get("seed", 0) or 0))
    try:
        network.load_state_dict(network_state(checkpoint["state_dict"]))
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the network of its configs ({_first_line(exc)}); "
            "load it without overriding model_config/data_config, or train a model with these settings"
        ) from None
    return network.to(map_location).eval()
