"""ptycho-reconstruct's picture and scores (issue 29 item 5): objectGuess is labelled for what it is, on the same canvas."""

import logging

import numpy as np
import pytest

from ptycho.quality import resample_onto_canvas
from ptycho_torch.cli_reconstruct import REFERENCE_LABEL, log_scores
from tests.scans import complex_object


def test_object_guess_is_cut_onto_the_reconstruction_canvas():
    obj = complex_object(48)
    canvas = resample_onto_canvas(obj, (30, 40), origin_px=(3.0, -5.0))  # position (x, y) on canvas pixel (y + 3, x - 5)
    assert canvas.shape == (30, 40)
    np.testing.assert_allclose(canvas[3:30, 0:40], obj[0:27, 5:45], rtol=1e-5)
    assert np.isnan(canvas[:3].real).all()
    half = resample_onto_canvas(obj, (10, 10), origin_px=(0.0, -0.5))
    np.testing.assert_allclose(half[2, 2], (obj[2, 2] + obj[2, 3]) / 2, rtol=1e-5)


def test_the_picture_labels_object_guess_as_the_scans_not_as_ground_truth():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from ptycho_torch.plot import reconstruction_figure

    obj = complex_object(32)
    fig = reconstruction_figure(obj, resample_onto_canvas(complex_object(64, seed=5), obj.shape, (4.0, 4.0)))
    titles = [axes.get_title() for axes in fig.axes if axes.get_title()]
    plt.close(fig)
    assert len(titles) == 4 and sum(REFERENCE_LABEL in title for title in titles) == 2
    assert all("ground truth" not in title.replace("not ground truth", "") for title in titles)
    assert "objectGuess in the scan (not ground truth unless simulated)" == REFERENCE_LABEL
    shapes = {image.get_array().shape for axes in fig.axes for image in axes.get_images()}
    assert shapes == {obj.shape}


def test_scores_against_object_guess_are_logged(caplog, tmp_path):
    reference = complex_object(64)
    obj = (2.0 * np.exp(0.4j) * reference).astype(np.complex64)
    coverage = np.zeros((64, 64), np.float32)
    coverage[8:56, 8:56] = 1
    with caplog.at_level(logging.INFO, logger="ptycho_torch.reconstruct"):
        log_scores(obj, reference, coverage, tmp_path / "scan.npz")
    (message,) = [record.getMessage() for record in caplog.records]
    assert f"against the {REFERENCE_LABEL}: amplitude r 1.0000, phase r 1.0000" in message and "scan.npz" in message


def test_the_png_is_drawn_with_pillow_without_importing_matplotlib(tmp_path):
    """ptycho-reconstruct's PNG no longer pays for matplotlib's import and layout (issue 27)."""
    pytest.importorskip("PIL")
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, numpy as np\n"
            "from ptycho_torch.plot import write_reconstruction_png\n"
            "from tests.scans import complex_object\n"
            f"write_reconstruction_png(complex_object(40), complex_object(40, seed=3), {str(tmp_path / 'r.png')!r})\n"
            "print(sorted(name for name in sys.modules if name.split('.')[0] == 'matplotlib'))\n")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_png_holds_four_labelled_panels_in_the_colour_maps_grey_levels(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    from ptycho_torch.plot import PNG_INFO_KEY, reconstruction_panels, write_reconstruction_png

    obj = complex_object(32)
    reference = resample_onto_canvas(complex_object(64, seed=5), obj.shape, (-40.0, 4.0))  # partly outside: NaN rows
    assert np.isnan(reference.real).any()
    path = write_reconstruction_png(obj, reference, tmp_path / "r.png")
    with Image.open(path) as picture:
        picture.load()
        titles = picture.text[PNG_INFO_KEY].split(" | ")
        assert picture.mode == "L" and picture.width > picture.height > 500
    panels = reconstruction_panels(obj, reference)
    assert titles == [" ".join(title.split("\n")) for cells in panels for title, _ in cells]
    assert titles == ["reconstruction: amplitude", f"{REFERENCE_LABEL}: amplitude", "reconstruction: phase (rad)", f"{REFERENCE_LABEL}: phase (rad)"]
    np.testing.assert_array_equal(panels[0][0][1], np.abs(obj))
    np.testing.assert_array_equal(panels[1][1][1], np.angle(reference))
    assert len(reconstruction_panels(obj, None)[0]) == 1


def test_grey_levels_are_those_of_matplotlibs_gray_map_and_not_finite_pixels_are_white():
    from ptycho_torch.plot import _tick_labels, grey_levels

    values = np.concatenate([np.linspace(-0.3, 1.7, 1001), [np.nan, -0.3, 1.7]])
    levels = grey_levels(values, -0.3, 1.7)
    assert levels.dtype == np.uint8 and levels[0] == 0 and levels[-1] == 255 and levels[-3] == 255
    np.testing.assert_array_equal(grey_levels(np.full(3, 2.0), 2.0, 2.0), 0)
    assert _tick_labels(np.array([-0.57, 0.5]))[1] == ["-0.4", "-0.2", "0.0", "0.2", "0.4"]
    assert _tick_labels(np.array([1.0, 1.0])) == ([], [])
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.colors import Normalize

    finite = np.isfinite(values)
    expected = np.round(matplotlib.colormaps["gray"](Normalize(-0.3, 1.7)(values[finite]))[:, 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(levels[finite], expected)


@pytest.mark.parametrize("obj", [np.ones((16, 16), np.complex64), np.zeros((3, 3), np.complex64), np.ones((1, 1), np.complex64)])
def test_the_png_of_a_uniform_object_is_drawn(tmp_path, obj):
    """A uniform object (a unit start, an object of zeros) has no ticks on any bar: the PNG failed with 'max() arg is an empty
    sequence' after the NPZ was written."""
    pytest.importorskip("PIL")
    from PIL import Image

    from ptycho_torch.plot import write_reconstruction_png

    path = write_reconstruction_png(obj, None, tmp_path / "r.png")
    with Image.open(path) as picture:
        picture.load()
        assert picture.mode == "L" and picture.width > 0
