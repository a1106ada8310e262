"""RawData: the grouped-data dict's contract and validated inputs (parity with PtychoPINN: test_golden_parity.py)."""

import logging

import numpy as np
import pytest

from ptycho import params
from ptycho.raw_data import RawData, get_image_patches, normalize_data
from tests.scans import amplitude_stack, complex_object, probe, raster_scan

N = 16
X, Y = raster_scan(n_side=8)
DIFF = amplitude_stack(len(X), N)
OBJ = complex_object()


def raw(**overrides):
    arrays = dict(xcoords=X, ycoords=Y, diff3d=DIFF, probeGuess=probe(N), scan_index=np.zeros(len(X), int), objectGuess=OBJ)
    arrays.update(overrides)
    return RawData.from_coords_without_pc(**arrays)


GROUPING = dict(K=6, nsamples=30, seed=42, gridsize=2)


def test_grouped_data_shapes_and_dtypes_follow_the_contract():
    dset = raw().generate_grouped_data(N, **GROUPING)
    B, C = 30, 4
    expected = {
        "diffraction": ((B, N, N, C), np.float32),
        "X_full": ((B, N, N, C), np.float32),
        "Y": ((B, N, N, C), np.complex64),
        "coords_nn": ((B, 1, 2, C), np.float64),
        "coords_offsets": ((B, 1, 2, 1), np.float64),
        "coords_relative": ((B, 1, 2, C), np.float64),
        "coords_start_offsets": ((B, 1, 2, 1), np.float64),
        "coords_start_relative": ((B, 1, 2, C), np.float64),
        "nn_indices": ((B, C), np.int32),
        "objectGuess": (OBJ.shape, np.complex64),
    }
    for key, (shape, dtype) in expected.items():
        assert dset[key].shape == shape and dset[key].dtype == dtype, key


def test_x_full_has_mean_energy_of_half_n_squared():
    X_full = raw().generate_grouped_data(N, **GROUPING)["X_full"].astype(np.float64)
    assert np.mean(np.sum(X_full**2, axis=(1, 2))) == pytest.approx((N / 2) ** 2, rel=1e-5)


def test_normalize_data_matches_the_grouped_x_full():
    dset = raw().generate_grouped_data(N, **GROUPING)
    np.testing.assert_allclose(normalize_data(dset, N), dset["X_full"], rtol=1e-6)


def test_start_coordinates_are_grouped_separately():
    shifted = raw(xcoords=X, ycoords=Y)
    data = RawData(X, Y, X + 100.0, Y - 3.0, DIFF, probe(N), np.zeros(len(X), int))
    a = shifted.generate_grouped_data(N, **GROUPING)
    b = data.generate_grouped_data(N, **GROUPING)
    np.testing.assert_array_equal(a["nn_indices"], b["nn_indices"])
    np.testing.assert_allclose(b["coords_start_offsets"][:, 0, 0], a["coords_offsets"][:, 0, 0] + 100.0)
    np.testing.assert_allclose(b["coords_start_relative"], a["coords_relative"], atol=1e-9)


def test_grouping_alone_reads_no_diffraction():
    class Untouchable:
        shape, dtype = DIFF.shape, DIFF.dtype

        def __len__(self):
            return len(DIFF)

        def __getitem__(self, item):
            raise AssertionError("diffraction was read")

    energy = np.einsum("ijk,ijk->i", DIFF.astype(np.float64), DIFF.astype(np.float64))
    data = raw(diff3d=Untouchable(), pattern_energy=energy)
    grouping = data.generate_grouping(N, **GROUPING)
    expected = raw().generate_grouped_data(N, **GROUPING)
    np.testing.assert_array_equal(grouping.nn_indices, expected["nn_indices"])
    np.testing.assert_allclose(grouping.norm * expected["diffraction"], expected["X_full"], rtol=1e-6)


def test_get_image_patches_checks_gridsize():
    offsets = np.zeros((2, 1, 2, 1))
    with pytest.raises(ValueError, match="gridsize 2 needs 4 channels"):
        get_image_patches(OBJ, offsets, np.zeros((2, 1, 2, 1)), N=N, gridsize=2)


def test_precomputed_y_is_grouped_like_the_diffraction():
    Y_patches = (np.random.default_rng(0).random((len(X), N, N)) * np.exp(1j)).astype(np.complex64)
    dset = raw(Y=None).generate_grouped_data(N, **GROUPING)
    data = RawData(X, Y, X, Y, DIFF, probe(N), np.zeros(len(X), int), Y=Y_patches)
    with_y = data.generate_grouped_data(N, **GROUPING)
    np.testing.assert_array_equal(with_y["Y"], np.transpose(Y_patches[dset["nn_indices"]], (0, 2, 3, 1)))


def test_no_object_and_no_y_gives_none():
    assert raw(objectGuess=None).generate_grouped_data(N, **GROUPING)["Y"] is None


def test_real_y_is_refused_with_data_001():
    with pytest.raises(ValueError, match="Y has real dtype float64; ground truth must be complex64"):  # DATA-001
        RawData(X, Y, X, Y, DIFF, probe(N), None, Y=np.ones((len(X), N, N)))


def test_gridsize_comes_from_a_configured_params_cfg_only():
    data = raw()
    params.reset()
    with pytest.raises(ValueError, match=r"params.cfg\['gridsize'\] was never configured.*update_legacy_dict"):  # CONFIG-001
        data.generate_grouped_data(N, K=6, nsamples=5, seed=1)
    params.set("gridsize", 1)
    assert data.generate_grouped_data(N, K=6, nsamples=5, seed=1)["X_full"].shape == (5, N, N, 1)


def test_probe_mode_stack_uses_mode_zero_and_keeps_the_stack():
    modes = np.stack([probe(N), 0.3 * probe(N)])
    data = raw(probeGuess=modes)
    assert data.probeGuess.shape == (N, N) and data.probeGuess.dtype == np.complex64
    np.testing.assert_array_equal(data.probeGuess, modes[0])
    assert data.probe_modes.shape == (2, N, N)


def test_integer_counts_become_amplitudes_with_a_warning(caplog):
    counts = np.random.default_rng(0).poisson(20, size=(len(X), N, N)).astype(np.uint16)
    with caplog.at_level(logging.WARNING, logger="ptycho.raw_data"):
        data = raw(diff3d=counts)
    assert "photon counts" in caplog.text
    np.testing.assert_allclose(data.diff3d, np.sqrt(counts.astype(np.float64)), rtol=1e-6)
    assert data.diff3d.dtype == np.float32
    as_given = raw(diff3d=counts, diffraction_units="amplitude")
    np.testing.assert_array_equal(as_given.diff3d, counts)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(xcoords=np.where(np.arange(len(X)) == 3, np.nan, X)), ValueError, r"xcoords\[3\] is nan"),
        (dict(ycoords=Y[:-1]), ValueError, "ycoords has 63 entries but the scan has 64 points"),
        (dict(diff3d=DIFF[:-2]), ValueError, "diff3d has 62 patterns but there are 64 scan positions"),
        (dict(diff3d=DIFF[:, :, :-1]), ValueError, "must be square"),
        (dict(diff3d=DIFF[:, 0]), ValueError, "3-D stack"),
        (dict(diff3d=DIFF.astype(np.complex64)), TypeError, "real-valued"),
        (dict(diff3d=np.where(np.arange(len(X))[:, None, None] == 5, -1.0, DIFF)), ValueError, r"diff3d\[5\] has a negative value"),
        (dict(diff3d=np.where(np.arange(len(X))[:, None, None] == 7, np.inf, DIFF)), ValueError, r"diff3d\[7\] has a not finite value"),
        (dict(scan_index=np.zeros(3, int)), ValueError, "scan_index must have shape"),
        (dict(scan_index=np.full(len(X), 0.5)), TypeError, "scan_index must hold whole numbers"),
        (dict(probeGuess=np.ones(5)), ValueError, "probeGuess must be"),
    ],
)
def test_bad_inputs_name_the_array_and_index(overrides, error, message):
    with pytest.raises(error, match=message):
        raw(**overrides)


def test_n_must_match_the_patterns():
    with pytest.raises(ValueError, match="N=32 does not match the 16 x 16"):
        raw().generate_grouped_data(32, **GROUPING)


def test_file_round_trip(tmp_path):
    path = tmp_path / "scan.npz"
    raw(probeGuess=np.stack([probe(N), probe(N)])).to_file(path)
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) >= {"xcoords", "ycoords", "diff3d", "probeGuess", "objectGuess", "scan_index"}
    loaded = RawData.from_file(path)
    np.testing.assert_array_equal(loaded.diff3d, DIFF)
    assert loaded.probe_modes.shape == (2, N, N)
    a = loaded.generate_grouped_data(N, **GROUPING)
    b = raw().generate_grouped_data(N, **GROUPING)
    np.testing.assert_array_equal(a["X_full"], b["X_full"])


def test_float_scan_index_of_whole_numbers_is_taken_as_integers():
    """PtychoPINN's own files and golden runs use ``scan_index=np.zeros(n)`` (float64)."""
    data = raw(scan_index=np.zeros(len(X)))
    assert data.scan_index.dtype == np.int64 and not data.scan_index.any()


# Every public call that takes PtychoPINN's grouping keywords builds one GroupingSettings with
# GroupingSettings.from_keywords and passes it on; these tests catch an entry point whose keywords or
# defaults drift from it, or one that drops a keyword on the way.
def _keyword_entry_points():
    from ptycho_torch.memmap_bridge import MemmapDatasetBridge
    from ptycho_torch.raw_data_bridge import RawDataTorch

    return [RawData.generate_grouping, RawData.generate_grouped_data, RawDataTorch.generate_grouping,
            RawDataTorch.generate_grouped_data, MemmapDatasetBridge.get_grouped_data]


@pytest.mark.parametrize("method", _keyword_entry_points(), ids=lambda method: method.__qualname__)
def test_public_grouping_keywords_and_defaults_are_those_of_grouping_settings(method):
    import inspect

    from ptycho.grouping import GroupingSettings

    def defaults(function, skip=()):
        return {name: p.default for name, p in inspect.signature(function).parameters.items() if name not in skip}

    assert defaults(method, skip=("self", "N", "dataset_path")) == defaults(GroupingSettings.from_keywords)
    assert set(defaults(GroupingSettings.from_keywords)) <= set(GroupingSettings.__dataclass_fields__)


def test_every_grouping_keyword_reaches_the_grouping():
    from ptycho.grouping import GroupingSettings
    from ptycho_torch.raw_data_bridge import RawDataTorch

    # oversampling with a pool other than K: each keyword changes the groups (a dropped one would show)
    keywords = dict(K=4, nsamples=100, seed=7, gridsize=2, enable_oversampling=True, neighbor_pool_size=6)
    expected = raw().grouping(N, GroupingSettings(**keywords)).nn_indices
    assert expected.shape == (100, 4)
    for data in (raw(), RawDataTorch(X, Y, DIFF, probe(N), np.zeros(len(X), int))):
        np.testing.assert_array_equal(data.generate_grouping(N, **keywords).nn_indices, expected)
        np.testing.assert_array_equal(data.generate_grouped_data(N, **keywords)["nn_indices"], expected)
    assert not np.array_equal(raw().grouping(N, GroupingSettings(**{**keywords, "neighbor_pool_size": 5})).nn_indices, expected)
