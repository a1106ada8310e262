"""RawData and the in-repo transcription reproduce PtychoPINN's own TensorFlow-run grouping outputs."""

import shutil

import numpy as np
import pytest

from ptycho.raw_data import RawData
from tests import golden
from tests.baseline_reference import reference_groups
from tests.golden import CASE_IDS, CASES, assert_matches_golden, case_inputs, golden_metadata


def test_golden_file_holds_the_five_documented_cases():
    cases = golden_metadata()["cases"]
    assert sorted(cases) == sorted(
        ["embedded_gs2_K7_seed42", "embedded_gs1_K4_seed1", "embedded_gs2_sequential", "embedded_gs2_oversample_seed3", "synthetic_gs3_K10_seed11"]
    )
    assert "aaa014e" in golden_metadata()["upstream"]
    members = set(golden.golden_arrays())
    for case in CASES:
        needed = {"nn_indices", "X_full_norm", *golden.COORDINATE_KEYS} | ({"Y_first8"} if case.embedded else {"in_xcoords", "in_ycoords", "in_diffraction"})
        assert {f"{case.name}/{key}" for key in needed} <= members, case.name
        assert golden.golden(case, "nn_indices").shape == (case.nsamples, case.gridsize**2), case.name


def test_embedded_dataset_is_the_one_the_golden_file_was_made_from():
    golden.require_embedded_dataset_unchanged()


def test_a_changed_embedded_dataset_fails_and_asks_for_new_golden_outputs(tmp_path, monkeypatch):
    changed = tmp_path / "sim_small.npz"
    shutil.copyfile(golden.EMBEDDED, changed)
    with changed.open("ab") as handle:
        handle.write(b"\0")  # same arrays, different bytes: what regenerating the file does
    monkeypatch.setattr(golden, "EMBEDDED", changed)
    with pytest.raises(pytest.fail.Exception, match="golden file must be regenerated from PtychoPINN"):
        golden.case_inputs(next(case for case in CASES if case.embedded))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_raw_data_reproduces_the_tensorflow_baseline(case):
    inputs = case_inputs(case)
    raw = RawData.from_coords_without_pc(inputs.xcoords, inputs.ycoords, inputs.diffraction, inputs.probeGuess, inputs.scan_index, inputs.objectGuess)
    dset = raw.generate_grouped_data(case.N, **case.grouping_kwargs)
    grouping = raw.generate_grouping(case.N, **case.grouping_kwargs)
    assert_matches_golden(case, {**dset, "norm": grouping.norm})
    np.testing.assert_array_equal(dset["diffraction"], inputs.diffraction[dset["nn_indices"]].transpose(0, 2, 3, 1))
    assert (dset["Y"] is None) == (not case.has_y)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_transcription_reproduces_the_tensorflow_baseline(case):
    """Anchors tests/baseline_reference.py, which checks the branches the golden file lacks."""
    inputs = case_inputs(case)
    groups = reference_groups(
        inputs.xcoords, inputs.ycoords, case.gridsize**2, case.K, case.nsamples,
        seed=case.seed, sequential=case.sequential_sampling, oversampling=case.enable_oversampling,
    )
    np.testing.assert_array_equal(groups, golden.golden(case, "nn_indices"))
