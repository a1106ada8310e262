"""Optional torch: whether it is installed, and a clear error for code that needs it."""

from __future__ import annotations

import importlib
import importlib.util

TORCH_AVAILABLE = importlib.util.find_spec("torch") is not None

INSTALL_HINT = (
    "install the CPU build with `pip install -c requirements/cpu.txt -e '.[torch]'` "
    "(or `pip install torch tensordict`; GPU users: install the torch build for your CUDA first)"
)


def require_torch(feature: str):
    """Import and return ``torch``, or raise ImportError saying which feature needs it and how to install it."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ImportError(f"{feature} needs PyTorch, which is not installed; {INSTALL_HINT}") from exc


def as_tensors(arrays: dict):
    """NumPy arrays as torch tensors (sharing memory) when torch is installed, unchanged otherwise."""
    if not TORCH_AVAILABLE:
        return dict(arrays)
    torch = importlib.import_module("torch")
    return {name: None if value is None else torch.as_tensor(value) for name, value in arrays.items()}
