"""Reading a PtychoPINN checkpoint safely: ``weights_only=True`` always, and one clear error per kind of bad file."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "known_hyper_parameters", "load_network", "network_configs", "read_checkpoint", "read_checkpoint_bytes", "REQUIRED_CONFIGS",
           "require_weights_fit", "SETTINGS_BEFORE_THEY_EXISTED", "upgrade_legacy_settings"]

REQUIRED_CONFIGS = ("model_config", "data_config")  # what rebuilds the network; training/inference default if absent
# What a checkpoint written before a ModelConfig field existed was trained with (checked in this order).
SETTINGS_BEFORE_THEY_EXISTED = (("generator_input", "diffraction"), ("generator_output", "object"), ("base_filters", 32))
HYPER_PARAMETERS = ("seed",)  # stored beside the configs (REQUIRED_CONFIGS and the others of pinn.CONFIG_NAMES)
NETWORK_PREFIX = "network."  # state-dict keys of PtychoPINN_Lightning's PtychoPINN; checkpoints of 0b10270 and before have none
# What the weights-only unpickler says when it refuses an object (a global, a class, a call), not damaged bytes.
_OBJECT_REFUSALS = ("GLOBAL", "Can only", "reduce for", "add_safe_globals", "persistent_load", "must be imported")
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
        if not any(sign in str(exc) for sign in _OBJECT_REFUSALS):  # no object was refused: not a torch pickle at all (text, ...)
            raise CheckpointError(f"checkpoint {path} is not a readable torch checkpoint (corrupt or another format: "
                                  f"{_refused_global(exc, 'not a pickle of tensors and plain values')}); {_FIX}") from None
        raise CheckpointError(
            f"checkpoint {path} holds Python objects a weights-only load refuses ({_refused_global(exc)}; nothing in "
            f"it was run); it was not written by PtychoPINN training; {_FIX}"
        ) from None
    except MemoryError:
        raise  # the machine's state, not the file's
    except Exception as exc:  # torch.load of arbitrary bytes raises many kinds (KeyError, IndexError, RuntimeError, ...)
        raise CheckpointError(f"checkpoint {path} is not a readable torch checkpoint (truncated or another format: "
                              f"{type(exc).__name__}: {first_lines(exc)}); {_FIX}") from None
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


def _refused_global(exc: BaseException, default: str = "an object other than tensors and plain values") -> str:
    """The weights-only unpickler's own reason (e.g. ``Unsupported global: GLOBAL posix.system``), not its advice to bypass it."""
    reasons = [line.split("error:", 1)[-1].strip() for line in str(exc).splitlines() if "WeightsUnpickler error" in line]
    reasons = [reason for reason in reasons if reason]
    return reasons[0][:200] if reasons else default


def first_lines(exc: BaseException, n: int = 1, limit: int = 200) -> str:
    """The first ``n`` non-blank lines of ``exc``'s message, joined and cut at ``limit`` characters (its type when empty)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[:n])[:limit] if lines else type(exc).__name__


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


def network_configs(path, hparams: dict, overrides: dict | None = None) -> dict:
    """The configs (``CONFIG_NAMES`` -> dataclass) a checkpoint's network is rebuilt from.

    Keyword ``overrides`` replace the stored configs; settings the stored ``model_config`` predates
    are set to their old behaviour (:func:`upgrade_legacy_settings`). A stored config that is not one
    (not a dict, or with fields :func:`known_hyper_parameters` did not drop) is a :class:`CheckpointError`.
    """
    from dataclasses import replace

    from ptycho_torch.config_file import as_config
    from ptycho_torch.config_params import ModelConfig

    overrides = overrides or {}
    configs = {}
    for name, config_type in _config_types().items():
        if overrides.get(name) is not None:
            configs[name] = as_config(overrides[name], config_type)  # the caller's: an unknown field is refused
            continue
        try:
            configs[name] = as_config(hparams.get(name), config_type)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: its hyper_parameters' {name} is not usable ({first_lines(exc)}); {_FIX}") from None
    legacy = upgrade_legacy_settings(hparams.get("model_config"))
    if legacy:
        configs["model_config"] = replace(as_config(configs["model_config"], ModelConfig), **legacy)
    return configs


def _config_types() -> dict:
    """``CONFIG_NAMES`` -> config dataclass (a function: this module imports no config module at import time)."""
    from ptycho_torch.config_params import DataConfig, InferenceConfig, ModelConfig, TrainingConfig

    return {"model_config": ModelConfig, "data_config": DataConfig, "training_config": TrainingConfig, "inference_config": InferenceConfig}


def known_hyper_parameters(path, hparams) -> dict:
    """A checkpoint's ``hyper_parameters`` without what this version does not know (the same object if nothing is dropped).

    A checkpoint written by another version may store config fields (or hyper-parameters) this one
    lacks: they are dropped with one WARNING naming the file and the keys, and the network is rebuilt
    from the rest (a field this version lacks is a behaviour it does not have). Config *files* and
    configs given in Python still refuse unknown fields (:func:`~ptycho_torch.config_file.as_config`).
    """
    from dataclasses import fields

    if not isinstance(hparams, dict):
        return hparams
    types = _config_types()
    cleaned, unknown = {}, []
    for key, value in hparams.items():
        if key not in types:
            if key in HYPER_PARAMETERS:
                cleaned[key] = value
            else:
                unknown.append(str(key))
            continue
        if isinstance(value, dict):
            known = {field.name for field in fields(types[key])}
            unknown += [f"{key}.{name}" for name in sorted(map(str, value)) if name not in known]
            value = {name: item for name, item in value.items() if name in known}
        cleaned[key] = value
    if not unknown:
        return hparams  # the same object: nothing was dropped
    logger.warning("checkpoint %s: ignoring unknown key(s) %s in its hyper_parameters (written by another version?); "
                   "the network is rebuilt from the others", path, ", ".join(unknown))
    return cleaned


def require_weights_fit(path, configs: dict, state_dict: dict, *, overridden: bool = False, strict: bool = True) -> None:
    """Refuse, before any memory is allocated for it, a network of ``configs`` that ``state_dict`` does not fit.

    The network is built on the ``meta`` device (shapes only, no storage), so a damaged or edited
    setting (``n_filters_scale=4096``) is a :class:`CheckpointError` naming the file, the first
    differing key and both shapes, not an allocation of hundreds of GB; settings the network refuses
    (e.g. ``object_estimate_steps`` beyond its bound) are a CheckpointError naming the file and the field.
    """
    from ptycho_torch.model.pinn import PtychoPINN

    restore = f"restore the settings it was trained with (its hyper_parameters were edited or damaged?), or {_FIX}"
    try:
        with torch.device("meta"):
            expected = {key: tuple(value.shape) for key, value in PtychoPINN(**configs).state_dict().items()}
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"checkpoint {path}: the network of its configs cannot be built ({first_lines(exc)}); "
                              + ("correct the configs given to override its own" if overridden else restore)) from None
    stored = {key: tuple(getattr(value, "shape", ())) for key, value in network_state(state_dict).items()}
    problem = next((f"{key!r} is {stored[key]} in the checkpoint but {shape} in the network" for key, shape in expected.items()
                    if key in stored and stored[key] != shape), None)
    if problem is None and strict:
        problem = next((f"{key!r} of the network is missing from the checkpoint" for key in expected if key not in stored), None)
        problem = problem or next((f"the checkpoint holds {key!r}, which the network has not" for key in stored if key not in expected), None)
    if problem is not None:
        mc, dc = configs["model_config"], configs["data_config"]
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the network of its configs ({problem}; network of "
            f"model_config.n_filters_scale={getattr(mc, 'n_filters_scale', None)!r}, base_filters={getattr(mc, 'base_filters', None)!r}, "
            f"generator_input={getattr(mc, 'generator_input', None)!r}, data_config.grid_size={getattr(dc, 'grid_size', None)!r}); "
            + ("load it without overriding model_config/data_config, or train a model with these settings" if overridden else restore)
        )


def load_network(path, map_location="cpu", **overrides):
    """The plain :class:`~ptycho_torch.model.pinn.PtychoPINN` of a checkpoint, in eval mode, without Lightning.

    Reads with ``weights_only=True`` (:func:`read_checkpoint`); keyword configs (``model_config``,
    ``data_config``, ``training_config``, ``inference_config``) override the stored ones; unknown fields
    of the stored ones (a checkpoint of another version) are dropped with a WARNING
    (:func:`known_hyper_parameters`). Weights that do
    not fit the network of the configs, and configs the network refuses, raise :class:`CheckpointError`
    before the network is built (:func:`require_weights_fit`).
    """
    from ptycho_torch.model.pinn import CONFIG_NAMES, PtychoPINN

    checkpoint = read_checkpoint(path, map_location=map_location, overrides=overrides)
    hparams = known_hyper_parameters(path, checkpoint.get("hyper_parameters")) or {}
    configs = network_configs(path, hparams, overrides)
    require_weights_fit(path, configs, checkpoint["state_dict"], overridden=any(overrides.get(name) is not None for name in CONFIG_NAMES))
    network = PtychoPINN(**configs, seed=int(hparams.get("seed", 0) or 0))
    try:
        network.load_state_dict(network_state(checkpoint["state_dict"]))
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the network of its configs ({first_lines(exc)}); "
            "load it without overriding model_config/data_config, or train a model with these settings"
        ) from None
    return network.to(map_location).eval()
