"""Scan geometry checked before any work (issue 29 item 1): positions in metres refused, non-overlapping scans warned."""

import logging
from pathlib import Path

import numpy as np
import pytest

from ptycho.scan_geometry import check_scan_geometry, probe_width_px
from ptycho.simulate import SimulationSettings, simulate_scan
from tests.scans import probe, raster_scan

EMBEDDED = Path(__file__).resolve().parents[1] / "datasets" / "sim_small.npz"


@pytest.fixture(scope="module")
def small_scan():
    return simulate_scan(SimulationSettings(n_points=25, N=32, seed=3))


def test_positions_in_metres_are_refused_with_the_span_and_the_units(small_scan, caplog):
    x, y = small_scan["xcoords"] * 1e-8, small_scan["ycoords"] * 1e-8
    with pytest.raises(ValueError) as error:
        check_scan_geometry("scan.npz", x, y, small_scan["probeGuess"], 32)
    message = str(error.value)
    assert "scan.npz" in message and "span only" in message and "metres" in message and "25 scan positions" in message


def test_positions_that_are_all_one_point_are_refused_as_such_not_as_metres(small_scan):
    x, y = np.full(25, 12.5), np.full(25, -3.0)
    with pytest.raises(ValueError) as error:
        check_scan_geometry("same.npz", x, y, small_scan["probeGuess"], 32)
    message = str(error.value)
    assert "same.npz" in message and "all 25 scan positions" in message and "same point (12.5, -3)" in message
    assert "metres" not in message  # dividing identical positions by a pixel size would not help


def test_a_scan_whose_neighbours_do_not_overlap_is_warned_about_with_the_numbers(small_scan, caplog):
    x, y = small_scan["xcoords"] * 10, small_scan["ycoords"] * 10
    with caplog.at_level(logging.WARNING, logger="ptycho.scan_geometry"):
        geometry = check_scan_geometry("far.npz", x, y, small_scan["probeGuess"], 32)
    (record,) = caplog.records
    assert geometry.neighbour_distance_px > geometry.probe_width_px
    assert "far.npz" in record.message and f"{geometry.neighbour_distance_px:.3g} pixels apart" in record.message
    assert f"probe's width {geometry.probe_width_px:.3g} pixels" in record.message and "metres" in record.message


def test_the_embedded_scan_and_the_test_scans_pass_silently(small_scan, caplog):
    with np.load(EMBEDDED) as scan, caplog.at_level(logging.WARNING):
        check_scan_geometry("sim_small", scan["xcoords"], scan["ycoords"], scan["probeGuess"], 64)
    check_scan_geometry("small", small_scan["xcoords"], small_scan["ycoords"], small_scan["probeGuess"], 32)
    check_scan_geometry("raster", *raster_scan(), probe(16), 16)
    assert not caplog.records


def test_probe_width_is_the_diameter_of_a_flat_disk():
    rows, cols = np.indices((64, 64))
    disk = ((rows - 32) ** 2 + (cols - 32) ** 2 <= 10**2).astype(np.complex64)
    assert probe_width_px(disk) == pytest.approx(20, rel=0.05)


def test_float_counts_look_like_counts_and_amplitudes_do_not():
    from ptycho.validation import looks_like_counts

    with np.load(EMBEDDED) as scan:
        amplitude = scan["diffraction"][:32]
    assert not looks_like_counts(amplitude)
    assert looks_like_counts(np.rint(amplitude.astype(np.float64) ** 2).astype(np.float32))
    assert not looks_like_counts(np.ones((2, 4, 4), np.float32)) and not looks_like_counts(np.zeros((2, 4, 4), np.float32))
