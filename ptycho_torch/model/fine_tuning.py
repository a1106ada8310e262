"""Training that starts from a checkpoint's network (fine-tuning): its architecture and weights, the user's other settings.

Used by ``ptycho-train --init`` and by the Ptychodus API (``PtychoModel._new_model``). Needs torch, not Lightning.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["DATA_ARCHITECTURE", "adopt_architecture", "architecture_differences", "load_initial_network",
           "start_from"]

DATA_ARCHITECTURE = ("N", "C", "grid_size")  # the DataConfig fields a network is built for


def _model_architecture() -> tuple[str, ...]:
    """The ModelConfig fields a network's weights depend on (``ptycho_torch.api.configs.ARCHITECTURE_FIELDS``)."""
    from ptycho_torch.api.configs import ARCHITECTURE_FIELDS

    return ARCHITECTURE_FIELDS["model_config"]


def load_initial_network(argument, N: int | None = None):
    """``(path, network)``: the plain :class:`~ptycho_torch.model.pinn.PtychoPINN` that ``argument`` names, in eval mode.

    ``argument`` is a shipped model's name (``pretrained``, :mod:`ptycho_torch.pretrained`) or a checkpoint
    path. With ``N`` (the scan's pattern size), a network trained on other patterns is refused. Errors:
    :class:`~ptycho_torch.pretrained.UnknownModelError` (an unknown name, naming the shipped models; a
    shipped model of another size), ``FileNotFoundError``, :class:`~ptycho_torch.model.checkpoints.CheckpointError`,
    ValueError (pattern size) - all naming the file or the name and the fix.
    """
    from ptycho_torch import pretrained
    from ptycho_torch.model.checkpoints import load_network

    text = str(argument)
    if N is not None and text in pretrained.SHIPPED:
        pretrained.model_for_pattern_size(text, N)
    path = pretrained.resolve_checkpoint(argument)
    network = load_network(path)
    if N is not None and network.N != int(N):
        raise ValueError(
            f"the initial model {path} was trained on {network.N} x {network.N} diffraction patterns but the scan holds "
            f"{N} x {N} patterns; start from a model trained at {N} x {N} (shipped: {pretrained._listing()}) or train without one"
        )
    return Path(path), network


def architecture_differences(network, model_config, data_config, fields: dict | None = None) -> list[tuple[str, object, object]]:
    """``[(section.field, configs' value, network's value)]`` for every architecture field where the configs differ from ``network``.

    ``fields`` (``{'model': names, 'data': names}``) limits the comparison, e.g. to the fields a config file sets.
    """
    wanted = {"model": _model_architecture(), "data": DATA_ARCHITECTURE}
    differences = []
    for section, ours, theirs in (("data", data_config, network.data_config), ("model", model_config, network.model_config)):
        for name in wanted[section]:
            if fields is not None and name not in fields.get(section, ()):
                continue
            mine, other = _plain(getattr(ours, name, None)), _plain(getattr(theirs, name, None))
            if mine != other:
                differences.append((f"{section}.{name}", getattr(ours, name, None), getattr(theirs, name, None)))
    return differences


def adopt_architecture(network, model_config, data_config):
    """``(model_config, data_config)`` with every architecture field taken from ``network`` (copies; the rest unchanged)."""
    model = replace(model_config, **{name: getattr(network.model_config, name) for name in _model_architecture()
                                     if hasattr(network.model_config, name)})
    data = replace(data_config, **{name: _plain(getattr(network.data_config, name)) for name in DATA_ARCHITECTURE})
    return model, data


def start_from(module, network) -> None:
    """Copy ``network``'s weights (and batch-norm statistics) into ``module`` (a ``PtychoPINN`` or ``PtychoPINN_Lightning``)."""
    target = getattr(module, "network", module)
    target.load_state_dict(network.state_dict())


def _plain(value):
    return tuple(value) if isinstance(value, list) else value
