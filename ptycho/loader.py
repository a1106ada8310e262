"""The model-facing container built from a grouped-data dict, with PtychoPINN's train/test split.

Arrays are NumPy in the contract dtypes; Keras and ``tf_helper`` accept them as they are, so this
package never imports TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ptycho import params

logger = logging.getLogger(__name__)

CONTAINER_FIELDS = (
    "X",
    "Y_I",
    "Y_phi",
    "norm_Y_I",
    "YY_full",
    "coords_nominal",
    "coords_true",
    "nn_indices",
    "global_offsets",
    "local_offsets",
    "probe",
)


class PtychoDataContainer:
    """Model inputs of one scan: normalised diffraction X, ground truth Y and coordinates."""

    def __init__(self, X, Y_I, Y_phi, norm_Y_I, YY_full, coords_nominal, coords_true, nn_indices, global_offsets, local_offsets, probeGuess):
        self.X = X
        self.Y_I = Y_I
        self.Y_phi = Y_phi
        self.norm_Y_I = norm_Y_I
        self.YY_full = YY_full
        self.coords_nominal = coords_nominal
        self.coords = coords_nominal
        self.coords_true = coords_true
        self.nn_indices = nn_indices
        self.global_offsets = global_offsets
        self.local_offsets = local_offsets
        self.probe = probeGuess
        self.Y = (Y_I * np.exp(1j * Y_phi)).astype(np.complex64)

    def to_npz(self, path) -> None:
        """Save every array attribute to an NPZ readable with ``allow_pickle=False``."""
        arrays = {name: getattr(self, name) for name in CONTAINER_FIELDS + ("Y",)}
        np.savez(path, **{name: np.asarray(value) for name, value in arrays.items() if value is not None})

    def __repr__(self) -> str:
        parts = []
        for name in CONTAINER_FIELDS:
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={tuple(np.shape(value))} {np.asarray(value).dtype}")
        return "<PtychoDataContainer " + " ".join(parts) + ">"


def load(cb: Callable, probeGuess, which: str | None, create_split: bool) -> PtychoDataContainer:
    """Build the container from ``cb()``'s grouped-data dict (``(dset, train_frac)`` when splitting)."""
    if create_split:
        dset, train_frac = cb()
    else:
        dset, train_frac = cb(), None
    X = _require_float32("X_full", dset["X_full"])
    Y = dset.get("Y")
    Y = np.ones(X.shape, dtype=np.complex64) if Y is None else _require_complex64(Y)
    per_group = {
        "X": X,
        "Y": Y,
        "coords": np.asarray(dset["coords_start_relative"]),
        "nn_indices": np.asarray(dset["nn_indices"]),
        "global_offsets": np.asarray(dset["coords_offsets"]),
        "local_offsets": np.asarray(dset["coords_relative"]),
    }
    if create_split:
        per_group = {name: split_tensor(value, train_frac, which) for name, value in per_group.items()}
    X, Y = per_group["X"], per_group["Y"]
    coords = per_group["coords"].astype(np.float32)
    container = PtychoDataContainer(
        X,
        np.abs(Y).astype(np.float32),
        np.angle(Y).astype(np.float32),
        scale_nphotons(X),
        None,
        coords,
        coords.copy(),
        per_group["nn_indices"].astype(np.int32),
        per_group["global_offsets"].astype(np.float64),
        per_group["local_offsets"].astype(np.float64),
        probe_mode0(probeGuess),
    )
    logger.debug("loaded %s split: %r", which, container)
    return container


def scale_nphotons(X: np.ndarray) -> np.float32:
    """The amplitude factor that brings X's mean photon count per group to ``params.cfg['nphotons']``."""
    mean_photons = np.mean(np.einsum("bijc,bijc->b", X, X, dtype=np.float64))
    return np.float32(np.sqrt(params.get("nphotons") / mean_photons))


def split_data(X_full, coords_nominal, coords_true, train_frac: float, which: str):
    """The first ``int(len * train_frac)`` groups for ``'train'``, the rest for ``'test'``."""
    if which not in ("train", "test"):
        raise ValueError(f"Invalid split type {which!r}: must be 'train' or 'test'.")
    return tuple(split_tensor(array, train_frac, which) for array in (X_full, coords_nominal, coords_true))


def split_tensor(tensor, frac: float, which: str = "test"):
    """The training head (``which='train'``) or test tail of ``tensor`` at ``int(len * frac)``."""
    n_train = int(len(tensor) * frac)
    return tensor[:n_train] if which == "train" else tensor[n_train:]


def probe_mode0(probe) -> np.ndarray:
    """The ``(N, N)`` complex64 probe: mode 0 of a ``(modes, N, N)`` stack."""
    array = np.asarray(probe)
    if array.ndim == 3:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"probe must be (N, N) or (modes, N, N), got shape {np.shape(probe)}")
    return array.astype(np.complex64)


def _require_float32(name: str, array) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {array.dtype}; group the data with RawData.generate_grouped_data")
    return array


def _require_complex64(Y) -> np.ndarray:
    Y = np.asarray(Y)
    if Y.dtype != np.complex64:
        raise ValueError(f"Y must be complex64, got {Y.dtype}; a real or float64 Y silently wrecks training: store complex64 patches")
    return Y
