"""RawDataTorch: the torch side's entry to ``ptycho.raw_data.RawData``, configured once."""

from __future__ import annotations

import functools
import logging

from ptycho import params
from ptycho.config.config import InferenceConfig, TrainingConfig, update_legacy_dict
from ptycho.raw_data import RawData
from ptycho_torch.torch_support import TORCH_AVAILABLE

logger = logging.getLogger(__name__)

__all__ = ["RawDataTorch", "TORCH_AVAILABLE"]


def _on_raw_data(method):
    """``RawData.<method>`` as a method of RawDataTorch: same signature and docstring, run on ``self.raw_data``."""

    @functools.wraps(method)
    def on_raw_data(self, *args, **kwargs):
        return method(self.raw_data, *args, **kwargs)

    on_raw_data.__qualname__ = f"RawDataTorch.{method.__name__}"
    return on_raw_data


class RawDataTorch:
    """One scan in memory: a thin adapter over :class:`ptycho.raw_data.RawData`; it never groups on its own.

    With ``config`` (a ``ptycho`` TrainingConfig or InferenceConfig, e.g. from
    ``ptycho_torch.config_bridge``) the constructor runs ``update_legacy_dict`` exactly once,
    so ``params.cfg`` is set before any grouping (CONFIG-001). Works without torch.

    Args:
        xcoords, ycoords: ``(n,)`` real scan positions in object pixels (x = column, y = row), finite
            and within +-1e9.
        diff3d: ``(n, N, N)`` real diffraction: float amplitudes, or integer photon counts
            (square-rooted to float32 amplitude, with a warning, under ``diffraction_units='auto'``).
        probeGuess: ``(N, N)`` complex probe or ``(modes, N, N)`` mode stack; mode 0 is ``probeGuess``.
        scan_index: ``(n,)`` whole numbers, one scan id per pattern.
        objectGuess: optional ``(H, W)`` complex object on the grid the positions are pixels of.
        config: a ``ptycho`` config applied to ``params.cfg`` before anything else.
        xcoords_start, ycoords_start: ``(n,)`` start positions in pixels (default: the positions).
        Y: optional ``(n, N, N)`` complex64 ground-truth patches, one per pattern.
        pattern_energy: optional ``(n,)`` precomputed ``sum(diff3d**2)`` per pattern.
        diffraction_units: ``"auto"``, ``"amplitude"`` or ``"counts"``.

    Refused (ValueError or TypeError naming the array and what it needs): positions that are not
    1-D, real, finite or one per pattern; a diffraction stack that is not 3-D, square, real or
    non-negative and finite; a probe not of the pattern size; a real ``objectGuess`` or ``Y``; a
    ``scan_index`` of the wrong shape or not whole numbers.
    ``generate_grouped_data(N, K=..., nsamples=..., gridsize=..., ...)`` returns the grouped-data dict
    of specs/data_contracts.md section 2 (coordinates in object pixels).
    """

    def __init__(
        self,
        xcoords,
        ycoords,
        diff3d,
        probeGuess,
        scan_index,
        objectGuess=None,
        config: TrainingConfig | InferenceConfig | None = None,
        *,
        xcoords_start=None,
        ycoords_start=None,
        Y=None,
        pattern_energy=None,
        diffraction_units: str = "auto",
    ):
        if config is not None:
            update_legacy_dict(params.cfg, config)
        self.config = config
        self.raw_data = RawData(
            xcoords,
            ycoords,
            xcoords if xcoords_start is None else xcoords_start,
            ycoords if ycoords_start is None else ycoords_start,
            diff3d,
            probeGuess,
            scan_index,
            objectGuess,
            Y=Y,
            pattern_energy=pattern_energy,
            diffraction_units=diffraction_units,
        )

    @property
    def xcoords(self):
        return self.raw_data.xcoords

    @property
    def ycoords(self):
        return self.raw_data.ycoords

    @property
    def diff3d(self):
        return self.raw_data.diff3d

    @property
    def probeGuess(self):
        return self.raw_data.probeGuess

    @property
    def objectGuess(self):
        return self.raw_data.objectGuess

    generate_grouped_data = _on_raw_data(RawData.generate_grouped_data)
    generate_grouping = _on_raw_data(RawData.generate_grouping)
    grouped_data = _on_raw_data(RawData.grouped_data)
    grouping = _on_raw_data(RawData.grouping)

    def __repr__(self) -> str:
        return f"RawDataTorch({self.raw_data!r})"
