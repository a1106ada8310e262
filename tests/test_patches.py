"""Window sampling equals translating the whole padded object, at and beyond the edges."""

import numpy as np
import pytest

from ptycho.patches import extract_patches
from tests.baseline_reference import translate_crop_patch
from tests.scans import complex_object

N = 12
OBJ = complex_object(M=40)
PADDED = np.pad(OBJ.astype(np.complex128), N // 2)


@pytest.mark.parametrize(
    "x, y",
    [(20.0, 20.0), (13.25, 27.8), (0.0, 0.0), (-3.5, 2.2), (45.1, 44.9), (39.99, 0.01), (-20.0, 70.0)],
)
def test_window_equals_translate_and_crop(x, y):
    patch = extract_patches(OBJ, np.array([x]), np.array([y]), N)[0]
    np.testing.assert_allclose(patch, translate_crop_patch(PADDED, x, y, N), atol=1e-5)
    assert patch.dtype == np.complex64


def test_many_positions_in_chunks_match_one_by_one():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-5, 45, 2500), rng.uniform(-5, 45, 2500)
    patches = extract_patches(OBJ, x, y, N)
    for p in (0, 1023, 1024, 2499):
        np.testing.assert_allclose(patches[p], translate_crop_patch(PADDED, x[p], y[p], N), atol=1e-5)


def test_integer_position_is_an_exact_crop():
    patch = extract_patches(OBJ, np.array([10.0]), np.array([7.0]), N)[0]
    np.testing.assert_array_equal(patch, PADDED[7 : 7 + N, 10 : 10 + N].astype(np.complex64))


def test_bad_positions_are_rejected():
    with pytest.raises(ValueError, match="patch position 1 is not finite"):
        extract_patches(OBJ, np.array([1.0, np.nan]), np.array([1.0, 2.0]), N)
    with pytest.raises(ValueError, match="same length"):
        extract_patches(OBJ, np.array([1.0]), np.array([1.0, 2.0]), N)
    with pytest.raises(ValueError, match="image must be 2-D"):
        extract_patches(OBJ[None], np.array([1.0]), np.array([1.0]), N)
