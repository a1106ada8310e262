"""PtychoPINN's own TensorFlow-run grouping outputs (tests/data/tf_baseline_grouping.npz) and checks against them."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_FILE = ROOT / "tests" / "data" / "tf_baseline_grouping.npz"
EMBEDDED = ROOT / "datasets" / "sim_small.npz"

# "Float32 precision": a few units in the last place of float32. The baseline computes the X_full
# factor in float32 (ours is float64, rounded once), so factor and X_full differ by up to 2 ulps.
FLOAT32_RTOL = 4 * float(np.finfo(np.float32).eps)
# Ground-truth patches: the baseline's bilinear weights come from float32 pixel positions (up to
# about 300 px here, float32 spacing 1.5e-5 to 3e-5 px), so values differ by up to 4.3e-6 (measured
# on all 8 x 64 x 64 x C patches of every case); a 0.01 px error in the row position gives 3e-3 to 1e-2.
Y_ATOL = 1e-5

COORDINATE_KEYS = ("coords_offsets", "coords_relative", "coords_nn", "coords_start_offsets", "coords_start_relative")
ALL_KEYS = ("nn_indices", *COORDINATE_KEYS, "X_full", "Y")


@dataclass(frozen=True)
class GoldenCase:
    """One call of PtychoPINN's ``RawData.generate_grouped_data`` recorded in the golden file."""

    name: str
    N: int
    gridsize: int
    K: int
    nsamples: int
    seed: int | None
    sequential_sampling: bool
    enable_oversampling: bool
    embedded: bool

    @property
    def grouping_kwargs(self) -> dict:
        """Arguments of ``generate_grouped_data`` after ``N``."""
        return dict(
            K=self.K,
            nsamples=self.nsamples,
            seed=self.seed,
            sequential_sampling=self.sequential_sampling,
            gridsize=self.gridsize,
            enable_oversampling=self.enable_oversampling,
        )

    @property
    def has_y(self) -> bool:
        return self.embedded


@functools.lru_cache(maxsize=1)
def golden_arrays() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_FILE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@functools.lru_cache(maxsize=1)
def golden_metadata() -> dict:
    return json.loads(str(golden_arrays()["metadata"]))


def golden_cases() -> list[GoldenCase]:
    return [
        GoldenCase(
            name=name,
            N=int(c["N"]),
            gridsize=int(c["gs"]),
            K=int(c["K"]),
            nsamples=int(c["nsamples"]),
            seed=None if c["seed"] is None else int(c["seed"]),
            sequential_sampling=bool(c["seq"]),
            enable_oversampling=bool(c["over"]),
            embedded=c["input"] == "embedded",
        )
        for name, c in golden_metadata()["cases"].items()
    ]


CASES = golden_cases()
CASE_IDS = [case.name for case in CASES]


def golden(case: GoldenCase, key: str) -> np.ndarray:
    return golden_arrays()[f"{case.name}/{key}"]


@functools.lru_cache(maxsize=None)
def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def require_embedded_dataset_unchanged() -> None:
    """Fail (never skip) when datasets/sim_small.npz is not the file the golden outputs were made from."""
    expected = golden_metadata()["embedded_sha256"]
    actual = file_sha256(EMBEDDED)
    if actual != expected:
        pytest.fail(
            f"{EMBEDDED} has sha256 {actual}, but {GOLDEN_FILE.name} was made from "
            f"sha256 {expected}: the embedded dataset changed, so the golden file must be regenerated from "
            "PtychoPINN (TensorFlow) as tests/data/README.md describes; never edit or skip the golden values",
            pytrace=False,
        )


@dataclass(frozen=True, eq=False)
class CaseInputs:
    """What the baseline was given: ``from_coords_without_pc(x, y, diffraction, probe, zeros, object)``."""

    xcoords: np.ndarray
    ycoords: np.ndarray
    diffraction: np.ndarray
    probeGuess: np.ndarray
    objectGuess: np.ndarray | None

    @property
    def scan_index(self) -> np.ndarray:
        return np.zeros(len(self.xcoords))  # float64 zeros, exactly what upstream passed


def case_inputs(case: GoldenCase) -> CaseInputs:
    if case.embedded:
        require_embedded_dataset_unchanged()
    return _read_inputs(case)


@functools.lru_cache(maxsize=None)
def _read_inputs(case: GoldenCase) -> CaseInputs:
    if case.embedded:
        with np.load(EMBEDDED, allow_pickle=False) as data:
            return CaseInputs(data["xcoords"], data["ycoords"], data["diffraction"], data["probeGuess"], data["objectGuess"])
    return CaseInputs(
        golden(case, "in_xcoords"),
        golden(case, "in_ycoords"),
        golden(case, "in_diffraction"),
        np.ones((case.N, case.N), dtype=np.complex64),
        None,
    )


def case_npz(case: GoldenCase, directory: Path) -> Path:
    """A scan file holding the case's inputs: the embedded dataset itself, or the stored inputs written to ``directory``."""
    if case.embedded:
        require_embedded_dataset_unchanged()
        return EMBEDDED
    inputs = case_inputs(case)
    path = Path(directory) / f"{case.name}.npz"
    np.savez(path, xcoords=inputs.xcoords, ycoords=inputs.ycoords, diffraction=inputs.diffraction, probeGuess=inputs.probeGuess)
    return path


def assert_matches_golden(case: GoldenCase, got: dict, keys=ALL_KEYS) -> None:
    """``got`` (grouped-data layout: ``(B, 1, 2, C)`` coordinates, ``(B, N, N, C)`` images) equals the baseline's outputs.

    ``nn_indices`` exactly; coordinates, ``norm`` (if given) and ``X_full`` of the first and last 8
    groups to float32 precision; ``Y`` of the first 8 groups to ``Y_ATOL`` (embedded cases only: the
    synthetic case has no object). Only the coordinate keys named in ``keys`` are compared.
    """
    expected_nn = golden(case, "nn_indices")
    assert np.shape(got["nn_indices"]) == expected_nn.shape, f"{case.name}: nn_indices shape"
    np.testing.assert_array_equal(got["nn_indices"], expected_nn, err_msg=f"{case.name}: nn_indices")
    position_scale = float(np.abs(golden(case, "coords_nn")).max())  # px; relative coordinates are differences of these
    for key in COORDINATE_KEYS:
        if key in keys:
            _assert_float32_close(got[key], golden(case, key), f"{case.name}: {key}", atol=FLOAT32_RTOL * position_scale)
    norm = float(golden(case, "X_full_norm"))
    if "norm" in got:
        np.testing.assert_allclose(float(got["norm"]), norm, rtol=FLOAT32_RTOL, err_msg=f"{case.name}: X_full normalisation")
    if "X_full" in keys:
        B, C = expected_nn.shape
        X_full = np.asarray(got["X_full"])
        assert X_full.dtype == np.float32 and X_full.shape == (B, case.N, case.N, C), f"{case.name}: X_full {X_full.dtype} {X_full.shape}"
        rows = np.unique(np.r_[0:8, B - 8 : B])  # the factor covers every group; the patterns are checked on these
        expected_x = np.float32(norm) * case_inputs(case).diffraction[expected_nn[rows]].transpose(0, 2, 3, 1)
        _assert_float32_close(X_full[rows], expected_x, f"{case.name}: X_full of groups {rows.tolist()}")
    if "Y" in keys and case.has_y:
        assert_y_matches_golden(case, np.asarray(got["Y"])[:8])


def assert_y_matches_golden(case: GoldenCase, first8: np.ndarray) -> None:
    """``first8``: ``(8, N, N, C)`` complex64 ground-truth patches of the first 8 groups."""
    expected = golden(case, "Y_first8")
    assert first8.dtype == np.complex64, f"{case.name}: Y dtype {first8.dtype}"
    assert first8.shape == expected.shape, f"{case.name}: Y shape {first8.shape} != {expected.shape}"
    np.testing.assert_allclose(first8, expected, rtol=0, atol=Y_ATOL, err_msg=f"{case.name}: Y (first 8 groups)")


def _assert_float32_close(actual, expected: np.ndarray, what: str, atol: float = 0.0) -> None:
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=FLOAT32_RTOL, atol=atol, err_msg=what)
