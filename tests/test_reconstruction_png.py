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
