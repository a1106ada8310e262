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
    """Same attributes, shapes and dtypes as ``ptycho.loader.load``'s container.

    X float32, Y complex64 (DATA-001, never cast silently), Y_I/Y_phi float32, coords float32,
    global/local offsets float64 (``coords_relative`` is ``local_offsets``, as PtychoPINN names it),
    nn_indices int32, probe complex64 (mode 0 of a stack). Without ``coords_start_relative`` the
    start coordinates are the nominal ones (``coords_relative``).
    Attributes are torch tensors when torch is installed (``TORCH_AVAILABLE``), NumPy arrays otherwise.
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
        with the grouping ``config`` asks for; see :class:`MemmapDatasetBridge` for the options.
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
