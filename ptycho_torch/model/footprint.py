"""Memory the model's group regions and the stitching canvas need, checked before any work (torch-free).

Positions in object pixels within the accepted +-1e9 can still span far more than the patterns
cover (wrong units): the group region of ``specs/model.md`` section 2, ``M = N + 2 ceil(max
|offset|) + 2``, and the canvas of section 8, ``ceil(span + N)``, then need terabytes. These checks
refuse such sizes with the size they would need, before the memory map is built.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["BYTES_PER_REGION_PIXEL", "BYTES_PER_CANVAS_PIXEL", "SizeError", "check_canvas", "check_region", "group_reach_bound",
           "memory_bytes", "region_side"]

BYTES_PER_REGION_PIXEL = 64  # per group member: float32 sampling grid, complex region, shifted copies, gradients (estimate)
BYTES_PER_CANVAS_PIXEL = 48  # float64 numerator (2) and weight, the complex128 object and its complex64 copy


class SizeError(ValueError):
    """A region or canvas that cannot fit in this machine's memory; the message gives the size it would need."""


def memory_bytes() -> int:
    """This machine's physical memory (a generous 1 TiB when the platform does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return 1 << 40


def region_side(N: int, reach_px: float, margin_px: int = 2) -> int:
    """The even region side ``N + 2 ceil(reach) + margin`` of ``physics.region_size``."""
    size = int(N) + 2 * math.ceil(reach_px) + margin_px
    return size + size % 2


def group_reach_bound(xcoords: np.ndarray, ycoords: np.ndarray, K: int) -> float:
    """An upper bound of ``max |coords_relative|`` of any group drawn from each point's ``K`` nearest neighbours.

    Every member of a group and its centre lie within the ``K``-neighbour ball of the group's seed
    point, so no member is farther than twice the largest ``K``-th neighbour distance from the centre.
    """
    from scipy.spatial import cKDTree

    points = np.column_stack([np.asarray(xcoords, np.float64), np.asarray(ycoords, np.float64)])
    k = int(min(max(K, 1), len(points)))
    if k < 2:
        return 0.0
    distances, _ = cKDTree(points).query(points, k=k)
    return 2.0 * float(np.max(distances[:, -1]))


def check_region(M: int, members: int, where: str = "") -> None:
    """Refuse ``members`` regions of ``M x M`` pixels (a batch's groups times C) that cannot fit in memory."""
    needed = BYTES_PER_REGION_PIXEL * int(members) * int(M) ** 2
    available = memory_bytes()
    if needed > available:
        raise SizeError(
            f"{where + ': ' if where else ''}group regions of {M} x {M} pixels ({members} per batch) need about "
            f"{_size(needed)}, more than this machine's {_size(available)}: the scan points of a group lie up to "
            f"{(M - 2) // 2} pixels apart; check that xcoords/ycoords are in object pixels, or lower the batch size"
        )


def check_canvas(shape_px: tuple[int, int], where: str = "") -> None:
    """Refuse a stitching canvas of ``shape_px (H, W)`` that cannot fit in memory."""
    H, W = (int(side) for side in shape_px)
    needed = BYTES_PER_CANVAS_PIXEL * H * W
    available = memory_bytes()
    if needed > available:
        raise SizeError(
            f"{where + ': ' if where else ''}the object canvas would be {H} x {W} pixels, about {_size(needed)}, more "
            f"than this machine's {_size(available)}: the scan spans that many pixels; check that xcoords/ycoords "
            "are in object pixels"
        )


def _size(n_bytes: float) -> str:
    for unit, scale in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes / 2**10:,.1f} kB"
