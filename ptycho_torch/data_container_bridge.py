"""PtychoDataContainerTorch: the model-facing container as torch tensors (NumPy without torch)."""

from __future__ import annotations

import logging

import numpy as np

from ptycho.loader import CONTAINER_FIELDS, load
from ptycho_torch.torch_support import as_tensors

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("X_full", "coords_offsets", "coords_relative", "nn_indices")
ATTRIBUTES = CONTAINER_FIELDS + ("Y", "coords")


class PtychoDataContainerTorch:
    """The model-facing container of one scan's groups: ``ptycho.loader.load``'s attributes, shapes and dtypes.

    With ``B`` groups of ``C = gridsize**2`` patterns of ``N x N`` (specs/data_contracts.md section 3):

    - ``X``: ``(B, N, N, C)`` float32, normalised amplitudes (``X_full``).
    - ``Y``: ``(B, N, N, C)`` complex64 ground-truth patches (ones without ground truth);
      ``Y_I``, ``Y_phi``: ``(B, N, N, C)`` float32, its amplitude and phase in radians.
    - ``coords_nominal`` (= ``coords``), ``coords_true``: ``(B, 1, 2, C)`` float32 start offsets,
      object pixels.
    - ``global_offsets``: ``(B, 1, 2, 1)`` float64 group centres, object pixels;
      ``local_offsets`` (= ``coords_relative``, PtychoPINN's name): ``(B, 1, 2, C)`` float64, pixels.
    - ``nn_indices``: ``(B, C)`` int32 pattern indices; ``probe``: ``(N, N)`` complex64 (mode 0 of a stack);
      ``norm_Y_I``: float32 scalar.

    Attributes are torch tensors when torch is installed (``TORCH_AVAILABLE``), NumPy arrays otherwise.

    Args:
        grouped_data: the dict of ``RawDataTorch.generate_grouped_data`` or
            ``MemmapDatasetBridge.get_grouped_data``. Without ``coords_start_relative`` the start
            coordinates are the nominal ones (``coords_relative``).
        probe: ``(N, N)`` complex probe or ``(modes, N, N)`` stack.

    Refused, never cast: grouped data missing ``X_full``, ``coords_offsets``, ``coords_relative`` or
    ``nn_indices`` (ValueError); an ``X_full`` that is not float32 (TypeError); a ``Y`` that is not
    complex64 (ValueError, DATA-001); a probe that is not ``(N, N)`` or ``(modes, N, N)``.
    """

    def __init__(self, grouped_data: dict, probe):
        missing = [key for key in REQUIRED_KEYS if grouped_data.get(key) is None]
        if missing:
            raise ValueError(
                f"grouped data is missing {', '.join(missing)}; build it with "
                "RawDataTorch.generate_grouped_data() or MemmapDatasetBridge.get_grouped_data()"
            )
        if grouped_data.get("coords_start_relative") is None:  # PtychoPINN's container accepts this: start = nominal
            grouped_data = {**grouped_data, "coords_start_relative": grouped_data["coords_relative"]}
        container = load(lambda: grouped_data, probe, which=None, create_split=False)
        arrays = {name: getattr(container, name) for name in ATTRIBUTES}
        arrays["coords_relative"] = container.local_offsets
        arrays["norm_Y_I"] = np.asarray(container.norm_Y_I, dtype=np.float32)
        for name, value in as_tensors(arrays).items():
            setattr(self, name, value)

    @classmethod
    def from_cache(cls, npz_path, config, memmap_dir="data/memmap", **bridge_options) -> PtychoDataContainerTorch:
        """The container of ``npz_path`` built from its memory map and ``.groups_cache.npz`` (made if missing).

        Equal, attribute by attribute, to ``cls(RawDataTorch(...).generate_grouped_data(...), probe)``
        with the grouping ``config`` (a ``ptycho`` TrainingConfig/InferenceConfig, or a
        ``(DataConfig, ModelConfig, TrainingConfig)`` tuple) asks for; ``memmap_dir`` holds the
        caches; see :class:`MemmapDatasetBridge` for the options and what is refused.
        """
        from ptycho_torch.memmap_bridge import MemmapDatasetBridge

        bridge = MemmapDatasetBridge(npz_path, config, memmap_dir, **bridge_options)
        return cls(bridge.grouped_data(), bridge.probe)

    def __repr__(self) -> str:
        parts = [
            f"{name}={tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
            for name in CONTAINER_FIELDS
            if (value := getattr(self, name)) is not None
        ]
        return "<PtychoDataContainerTorch " + " ".join(parts) + ">"
