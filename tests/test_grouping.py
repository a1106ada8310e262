"""Grouping reproduces PtychoPINN's random stream and branches exactly (the branches the golden file lacks)."""

import numpy as np
import pytest

from ptycho.grouping import GroupingSettings, get_relative_coords, gather_coords, sample_groups
from tests.baseline_reference import reference_groups
from tests.scans import raster_scan

X, Y = raster_scan(n_side=8)  # 64 points


def groups(x=X, y=Y, **kwargs):
    return sample_groups(x, y, GroupingSettings(**kwargs))


def reference(x=X, y=Y, gridsize=2, K=4, nsamples=1, seed=None, sequential_sampling=False, enable_oversampling=False, neighbor_pool_size=None):
    return reference_groups(
        x, y, gridsize**2, K, nsamples, seed=seed, sequential=sequential_sampling,
        oversampling=enable_oversampling, pool_size=neighbor_pool_size,
    )


# Branches the golden file (tests/test_golden_parity.py) lacks; gridsize 1/2/3 random subsets,
# sequential sampling without a seed and plain K-choose-C oversampling are checked there against
# PtychoPINN's own outputs.
BRANCHES = {
    "C1-all-points": dict(gridsize=1, K=4, nsamples=500, seed=42),
    "C1-sequential": dict(gridsize=1, K=4, nsamples=10, sequential_sampling=True),
    "C4-all-points-no-seed-draw": dict(gridsize=2, K=7, nsamples=64, seed=3),
    "C4-K-equals-C": dict(gridsize=2, K=4, nsamples=25, seed=1),
    "C4-sequential-ignores-seed": dict(gridsize=2, K=6, nsamples=25, seed=99, sequential_sampling=True),
    "oversampling-pool": dict(gridsize=2, K=4, nsamples=300, seed=11, enable_oversampling=True, neighbor_pool_size=8),
    "oversampling-sequential": dict(gridsize=2, K=6, nsamples=100, seed=2, enable_oversampling=True, sequential_sampling=True),
    "oversampling-beyond-pool": dict(gridsize=2, K=5, nsamples=2000, seed=4, enable_oversampling=True),
}


@pytest.mark.parametrize("settings", BRANCHES.values(), ids=BRANCHES.keys())
def test_groups_equal_the_upstream_stream(settings):
    got = groups(**settings)
    expected = reference(**settings)
    np.testing.assert_array_equal(got, expected)
    C = settings["gridsize"] ** 2
    assert got.shape == (expected.shape[0], C)
    assert got.min() >= 0 and got.max() < len(X)


def test_group_count_per_branch():
    assert groups(gridsize=2, K=6, nsamples=30, seed=1).shape == (30, 4)
    assert groups(gridsize=2, K=6, nsamples=64, seed=1).shape == (64, 4)
    assert groups(gridsize=1, nsamples=500, seed=1).shape == (64, 1)
    assert groups(gridsize=2, K=6, nsamples=150, seed=1, enable_oversampling=True).shape == (150, 4)


def test_sequential_groups_start_at_the_first_points():
    got = groups(gridsize=1, nsamples=5, sequential_sampling=True)
    np.testing.assert_array_equal(got[:, 0], np.arange(5))


def test_standard_groups_are_neighbourhoods_of_their_seed():
    got = groups(gridsize=2, K=6, nsamples=20, seed=0)
    points = np.column_stack([X, Y])
    spread = np.linalg.norm(points[got] - points[got].mean(axis=1, keepdims=True), axis=2).max()
    assert spread < 2 * 5.0 * 1.5  # members lie within a few scan steps of each other


def test_small_scan_includes_the_point_itself_like_upstream():
    x, y = X[:5], Y[:5]
    np.testing.assert_array_equal(
        groups(x, y, gridsize=2, K=6, nsamples=3, seed=8), reference(x, y, gridsize=2, K=6, nsamples=3, seed=8)
    )


def test_duplicate_coordinates_follow_upstream():
    x = np.concatenate([X[:20], X[:20]])
    y = np.concatenate([Y[:20], Y[:20]])
    np.testing.assert_array_equal(
        groups(x, y, gridsize=2, K=5, nsamples=15, seed=3), reference(x, y, gridsize=2, K=5, nsamples=15, seed=3)
    )


@pytest.mark.parametrize("seed", [None, 42])
def test_global_numpy_rng_is_never_touched(seed):
    np.random.seed(1234)
    before = np.random.get_state()[1].copy()
    groups(gridsize=2, K=6, nsamples=30, seed=seed)
    groups(gridsize=2, K=6, nsamples=200, seed=seed, enable_oversampling=True)
    after = np.random.get_state()
    np.testing.assert_array_equal(after[1], before)
    assert np.random.random() == pytest.approx(np.random.RandomState(1234).random())


def test_same_seed_same_groups_and_other_seed_differs():
    a = groups(gridsize=2, K=6, nsamples=30, seed=42)
    np.testing.assert_array_equal(a, groups(gridsize=2, K=6, nsamples=30, seed=42))
    assert not np.array_equal(a, groups(gridsize=2, K=6, nsamples=30, seed=43))


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(gridsize=2, K=6, nsamples=100, seed=1), "enable_oversampling=True"),
        (dict(gridsize=2, K=6, nsamples=100, seed=1, enable_oversampling=True, neighbor_pool_size=3), "neighbor_pool_size=3"),
        (dict(gridsize=2, K=3, nsamples=10, seed=1), "set K >= 4"),
        (dict(gridsize=0, K=3, nsamples=10), "gridsize=0"),
        (dict(gridsize=2, K=6, nsamples=0), "nsamples=0"),
    ],
)
def test_invalid_settings_explain_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        groups(**settings)


def test_too_few_points_for_a_group():
    with pytest.raises(ValueError, match="only 3 scan points"):
        groups(X[:3], Y[:3], gridsize=2, K=4, nsamples=2)


def test_non_integer_settings_are_rejected():
    with pytest.raises(TypeError, match="gridsize must be an integer"):
        groups(gridsize=2.0, K=4, nsamples=2)


def test_relative_coords_are_negated_offsets_that_sum_to_zero():
    nn = groups(gridsize=2, K=6, nsamples=10, seed=0)
    coords_nn = gather_coords(X, Y, nn)
    offsets, relative = get_relative_coords(coords_nn)
    assert coords_nn.shape == (10, 1, 2, 4) and offsets.shape == (10, 1, 2, 1)
    np.testing.assert_array_equal(coords_nn[:, 0, 0, :], X[nn])
    np.testing.assert_array_equal(coords_nn[:, 0, 1, :], Y[nn])
    np.testing.assert_allclose(offsets[:, 0, :, 0], np.stack([X[nn].mean(1), Y[nn].mean(1)], axis=1))
    np.testing.assert_allclose(relative, offsets - coords_nn)
    np.testing.assert_allclose(relative.sum(axis=3), 0, atol=1e-9)
