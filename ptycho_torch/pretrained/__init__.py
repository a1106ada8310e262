"""The models that ship with the package: their names, files and pattern sizes, and how to load one without Lightning."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "MODELS_DIR", "UnknownModelError", "available_models", "load_object_network", "load_pretrained",
           "resolve_checkpoint"]

MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "pretrained"
# name -> (weights file, pattern size N); each has a training record <stem>.json beside it (python -m ptycho_torch.pretrained.build)
SHIPPED = {"pretrained": ("pinn64.ckpt", 64)}
# The whole-object network (ptycho_torch.model.object_network): weights file and the pattern size of the scans it was trained
# on; its training record <stem>.json beside it (python -m ptycho_torch.pretrained.build_object_network)
OBJECT_NETWORK = ("object64.pt", 64)


class UnknownModelError(ValueError):
    """A model name that no shipped model has, a pattern size no shipped model was trained on, or a shipped weights file
    that is missing or unreadable."""


def available_models() -> dict[str, int]:
    """``{name: pattern size N}`` of the shipped models whose weights are present in this installation."""
    return {name: N for name, (file, N) in SHIPPED.items() if (MODELS_DIR / file).is_file()}


def resolve_checkpoint(argument: str | Path) -> Path:
    """The checkpoint file ``argument`` names: an existing path, or the name of a shipped model (``pretrained``)."""
    text = str(argument)
    if text in SHIPPED:
        path = MODELS_DIR / SHIPPED[text][0]
        if not path.is_file():
            raise UnknownModelError(f"the shipped model {text!r} is missing from this installation ({path}); rebuild it with `make pretrained`")
        return path
    path = Path(argument)
    if path.exists() or path.is_symlink() or path.suffix in (".ckpt", ".pt", ".pth") or "/" in text:
        return path
    raise UnknownModelError(f"{text!r} is neither a checkpoint file nor a shipped model; shipped models: {_listing()}")


def model_for_pattern_size(name: str, N: int) -> None:
    """Refuse a shipped model for patterns of another size, naming the sizes there are."""
    if name in SHIPPED and SHIPPED[name][1] != int(N):
        raise UnknownModelError(f"the shipped model {name!r} reconstructs {SHIPPED[name][1]} x {SHIPPED[name][1]} patterns, not "
                                f"{N} x {N}; shipped models: {_listing()}; train one for {N} x {N} patterns with ptycho-train")


def load_pretrained(name: str = DEFAULT_MODEL, map_location="cpu"):
    """The shipped model ``name`` as a plain :class:`~ptycho_torch.model.pinn.PtychoPINN` in eval mode (no Lightning)."""
    from ptycho_torch.model.checkpoints import load_network

    if name not in SHIPPED:
        raise UnknownModelError(f"no shipped model is called {name!r}; shipped models: {_listing()}")
    return load_network(resolve_checkpoint(name), map_location=map_location)


def load_object_network(map_location="cpu", path=None):
    """The shipped whole-object network (:class:`~ptycho_torch.model.object_network.ObjectNetwork`) in eval mode, or the one
    whose weights ``path`` holds (written by ``build_object_network --output``)."""
    import torch

    from ptycho_torch.model.checkpoints import first_lines
    from ptycho_torch.model.object_network import ObjectNetwork

    if path is None:
        path = object_network_file()
        fix = "restore it from the package, or rebuild it with `make object-network`"
    else:
        path = Path(path)
        fix = "rebuild it with `python -m ptycho_torch.pretrained.build_object_network --output FILE`"
        if path.is_dir():
            raise UnknownModelError(f"{path} is a directory: give the weights file the build wrote (its --output)")
        if not path.is_file():
            raise UnknownModelError(f"no object network weights at {path}; {fix}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # no object refused: not a torch pickle at all (random bytes, another format)
            raise UnknownModelError(f"the object network {path} is not a readable torch weights file (corrupt or another "
                                    f"format); {fix}") from None
        raise UnknownModelError(f"the object network {path} holds Python objects a weights-only load refuses (nothing in "
                                f"it was run): it is not the network's weights; {fix}") from None
    except Exception as exc:  # torch.load of a damaged file raises many kinds (KeyError for some)
        raise UnknownModelError(f"the object network {path} is not a readable torch weights file (truncated or another "
                                f"format: {type(exc).__name__}: {first_lines(exc, limit=300)}); {fix}") from None
    try:
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
        first = state.get("encoder.0.0.weight")
        network = ObjectNetwork(illumination=getattr(first, "ndim", 0) == 4 and first.shape[1] == 3)  # its inputs, from its first layer
        network.unet.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise UnknownModelError(f"the object network {path} holds weights of another network ({first_lines(exc, 2, limit=300)}); "
                                f"{fix}") from None
    return network.eval()


def object_network_file() -> Path:
    """The shipped object network's weights file, refused (UnknownModelError) when it is missing."""
    path = MODELS_DIR / OBJECT_NETWORK[0]
    if not path.is_file():
        raise UnknownModelError(f"the shipped object network is missing from this installation ({path}); rebuild it with "
                                "`make object-network`")
    return path


def object_network_for_pattern_size(N: int) -> None:
    """Refuse the object network for a scan of patterns of another size than its training scans had."""
    if OBJECT_NETWORK[1] != int(N):
        raise UnknownModelError(f"the shipped object network was trained on scans of {OBJECT_NETWORK[1]} x {OBJECT_NETWORK[1]} patterns, "
                                f"not {N} x {N}; reconstruct without it")


def training_record(name: str = DEFAULT_MODEL) -> dict:
    """The training record of a shipped model: corpus recipe and seeds, settings, commit and CPU time."""
    return json.loads((MODELS_DIR / Path(SHIPPED[name][0]).with_suffix(".json")).read_text())


def _listing() -> str:
    return ", ".join(f"{name} ({N} x {N} patterns)" for name, (_, N) in SHIPPED.items())
