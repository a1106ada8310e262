"""What a batch holds is the scan's values: caches tied to the exact memory map, in-place edits of the map noticed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from ptycho_torch.store.inventory import GROUPS, MEMORY_MAP, list_caches
from ptycho_torch.store.fingerprint import SAMPLE_BYTES, sample_offsets
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.store.memmap import DIFFRACTION
from tests.reliability.support import scan_directory
from tests.torch.test_data_pipeline import baseline_grouped, embedded_arrays, memmap_config, save_variant

SETTING_A = dict(n_groups=200)
SETTING_B = dict(n_groups=100)


def counts_scan(path: Path) -> Path:
    """The embedded scan stored as integer photon counts (amplitude squared, rounded)."""
    arrays = embedded_arrays()
    counts = np.rint(arrays["diffraction"].astype(np.float64) ** 2).astype(np.int32)
    return save_variant(path, diffraction=counts)


def serve(npz: Path, data_dir: Path, units: str, **setting) -> MemmapDatasetBridge:
    return MemmapDatasetBridge(npz, memmap_config(npz, **setting), data_dir, diffraction_units=units, progress=False)


def mean_energy(x_full: np.ndarray) -> float:
    return float(np.mean(np.einsum("bijc,bijc->bc", x_full, x_full, dtype=np.float64)))


def cache_entry(data_dir: Path, bridge: MemmapDatasetBridge):
    (entry,) = [e for e in list_caches(data_dir) if e.kind == GROUPS and e.path == bridge.cache_path]
    return entry


def test_cache_made_from_another_memory_map_is_stale_units_sequence_a_b_a(tmp_path, caplog):
    """Setting A (amplitude), setting B (auto: map rebuilt as sqrt), setting A (auto): A must be regrouped."""
    npz, data_dir = counts_scan(tmp_path / "counts.npz"), tmp_path / "memmap"
    first = serve(npz, data_dir, "amplitude", **SETTING_A)
    assert first.experiment.regrouped
    second = serve(npz, data_dir, "auto", **SETTING_B)
    assert second.experiment.regrouped
    entry = cache_entry(data_dir, first)
    assert not entry.valid and "memory map" in entry.problem, entry.problem

    with caplog.at_level(logging.WARNING, logger="ptycho_torch"):
        third = serve(npz, data_dir, "auto", **SETTING_A)
    assert third.experiment.regrouped, "the cache of setting A was computed from the amplitude map and must not be reused"
    assert any("memory map" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records), caplog.text
    got = third.grouped_data()
    assert mean_energy(got["X_full"]) == pytest.approx((64 / 2) ** 2, rel=1e-4)
    counts = np.rint(embedded_arrays()["diffraction"].astype(np.float64) ** 2).astype(np.int32)
    expected = baseline_grouped({**embedded_arrays(), "diffraction": counts}, nsamples=200)
    np.testing.assert_array_equal(got["nn_indices"], expected["nn_indices"])
    np.testing.assert_allclose(got["X_full"], expected["X_full"], rtol=1e-6)
    assert cache_entry(data_dir, third).valid

    fourth = serve(npz, data_dir, "auto", **SETTING_A)
    assert not fourth.experiment.regrouped, "a cache of the current map is reused"


def test_cache_of_another_grouping_version_is_stale(tmp_path, monkeypatch, caplog):
    from ptycho_torch.store import groups_cache

    npz, data_dir = save_variant(tmp_path / "scan.npz"), tmp_path / "memmap"
    first = serve(npz, data_dir, "auto")
    monkeypatch.setattr(groups_cache, "GROUPING_VERSION", groups_cache.GROUPING_VERSION + 1)
    assert "grouping algorithm" in cache_entry(data_dir, first).problem
    with caplog.at_level(logging.WARNING, logger="ptycho_torch"):
        again = serve(npz, data_dir, "auto")
    assert again.experiment.regrouped
    assert "grouping algorithm version" in caplog.text


def unsampled_patterns(map_path: Path) -> np.ndarray:
    """Patterns none of the sampled 64 KiB blocks of the map covers (so only a full read sees them change)."""
    stack = np.load(map_path, mmap_mode="r")
    header, pattern_bytes = stack.offset, stack[0].nbytes
    covered = [(offset, offset + SAMPLE_BYTES) for offset in sample_offsets(os.path.getsize(map_path))]
    starts = header + np.arange(len(stack)) * pattern_bytes
    free = np.ones(len(stack), dtype=bool)
    for a, b in covered:
        free &= (starts + pattern_bytes <= a) | (starts >= b)
    assert free.any(), "every pattern is sampled"
    return np.flatnonzero(free)


def zero_pattern_in_place(map_path: Path, index: int) -> None:
    stack = np.load(map_path, mmap_mode="r+")
    stack[index] = 0
    stack.flush()
    del stack


def test_map_edited_in_place_is_rebuilt_with_a_warning_and_info_calls_it_invalid(tmp_path, caplog):
    npz, data_dir = save_variant(tmp_path / "scan.npz"), tmp_path / "memmap"
    first = serve(npz, data_dir, "auto")
    map_path = scan_directory(data_dir, npz) / DIFFRACTION
    unsampled = unsampled_patterns(map_path)
    nn = first.experiment.grouping.nn_indices
    group, channel = np.argwhere(np.isin(nn, unsampled))[0]
    zero_pattern_in_place(map_path, int(nn[group, channel]))  # outside the sampled blocks, like most of a large map

    entries = {e.kind: e for e in list_caches(data_dir)}
    assert not entries[MEMORY_MAP].valid and "modified" in entries[MEMORY_MAP].problem, entries[MEMORY_MAP].problem
    assert not entries[GROUPS].valid

    with caplog.at_level(logging.WARNING, logger="ptycho_torch"):
        again = serve(npz, data_dir, "auto")
    assert again.experiment.regrouped
    assert any(DIFFRACTION in r.getMessage() and "modified" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING), caplog.text
    got = again.grouped_data()
    assert np.abs(got["diffraction"][group, :, :, channel]).sum() > 0, "the zeroed pattern was served"
    expected = baseline_grouped()
    np.testing.assert_array_equal(got["nn_indices"], expected["nn_indices"])
    np.testing.assert_allclose(got["X_full"], expected["X_full"], rtol=1e-6)
    assert all(e.valid for e in list_caches(data_dir))


def test_same_size_edit_with_restored_mtime_is_caught_only_by_verify(tmp_path):
    """Documented limit: an edit that restores mtime_ns (os.utime) keeps the inode and size; only verify sees it."""
    from tests.test_cli import GROUPING, run

    npz, data_dir = save_variant(tmp_path / "scan.npz"), tmp_path / "memmap"
    assert run("build", npz, *GROUPING, "--data-dir", data_dir, "--quiet").returncode == 0
    map_path = scan_directory(data_dir, npz) / DIFFRACTION
    before = os.stat(map_path)
    unsampled = int(unsampled_patterns(map_path)[0])
    zero_pattern_in_place(map_path, unsampled)
    os.utime(map_path, ns=(before.st_atime_ns, before.st_mtime_ns))

    result = run("verify", npz, *GROUPING, "--data-dir", data_dir, "--quiet")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "checksum" in result.stdout and f"pattern {unsampled} differs" in result.stdout, result.stdout


# --- ground truth: all or nothing, and under the pattern it belongs to -----------------------------


def dataset(path, data_dir, **kwargs):
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    kwargs.setdefault("config", memmap_config(path))
    return PtychoDataset(path, data_dir=data_dir, progress=False, **kwargs)


def test_ground_truth_over_a_directory_where_some_scans_lack_an_object_is_refused_naming_them(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    save_variant(scans / "a_with_object.npz")
    without = save_variant(scans / "b_without_object.npz", objectGuess=None)
    data_dir = tmp_path / "memmap"
    with pytest.raises(ValueError) as caught:
        dataset(scans, data_dir, config=memmap_config(scans / "a_with_object.npz"), ground_truth=True)
    message = str(caught.value)
    assert str(without) in message and "a_with_object" not in message, message
    assert "1 of 2" in message and "ground_truth=False" in message and "objectGuess" in message
    assert not data_dir.exists(), "refused before building anything"
    served = dataset(scans, data_dir, config=memmap_config(scans / "a_with_object.npz"))
    assert len(served) == 400 and "Y" not in served[[0, 399]][0].keys()


SIM_N = 32


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from ptycho.simulate import SimulationSettings, write_scan_npz

    path = tmp_path_factory.mktemp("sim") / "sim.npz"
    return write_scan_npz(path, SimulationSettings(n_points=100, N=SIM_N, poisson_noise=False, seed=3))


def simulated_config(path):
    from ptycho.config.config import ModelConfig, TrainingConfig

    model = ModelConfig(N=SIM_N, gridsize=2)
    return TrainingConfig(model=model, train_data_file=path, n_groups=40, neighbor_count=4, subsample_seed=5, nphotons=1e6)


def diffraction_amplitude(probe: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """The simulator's forward model: ``|fftshift(fft2(probe * patch, norm='ortho'))|`` (even N)."""
    far_field = np.fft.fftshift(np.fft.fft2(probe * patches, norm="ortho"), axes=(-2, -1))
    return np.abs(far_field)


def test_default_ground_truth_is_the_object_under_each_channels_pattern(simulated, tmp_path):
    """On ptycho.simulate data, the diffraction of probe * Y[:, c] is images[:, c] (up to the X_full scale)."""
    data = dataset(simulated, tmp_path / "memmap", config=simulated_config(simulated), ground_truth=True)
    batch, probe, scale = data[list(range(len(data)))]
    images = batch["images"].numpy().astype(np.float64)
    probe = probe[:, :, 0]  # the simulated probe has one mode
    predicted = diffraction_amplitude(probe.numpy().astype(np.complex128), batch["Y"].numpy().astype(np.complex128))
    predicted *= float(scale.reshape(-1)[0])
    error = np.abs(predicted - images).max() / images.max()
    assert error < 1e-4, f"Y[:, c] is not the object under images[:, c]: relative error {error}"

    reflected = dataset(simulated, tmp_path / "memmap", config=simulated_config(simulated), ground_truth=True, y_convention="baseline")
    batch_b, _, _ = reflected[list(range(len(reflected)))]
    predicted_b = diffraction_amplitude(probe.numpy().astype(np.complex128), batch_b["Y"].numpy().astype(np.complex128)) * float(scale.reshape(-1)[0])
    assert np.abs(predicted_b - images).max() / images.max() > 100 * error, "the baseline's patches are reflected"


def test_baseline_y_convention_reproduces_raw_data_exactly(simulated, tmp_path):
    from ptycho.raw_data import RawData

    data = dataset(simulated, tmp_path / "memmap", config=simulated_config(simulated), ground_truth=True, y_convention="baseline")
    batch, _, _ = data[list(range(len(data)))]
    expected = RawData.from_file(simulated).generate_grouped_data(SIM_N, K=4, nsamples=40, seed=5, gridsize=2)
    np.testing.assert_array_equal(batch["nn_indices"].numpy(), expected["nn_indices"])
    np.testing.assert_array_equal(batch["Y"].numpy(), expected["Y"].transpose(0, 3, 1, 2))


def test_y_convention_is_validated(tmp_path):
    with pytest.raises(ValueError, match="y_convention must be one of .'physical', 'baseline'.*got 'reflected'"):
        dataset(save_variant(tmp_path / "scan.npz"), tmp_path / "memmap", ground_truth=True, y_convention="reflected")
