"""Tests of the simulated scans and the embedded dataset."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptycho.patches import extract_patches
from ptycho.simulate import PRESETS, SimulationSettings, corpus_settings, simulate_scan, write_corpus, write_scan_npz

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "datasets" / "sim_small.npz"
CONTRACT_KEYS = {
    "xcoords", "ycoords", "xcoords_start", "ycoords_start",
    "diffraction", "probeGuess", "objectGuess", "scan_index",
}
SMALL = SimulationSettings(n_points=60, N=32, nphotons=1e5, seed=3)


@pytest.fixture(scope="module")
def small() -> dict[str, np.ndarray]:
    return simulate_scan(SMALL)


@pytest.fixture(scope="module")
def noise_free() -> dict[str, np.ndarray]:
    return simulate_scan(dataclasses.replace(SMALL, poisson_noise=False))


def _exit_waves(arrays: dict[str, np.ndarray], N: int) -> np.ndarray:
    patches = extract_patches(arrays["objectGuess"], arrays["xcoords"], arrays["ycoords"], N)
    return patches.astype(np.complex128) * arrays["probeGuess"].astype(np.complex128)


def _equivalent_diameter(probe: np.ndarray, threshold: float = 0.05) -> float:
    intensity = np.abs(probe) ** 2
    area = np.count_nonzero(intensity > threshold * intensity.max())
    return 2 * np.sqrt(area / np.pi)


def test_arrays_follow_the_npz_contract(small):
    n, N = SMALL.n_points, SMALL.N
    assert set(small) == CONTRACT_KEYS
    for key in ("xcoords", "ycoords", "xcoords_start", "ycoords_start"):
        assert small[key].shape == (n,) and small[key].dtype == np.float64, key
    np.testing.assert_array_equal(small["xcoords_start"], small["xcoords"])
    np.testing.assert_array_equal(small["ycoords_start"], small["ycoords"])
    assert small["diffraction"].shape == (n, N, N) and small["diffraction"].dtype == np.float32
    assert small["probeGuess"].shape == (N, N) and small["probeGuess"].dtype == np.complex64
    M = small["objectGuess"].shape[0]
    assert small["objectGuess"].shape == (M, M) and small["objectGuess"].dtype == np.complex64
    assert small["scan_index"].dtype == np.int64
    np.testing.assert_array_equal(small["scan_index"], np.zeros(n, dtype=np.int64))


def test_include_Y_stores_the_object_patches_as_complex64(small):
    arrays = simulate_scan(dataclasses.replace(SMALL, include_Y=True))
    assert arrays["Y"].dtype == np.complex64
    x, y = arrays["xcoords"], arrays["ycoords"]
    expected = extract_patches(arrays["objectGuess"], x, y, SMALL.N)
    np.testing.assert_array_equal(arrays["Y"], expected)
    np.testing.assert_array_equal(arrays["diffraction"], small["diffraction"])


def test_same_seed_gives_identical_arrays(small):
    again = simulate_scan(SMALL)
    for key in small:
        np.testing.assert_array_equal(again[key], small[key], err_msg=key)


def test_different_seed_gives_different_data(small):
    other = simulate_scan(dataclasses.replace(SMALL, seed=SMALL.seed + 1))
    for key in ("diffraction", "objectGuess", "xcoords", "ycoords"):
        assert not np.array_equal(other[key], small[key]), key


def test_chunk_size_does_not_change_the_result(small):
    chunked = simulate_scan(dataclasses.replace(SMALL, chunk_size=7))
    for key in small:
        np.testing.assert_array_equal(chunked[key], small[key], err_msg=key)


def test_amplitudes_are_square_roots_of_photon_counts(small):
    amplitude = small["diffraction"].astype(np.float64)
    assert np.all(np.isfinite(amplitude)) and amplitude.min() >= 0
    counts = amplitude**2
    np.testing.assert_allclose(counts, np.round(counts), rtol=1e-6, atol=1e-6)
    assert counts.max() > 1, "amplitudes look like normalised intensities, not counts"


def test_mean_counts_per_pattern_match_nphotons_within_poisson_noise(small):
    totals = (small["diffraction"].astype(np.float64) ** 2).sum(axis=(1, 2))
    poisson_sigma_of_mean = np.sqrt(SMALL.nphotons / SMALL.n_points)
    assert abs(totals.mean() - SMALL.nphotons) < 5 * poisson_sigma_of_mean


def test_noise_free_mean_counts_equal_nphotons(noise_free):
    totals = (noise_free["diffraction"].astype(np.float64) ** 2).sum(axis=(1, 2))
    np.testing.assert_allclose(totals.mean(), SMALL.nphotons, rtol=1e-5)


def test_noise_free_patterns_obey_parseval(noise_free):
    exit_energy = (np.abs(_exit_waves(noise_free, SMALL.N)) ** 2).sum(axis=(1, 2))
    counts = (noise_free["diffraction"].astype(np.float64) ** 2).sum(axis=(1, 2))
    np.testing.assert_allclose(counts, exit_energy, rtol=1e-5)


def test_noise_free_pattern_is_the_centred_far_field_of_probe_times_patch(noise_free):
    N = SMALL.N
    far_field = np.fft.fftshift(np.fft.fft2(_exit_waves(noise_free, N)), axes=(1, 2)) / N
    expected = np.abs(far_field)
    np.testing.assert_allclose(
        noise_free["diffraction"], expected, rtol=1e-4, atol=1e-5 * expected.max()
    )


def test_odd_pattern_size_is_centred_too():
    settings = SimulationSettings(n_points=12, N=17, poisson_noise=False, seed=1)
    arrays = simulate_scan(settings)
    far_field = np.fft.fftshift(np.fft.fft2(_exit_waves(arrays, 17)), axes=(1, 2)) / 17
    expected = np.abs(far_field)
    np.testing.assert_allclose(
        arrays["diffraction"], expected, rtol=1e-4, atol=1e-5 * expected.max()
    )


def test_zero_frequency_is_at_the_pattern_centre(noise_free):
    mean_intensity = (noise_free["diffraction"].astype(np.float64) ** 2).mean(axis=0)
    rows, cols = np.indices(mean_intensity.shape)
    total = mean_intensity.sum()
    centroid = ((rows * mean_intensity).sum() / total, (cols * mean_intensity).sum() / total)
    np.testing.assert_allclose(centroid, (SMALL.N // 2, SMALL.N // 2), atol=1.0)


def test_neighbouring_positions_overlap_by_most_of_the_probe(small):
    positions = np.column_stack([small["xcoords"], small["ycoords"]])
    distances, _ = cKDTree(positions).query(positions, k=2)
    nearest = distances[:, 1]
    diameter = _equivalent_diameter(small["probeGuess"])
    assert nearest.max() < 0.5 * diameter
    assert np.median(nearest) == pytest.approx(SMALL.scan_step, abs=2 * SMALL.scan_jitter)


def test_positions_are_a_jittered_raster(small):
    columns = int(np.ceil(np.sqrt(SMALL.n_points)))
    index = np.arange(SMALL.n_points - 1)
    same_row = index // columns == (index + 1) // columns
    dx = np.diff(small["xcoords"])[same_row]
    assert np.all(np.abs(dx - SMALL.scan_step) <= 2 * SMALL.scan_jitter + 1e-9)
    assert dx.std() > SMALL.scan_jitter / 4


@pytest.mark.parametrize(
    "settings",
    [SMALL, SimulationSettings(n_points=30, N=16, jitter=3.0, object_size=120, seed=2)],
    ids=["derived-object", "large-object-large-jitter"],
)
def test_patches_lie_inside_the_object(settings):
    arrays = simulate_scan(settings)
    ones = np.ones_like(arrays["objectGuess"])
    patches = extract_patches(ones, arrays["xcoords"], arrays["ycoords"], settings.N)
    np.testing.assert_allclose(patches, 1, atol=1e-6)


def test_object_has_amplitude_and_phase_structure(small):
    obj = small["objectGuess"]
    amplitude, phase = np.abs(obj), np.angle(obj)
    assert amplitude.min() > 0 and amplitude.max() <= 1
    assert amplitude.std() > 0.05
    assert 0.3 < np.ptp(phase) < 1.5


def test_object_too_small_for_the_scan_is_rejected():
    with pytest.raises(ValueError, match="object_size"):
        simulate_scan(SimulationSettings(n_points=100, N=32, object_size=40))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_points", 0),
        ("N", 4),
        ("nphotons", -1.0),
        ("nphotons", float("nan")),
        ("step", 0.0),
        ("jitter", -0.5),
        ("probe_diameter", 40.0),
        ("chunk_size", 0),
        ("seed", -1),
        ("feature_size_px", 0.0),
        ("phase_scale_rad", float("inf")),
    ],
)
def test_bad_settings_name_the_field(field, value):
    arguments = {"n_points": 10, "N": 32, field: value}
    with pytest.raises(ValueError, match=field):
        SimulationSettings(**arguments)


def test_written_npz_loads_without_pickle_and_matches(tmp_path, small):
    path = write_scan_npz(tmp_path / "nested" / "scan.npz", SMALL, diffraction_key="diff3d")
    assert path == tmp_path / "nested" / "scan.npz"
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == CONTRACT_KEYS - {"diffraction"} | {"diff3d"}
        np.testing.assert_array_equal(data["diff3d"], small["diffraction"])
        np.testing.assert_array_equal(data["objectGuess"], small["objectGuess"])
    assert [p.name for p in path.parent.iterdir()] == ["scan.npz"]


def test_uncompressed_writer_gives_the_same_arrays(tmp_path, small):
    path = write_scan_npz(tmp_path / "scan.npz", SMALL, compressed=False)
    with np.load(path, allow_pickle=False) as data:
        for key in small:
            np.testing.assert_array_equal(data[key], small[key], err_msg=key)


def test_unknown_diffraction_key_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="diffraction_key"):
        write_scan_npz(tmp_path / "scan.npz", SMALL, diffraction_key="X")


def test_embedded_dataset_is_regenerated_by_its_preset():
    assert EMBEDDED.stat().st_size <= 5_000_000
    expected = simulate_scan(PRESETS["embedded"])
    with np.load(EMBEDDED, allow_pickle=False) as data:
        assert set(data.files) == set(expected)
        for key in expected:
            assert data[key].dtype == expected[key].dtype, key
            np.testing.assert_array_equal(data[key], expected[key], err_msg=key)
    n, N, _ = expected["diffraction"].shape
    assert N == 64 and 400 <= n <= 600


def _run_command_line(*arguments: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "ptycho.simulate", *arguments],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=path),
        capture_output=True, text=True, timeout=120,
    )


def test_command_line_writes_a_readable_npz(tmp_path):
    out = tmp_path / "cli.npz"
    completed = _run_command_line(
        "--n-points", "25", "--N", "16", "--nphotons", "1e4", "--seed", "5", "--out", str(out)
    )
    assert completed.returncode == 0, completed.stderr
    expected = simulate_scan(SimulationSettings(n_points=25, N=16, nphotons=1e4, seed=5))
    with np.load(out, allow_pickle=False) as data:
        for key in expected:
            np.testing.assert_array_equal(data[key], expected[key], err_msg=key)


def test_command_line_reports_bad_options(tmp_path):
    completed = _run_command_line("--n-points", "0", "--out", str(tmp_path / "x.npz"))
    assert completed.returncode == 2
    assert "n_points" in completed.stderr
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("kind", ["directory", "corpus into a file", "below a file"])
def test_command_line_refuses_an_out_it_cannot_write_as_a_usage_error(tmp_path, kind):
    """--out an existing directory was simulated, then failed with an IsADirectoryError traceback and exit status 1."""
    (tmp_path / "existing").mkdir()
    (tmp_path / "notes.txt").write_text("kept")
    options = {"directory": ["--out", str(tmp_path / "existing")],
               "corpus into a file": ["--corpus", "1", "--out", str(tmp_path / "notes.txt")],
               "below a file": ["--out", str(tmp_path / "notes.txt" / "x.npz")]}[kind]
    completed = _run_command_line("--n-points", "4", "--N", "16", *options)
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr and "error: --out" in completed.stderr.strip().splitlines()[-1]
    assert (tmp_path / "notes.txt").read_text() == "kept" and not any((tmp_path / "existing").iterdir())


def test_command_line_replaces_an_existing_file_only_with_overwrite(tmp_path):
    """--out a measured scan (or any file) silently replaced it with a simulated one."""
    measured = tmp_path / "measured.npz"
    measured.write_bytes(b"a measured scan")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "scan001.npz").write_bytes(b"an earlier scan")
    for options in (["--out", str(measured)], ["--corpus", "2", "--out", str(tmp_path / "corpus")]):
        completed = _run_command_line("--n-points", "4", "--N", "16", *options)
        assert completed.returncode == 2, completed.stderr
        assert "exists; pass --overwrite" in completed.stderr.strip().splitlines()[-1]
    assert measured.read_bytes() == b"a measured scan" and (tmp_path / "corpus" / "scan001.npz").read_bytes() == b"an earlier scan"
    assert not (tmp_path / "corpus" / "scan000.npz").exists()  # refused before any scan was written
    completed = _run_command_line("--n-points", "4", "--N", "16", "--seed", "5", "--out", str(measured), "--overwrite")
    assert completed.returncode == 0, completed.stderr
    with np.load(measured, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["xcoords"], simulate_scan(SimulationSettings(n_points=4, N=16, seed=5))["xcoords"])


def test_corpus_settings_vary_objects_doses_and_positions_reproducibly():
    base = PRESETS["embedded"]
    corpus = corpus_settings(6, seed=11)
    assert corpus == corpus_settings(6, seed=11)
    assert corpus != corpus_settings(6, seed=12)
    assert len({s.seed for s in corpus}) == 6
    for s in corpus:
        assert (s.n_points, s.N, s.probe_diameter, s.object_feature_px) == (base.n_points, base.N, base.probe_diameter, base.object_feature_px)
        assert 0.875 * base.scan_step <= s.scan_step <= 1.125 * base.scan_step
        assert 0.5 * base.scan_jitter <= s.scan_jitter <= 1.5 * base.scan_jitter
        assert base.nphotons / 10 <= s.nphotons <= base.nphotons * 10
    assert len({round(s.nphotons) for s in corpus}) == 6


def test_write_corpus_writes_one_scan_per_setting(tmp_path):
    settings = [dataclasses.replace(SMALL, seed=seed) for seed in (1, 2)]
    paths = write_corpus(tmp_path / "corpus", settings)
    assert [p.name for p in paths] == ["scan000.npz", "scan001.npz"]
    with np.load(paths[1], allow_pickle=False) as data:
        np.testing.assert_array_equal(data["diffraction"], simulate_scan(settings[1])["diffraction"])


def test_feature_size_sets_the_scale_of_the_object_islands():
    def correlation_length(feature_px: float) -> float:
        phase = np.angle(simulate_scan(dataclasses.replace(SMALL, feature_size_px=feature_px, n_points=4, object_size=128))["objectGuess"])
        phase = phase - phase.mean()
        lag = np.mean(phase[:, 4:] * phase[:, :-4]) / np.mean(phase * phase)
        return float(lag)

    assert correlation_length(8.0) > correlation_length(1.5) + 0.2


def test_phase_scale_sets_the_phase_range():
    phases = [np.ptp(np.angle(simulate_scan(dataclasses.replace(SMALL, phase_scale_rad=scale))["objectGuess"])) for scale in (0.4, 1.6)]
    assert phases[1] > phases[0] + 0.8
