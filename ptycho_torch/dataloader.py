"""PtychoPINN's ``ptycho_torch.dataloader`` names: the dataset, its DataLoader, collate functions, NPZ helpers.

``npz_headers`` and ``_get_diffraction_stack`` need only NumPy; the other names import torch when
first used.
"""

from __future__ import annotations

import importlib
import logging

import numpy as np

from ptycho.scan_file import ScanFile, ScanFileError
from ptycho_torch.torch_support import require_torch

logger = logging.getLogger(__name__)

__all__ = [
    "Collate",
    "Collate_Lightning",
    "PtychoDataset",
    "TensorDictDataLoader",
    "npz_headers",
    "upstream_coords_relative",
    "upstream_images",
]

_LAZY = {
    "PtychoDataset": "ptycho_torch.dset_loader_pt_mmap",
    "TensorDictDataLoader": "ptycho_torch.tensordict_loader",
    "IndexBatches": "ptycho_torch.tensordict_loader",
    "Collate": "ptycho_torch.tensordict_loader",
    "Collate_Lightning": "ptycho_torch.tensordict_loader",
    "compact_to": "ptycho_torch.tensordict_loader",
}


def __getattr__(name: str):
    if name in _LAZY:
        require_torch(name)
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def npz_headers(npz) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """``(diffraction shape (n, N, N), xcoords, ycoords)`` of a scan NPZ without reading the stack.

    As PtychoPINN's: ``diffraction`` is preferred over legacy ``diff3d``, and a legacy ``(N, N, n)``
    stack is reported as ``(n, N, N)``. Raises ValueError naming the file when there is no
    diffraction key ("Could not find diffraction data").
    """
    with ScanFile(npz) as scan_file:
        key = _diffraction_key(scan_file)
        layout = scan_file.pattern_layout(key)
        for name in ("xcoords", "ycoords"):
            scan_file.require(name, f"store scan positions (pixels) under {name!r}")
        return (layout.n, layout.N, layout.N), scan_file.load("xcoords"), scan_file.load("ycoords")


def _get_diffraction_stack(npz_file) -> np.ndarray:
    """The ``(n, N, N)`` diffraction stack of a scan NPZ as stored (legacy ``(N, N, n)`` transposed).

    PtychoPINN's helper, same signature and behaviour: ``diffraction`` preferred over ``diff3d``,
    dtype unchanged, ValueError naming the file when neither key exists; never unpickles.
    """
    with ScanFile(npz_file) as scan_file:
        key = _diffraction_key(scan_file)
        layout = scan_file.pattern_layout(key)
        stack = scan_file.load(key)
    if layout.legacy:
        logger.info("%s: legacy %s stack transposed to (n, N, N)", npz_file, stack.shape)
        return np.ascontiguousarray(np.transpose(stack, (2, 0, 1)))
    return stack


def _diffraction_key(scan_file: ScanFile) -> str:
    try:
        return scan_file.diffraction_key()
    except ScanFileError as exc:
        if not any(key in scan_file.headers for key in ("diffraction", "diff3d")):
            raise ScanFileError(
                f"Could not find diffraction data in {scan_file.path}: expected the canonical 'diffraction' key "
                f"or legacy 'diff3d' (keys: {', '.join(sorted(scan_file.keys)) or 'none'}); "
                "store the (n, N, N) amplitude stack under 'diffraction'"
            ) from None
        raise exc


def upstream_images(batch):
    """PtychoPINN's torch ``images`` from a batch: ``round((images / rms_scaling_constant) ** 2)``.

    This project's ``images`` are normalised amplitudes (TensorFlow parity); PtychoPINN's torch
    dataset serves rounded intensities (photon counts). Exact for scans stored as integer counts.
    """
    return ((batch["images"] / batch["rms_scaling_constant"]) ** 2).round()


def upstream_coords_relative(batch):
    """PtychoPINN's torch ``coords_relative`` sign, ``coords_global - coords_center`` (this project's is the TensorFlow ``-``)."""
    return -batch["coords_relative"]
