"""Scan geometry checked before any work: positions must be object pixels and neighbours must overlap (torch-free)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

MIN_SPAN_PX = 1.0  # a scan whose positions all lie within one pixel cannot be in object pixels
UNITS_HINT = ("positions must be object pixels; if they are in metres (or microns), divide them by the object pixel size "
              "in the same unit")


@dataclass(frozen=True)
class ScanGeometry:
    """What the checks compare: the positions' span, the typical neighbour distance and the probe's width, in pixels."""

    n_points: int
    span_px: float
    neighbour_distance_px: float
    probe_width_px: float
    pattern_size_px: int


_warned: set[ScanGeometry] = set()  # warned about in this process (a command checks before its dataset does)


def probe_width_px(probe: np.ndarray) -> float:
    """Diameter of the flat disk with the intensity-weighted second moment of ``probe`` (mode 0 of a stack), pixels."""
    mode = np.asarray(probe)
    mode = mode[0] if mode.ndim == 3 else mode
    intensity = np.abs(mode.astype(np.complex128)) ** 2
    total = intensity.sum()
    if not np.isfinite(total) or total <= 0:
        return float("nan")
    rows, cols = np.indices(intensity.shape)
    centre_row, centre_col = (intensity * rows).sum() / total, (intensity * cols).sum() / total
    mean_r2 = (intensity * ((rows - centre_row) ** 2 + (cols - centre_col) ** 2)).sum() / total
    return float(2.0 * np.sqrt(2.0 * mean_r2))


def median_neighbour_distance_px(xcoords: np.ndarray, ycoords: np.ndarray) -> float:
    """Median over scan points of the distance to the nearest other point (nan for fewer than 2 points)."""
    points = np.column_stack([np.asarray(xcoords, np.float64), np.asarray(ycoords, np.float64)])
    if len(points) < 2:
        return float("nan")
    if len(points) > BRUTE_FORCE_POINTS:
        from scipy.spatial import cKDTree  # imported only here: it costs a small scan's command a quarter of a CPU second

        distances, _ = cKDTree(points).query(points, k=2)
        return float(np.median(distances[:, 1]))
    return float(np.median(nearest_other_distance(points)))


BRUTE_FORCE_POINTS = 4096  # up to this many points every pair is measured (fewer CPU s than importing scipy.spatial)


def nearest_other_distance(points: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Per point of ``points (n, 2)`` the distance to the nearest other point (0 for a repeated point), from all pairs."""
    points = np.asarray(points, dtype=np.float64)
    nearest = np.empty(len(points))
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        squared = (block[:, None, 0] - points[None, :, 0]) ** 2 + (block[:, None, 1] - points[None, :, 1]) ** 2
        squared[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        nearest[start : start + chunk] = np.sqrt(squared.min(axis=1))
    return nearest


def measure_geometry(xcoords, ycoords, probe, pattern_size_px: int) -> ScanGeometry:
    x, y = np.asarray(xcoords, np.float64), np.asarray(ycoords, np.float64)
    span = float(max(np.ptp(x), np.ptp(y))) if x.size else 0.0
    return ScanGeometry(int(x.size), span, median_neighbour_distance_px(x, y), probe_width_px(probe), int(pattern_size_px))


def check_scan_geometry(where: str, xcoords, ycoords, probe, pattern_size_px: int, *, refuse: bool = True) -> ScanGeometry:
    """Refuse positions that are all one point or span less than a pixel; warn when neighbours lie farther apart than the probe is wide.

    ``where`` names the scan in the messages. Raises ValueError (with ``refuse=False``, as the Python
    dataset path does to keep PtychoPINN's behaviour on any positions, it warns instead); warns through logging.
    """
    geometry = measure_geometry(xcoords, ycoords, probe, pattern_size_px)
    if geometry.n_points > 1 and geometry.span_px == 0:
        x, y = float(np.asarray(xcoords).flat[0]), float(np.asarray(ycoords).flat[0])
        message = (f"{where}: all {geometry.n_points} scan positions (xcoords, ycoords) are the same point ({x:.6g}, {y:.6g}): "
                   "a ptychographic scan moves the probe across the object; check that the positions were exported "
                   "(not a placeholder or one position repeated)")
        if refuse:
            raise ValueError(message)
        if geometry not in _warned:
            _warned.add(geometry)
            logger.warning("%s", message)
    elif geometry.n_points > 1 and geometry.span_px < MIN_SPAN_PX:
        message = (f"{where}: the {geometry.n_points} scan positions (xcoords, ycoords) span only {geometry.span_px:.3g} pixels, "
                   f"less than one pixel of the {pattern_size_px} x {pattern_size_px} patterns; {UNITS_HINT}")
        if refuse:
            raise ValueError(message)
        if geometry not in _warned:
            _warned.add(geometry)
            logger.warning("%s", message)
    if geometry.neighbour_distance_px > geometry.probe_width_px and geometry not in _warned:
        _warned.add(geometry)
        logger.warning(
            "%s: neighbouring scan positions lie %.3g pixels apart (median), more than the probe's width %.3g pixels "
            "(intensity-weighted diameter of probeGuess): the illuminated areas do not overlap and the object is not "
            "determined between them; %s, or scan with a smaller step",
            where, geometry.neighbour_distance_px, geometry.probe_width_px, UNITS_HINT)
    return geometry
