"""The scoring, the scan geometry check and the PNG of ``ptycho-reconstruct`` without importing scipy (issue 27).

Importing scipy.ndimage and scipy.spatial cost the 512-point command about a quarter of a CPU second, so
``ptycho.quality`` and ``ptycho.scan_geometry`` compute with NumPy what they used scipy for; these tests
pin that they give scipy's values bit for bit.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho.quality import binary_erosion, reconstruction_quality, resample_onto_canvas
from ptycho.scan_geometry import BRUTE_FORCE_POINTS, median_neighbour_distance_px, nearest_other_distance
from tests.scans import complex_object

ndimage = pytest.importorskip("scipy.ndimage")
spatial = pytest.importorskip("scipy.spatial")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("origin", [(0.0, 0.0), (3.0, -5.0), (0.0, -0.5), (2.3, -7.77), (-4.1, 5.123456789), (10.5, 0.25), (-0.3333, 1 / 3)])
def test_resample_onto_canvas_gives_map_coordinates_bits(origin):
    image = complex_object(37, seed=4)[:, :33]
    shape = (30, 50)
    rows, cols = np.indices(shape, dtype=np.float64)
    where = [rows - origin[0], cols - origin[1]]
    part = lambda values: ndimage.map_coordinates(values, where, order=1, mode="constant", cval=np.nan)  # noqa: E731
    expected = (part(image.real.astype(np.float64)) + 1j * part(image.imag.astype(np.float64))).astype(np.complex64)
    np.testing.assert_array_equal(resample_onto_canvas(image, shape, origin), expected)  # NaN where scipy gives NaN


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (2, 2), (3, 7), (30, 40), (64, 64)])
def test_binary_erosion_is_scipys(shape):
    rng = np.random.default_rng(sum(shape))
    for share in (0.5, 0.9, 0.99, 1.0):
        mask = rng.random(shape) < share
        for iterations in (-1, 0, 1, 2, 3, 8, 30):  # < 1: until nothing changes, as scipy
            np.testing.assert_array_equal(binary_erosion(mask, iterations), ndimage.binary_erosion(mask, iterations=iterations))


def test_nearest_other_distance_is_the_kd_trees():
    rng = np.random.default_rng(0)
    for n in (2, 3, 100, 1000, BRUTE_FORCE_POINTS):
        points = rng.random((n, 2)) * 300
        points[-1] = points[0]  # a repeated point: distance 0
        expected = spatial.cKDTree(points).query(points, k=2)[0][:, 1]
        np.testing.assert_array_equal(nearest_other_distance(points, chunk=97), expected)
    points = rng.random((BRUTE_FORCE_POINTS + 5, 2)) * 300
    assert median_neighbour_distance_px(*points.T) == float(np.median(spatial.cKDTree(points).query(points, k=2)[0][:, 1]))


def test_quality_scores_are_unchanged():
    truth = complex_object(64)
    covered = np.zeros((64, 64), bool)
    covered[6:58, 4:60] = True
    rec = (1.7 * np.exp(0.3j) * np.roll(truth, (1, -2), axis=(0, 1))).astype(np.complex64)
    quality = reconstruction_quality(rec, truth, covered)
    assert quality.shift_px == (-1, 2) and quality.n_pixels == int(ndimage.binary_erosion(covered, iterations=8).sum())
    assert quality.amplitude_r == pytest.approx(1.0, abs=1e-5) and quality.phase_r == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("rows", [slice(0, 0), slice(20, 30)], ids=["nothing covered", "a thin strip"])
def test_a_region_too_small_to_score_is_refused_without_numpy_warnings(rows):
    """An objectGuess that does not overlap the scan's canvas (NaN there, so nothing is covered) made ptycho-reconstruct
    log three numpy RuntimeWarnings ('Mean of empty slice'), even with --quiet, before 'not scored against its objectGuess'."""
    import warnings

    truth = complex_object(64)
    covered = np.zeros((64, 64), bool)
    covered[rows, 4:60] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="only 0 pixels remain after eroding the covered region by 8 px"):
            reconstruction_quality(truth, truth, covered)
        with pytest.raises(ValueError, match="only 0 pixels remain"):
            reconstruction_quality(truth, truth, covered, erode_px=8, max_shift_px=20)


def test_a_region_thinner_than_the_registration_shifts_is_scored_unshifted_without_numpy_warnings():
    import warnings

    truth = complex_object(64)
    covered = np.zeros((64, 64), bool)
    covered[20:40, 4:60] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quality = reconstruction_quality(truth, truth, covered, erode_px=2, max_shift_px=12)
    assert quality.shift_px == (0, 0) and quality.phase_r == pytest.approx(1.0, abs=1e-5)


def test_scoring_geometry_and_png_import_no_scipy(tmp_path):
    code = ("import sys, numpy as np\n"
            "from ptycho.quality import reconstruction_quality, resample_onto_canvas\n"
            "from ptycho.scan_geometry import measure_geometry\n"
            "import ptycho.grouping, ptycho.raw_data, ptycho_torch.plot\n"
            "from tests.scans import complex_object, probe, raster_scan\n"
            "obj = complex_object(64)\n"
            "ref = resample_onto_canvas(obj, (60, 60), (-1.5, 0.25))\n"
            "covered = np.isfinite(ref)\n"
            "reconstruction_quality(obj[:60, :60], np.nan_to_num(ref), covered)\n"
            "measure_geometry(*raster_scan(), probe(), 16)\n"
            "import importlib.util\n"
            "if importlib.util.find_spec('PIL'):  # the plot extra; the torch-free CI venv has only the base and test deps\n"
            f"    ptycho_torch.plot.write_reconstruction_png(obj, None, {str(tmp_path / 'r.png')!r})\n"
            "print(sorted(name for name in sys.modules if name.split('.')[0] == 'scipy'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    if importlib.util.find_spec("PIL"):
        assert (tmp_path / "r.png").stat().st_size > 0


def _register_by_rolling(rec, truth, covered, max_shift):  # ptycho.quality._register as it was: np.roll of the whole image per shift
    best, best_shift = -np.inf, (0, 0)
    interior = ndimage.binary_erosion(covered, iterations=max_shift)
    t = np.abs(truth)[interior]
    t = t - t.mean()
    amplitude = np.abs(rec)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            a = np.roll(amplitude, (dy, dx), axis=(0, 1))[interior]
            score = np.dot(a - a.mean(), t) / (np.linalg.norm(a - a.mean()) + 1e-30)
            if score > best:
                best, best_shift = score, (dy, dx)
    return best_shift


@pytest.mark.parametrize("shape, max_shift", [((64, 64), 8), ((40, 70), 3), ((30, 30), 1), ((64, 48), 12)])
def test_registration_reads_shifted_windows_as_rolling_did(shape, max_shift):
    from ptycho.quality import _register

    rng = np.random.default_rng(shape[0] + max_shift)
    truth = (0.5 + rng.random(shape)) * np.exp(1j * rng.uniform(-1, 1, shape))
    for shift in ((0, 0), (2, -1), (-max_shift, max_shift)):
        rec = np.roll(truth, shift, axis=(0, 1)) * (1 + 0.05 * rng.standard_normal(shape))
        covered = np.ones(shape, bool)
        covered[: shape[0] // 5] = False
        assert _register(rec, truth, covered, max_shift) == _register_by_rolling(rec, truth, covered, max_shift)
