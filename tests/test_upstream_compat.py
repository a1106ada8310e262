"""PtychoPINN users' ``ptycho`` code runs unchanged: metadata NPZs, grouping helpers, params seal, normalisation.

Public names plus the private helpers PtychoPINN's own tests call; no torch needed. About 5 s on the 2-core CI machine.
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho import params
from ptycho.config.config import ModelConfig, TrainingConfig
from ptycho.metadata import MetadataManager, load_config_from_metadata
from ptycho.raw_data import RawData, get_neighbor_indices, normalize_data
from ptycho_torch.data_container_bridge import PtychoDataContainerTorch
from tests.scans import amplitude_stack, probe, raster_scan

ROOT = Path(__file__).resolve().parents[1]
N = 16
X, Y = raster_scan(n_side=8)
DIFF = amplitude_stack(len(X), N)
SCAN = dict(xcoords=X, ycoords=Y, diff3d=DIFF, probeGuess=probe(N), scan_index=np.zeros(len(X), np.int64))


def training_config():
    return TrainingConfig(model=ModelConfig(N=N, gridsize=2), nphotons=1e6, n_groups=30)


# --- MetadataManager ---------------------------------------------------------------------------

def test_metadata_round_trip_is_json_readable_without_pickle(tmp_path):
    record = MetadataManager.create_metadata(training_config(), "simulate.py", seed=np.int64(3))
    path = tmp_path / "meta.npz"
    MetadataManager.save_with_metadata(path, SCAN, record)
    with np.load(path, allow_pickle=False) as raw:
        stored = json.loads(raw["_metadata"].item())
    assert stored["physics_parameters"] == {
        "nphotons": 1e6, "gridsize": 2, "N": N, "probe_trainable": False,
        "intensity_scale_trainable": True, "nll_weight": 1.0, "model_type": "pinn",
    }
    assert stored["additional_parameters"] == {"seed": 3}
    arrays, metadata = MetadataManager.load_with_metadata(path)
    assert metadata == stored and sorted(arrays) == sorted(SCAN)
    np.testing.assert_array_equal(arrays["diff3d"], DIFF)
    assert MetadataManager.get_nphotons(metadata) == 1e6 and MetadataManager.get_nphotons(None) == 1e9
    other = TrainingConfig(model=ModelConfig(N=N, gridsize=1), nphotons=1e9, n_groups=30)
    assert MetadataManager.validate_parameters(metadata, other) == [
        "nphotons mismatch: dataset=1000000.0, config=1000000000.0", "gridsize mismatch: dataset=2, config=1",
    ]
    assert load_config_from_metadata(metadata).nphotons == 1e6
    updated = MetadataManager.add_transformation_record(metadata, "crop.py", "crop", {"size": 8})
    assert updated["data_transformations"][-1]["operation"] == "crop"
    with pytest.raises(ValueError, match="Inconsistent gridsize in metadata 1: 1 vs 2"):
        MetadataManager.merge_metadata([metadata, {"physics_parameters": {"gridsize": 1}}], "validate_consistent")
    assert MetadataManager.merge_metadata([None, metadata])["merge_info"]["source_count"] == 1


def write_pickled_metadata_npz(path):
    """An NPZ as PtychoPINN's older save_with_metadata wrote it: the record as a pickled object array."""
    np.savez(path, **SCAN, _metadata=np.array([json.dumps({"physics_parameters": {"nphotons": 5.0}})], dtype=object))
    return path


def test_pickled_metadata_is_skipped_with_a_warning_and_the_scan_loads(tmp_path, caplog, monkeypatch):
    path = write_pickled_metadata_npz(tmp_path / "old.npz")
    unpickled = []
    monkeypatch.setattr("pickle.loads", lambda *a, **k: unpickled.append(a))
    with caplog.at_level(logging.WARNING):
        raw = RawData.from_file(path)
        arrays, metadata = MetadataManager.load_with_metadata(path)
    np.testing.assert_array_equal(raw.diff3d, DIFF)
    assert "npz_metadata" not in raw.metadata and metadata is None and "diff3d" in arrays
    assert sum("_metadata" in m and "never unpickled" in m for m in caplog.messages) == 2
    assert unpickled == []


def test_string_metadata_in_a_scan_is_parsed(tmp_path):
    path = tmp_path / "new.npz"
    MetadataManager.save_with_metadata(path, SCAN, {"physics_parameters": {"nphotons": 7.0}})
    assert RawData.from_file(path).metadata["npz_metadata"] == {"physics_parameters": {"nphotons": 7.0}}


def test_memory_mapped_dataset_reads_a_scan_with_pickled_metadata(tmp_path, caplog):
    from ptycho_torch.memmap_bridge import MemmapDatasetBridge

    path = write_pickled_metadata_npz(tmp_path / "old.npz")
    with caplog.at_level(logging.WARNING):
        config = TrainingConfig(model=ModelConfig(N=N, gridsize=2), nphotons=1e6, n_groups=30, subsample_seed=5)
        grouped = MemmapDatasetBridge(path, config, tmp_path / "memmap", progress=False).grouped_data()
    expected = RawData.from_coords_without_pc(**SCAN).generate_grouped_data(N, K=4, nsamples=30, seed=5, gridsize=2)
    np.testing.assert_allclose(grouped["X_full"], expected["X_full"], rtol=1e-6)
    assert any("never unpickled" in m for m in caplog.messages)


# --- raw_data helpers ----------------------------------------------------------------------------

def test_get_neighbor_indices_includes_each_point_and_its_nearest():
    indices = get_neighbor_indices(X, Y, K=3)
    assert indices.shape == (len(X), 4)
    distances = np.hypot(X[:, None] - X[indices], Y[:, None] - Y[indices])
    np.testing.assert_array_equal(distances[:, 0], 0)
    brute = np.sort(np.hypot(X[:, None] - X[None], Y[:, None] - Y[None]), axis=1)[:, :4]
    np.testing.assert_allclose(np.sort(distances, axis=1), brute)


def test_generate_groups_efficiently_matches_the_grouping_and_upstream_shapes():
    raw = RawData.from_coords_without_pc(**SCAN)
    groups = raw._generate_groups_efficiently(nsamples=30, K=6, C=4, seed=42)
    assert groups.dtype == np.int32 and groups.shape == (30, 4)
    expected = raw.generate_grouped_data(N, K=6, nsamples=30, seed=42, gridsize=2)["nn_indices"]
    np.testing.assert_array_equal(groups, expected)
    state = np.random.get_state()[1].copy()
    assert raw._generate_groups_efficiently(500, 6, 4, seed=1).shape == (64, 4)  # capped at the number of points
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # the global generator is untouched
    sequential = raw._generate_groups_efficiently(10, 6, 4, seed_indices=np.arange(10))
    np.testing.assert_array_equal(sequential, raw.generate_grouped_data(N, K=6, nsamples=10, sequential_sampling=True, gridsize=2)["nn_indices"])
    singles = raw._generate_groups_efficiently(5, 4, 1, seed=0)
    assert singles.shape == (5, 1) and len(set(singles.ravel())) == 5
    with pytest.raises(ValueError, match="K=3 must be >= C=4"):
        raw._generate_groups_efficiently(10, 3, 4)


def test_generate_groups_with_oversampling_matches_the_grouping():
    raw = RawData.from_coords_without_pc(**SCAN)
    groups = raw._generate_groups_with_oversampling(nsamples=200, K=6, C=4, seed=3)
    assert groups.shape == (200, 4) and len(np.unique(groups, axis=0)) > 64  # more groups than points
    expected = raw.generate_grouped_data(N, K=6, nsamples=200, seed=3, gridsize=2, enable_oversampling=True)["nn_indices"]
    np.testing.assert_array_equal(groups, expected)
    sequential = raw._generate_groups_with_oversampling(200, 6, 4, seed=3, seed_indices=np.arange(64))
    np.testing.assert_array_equal(
        sequential,
        raw.generate_grouped_data(N, K=6, nsamples=200, seed=3, gridsize=2, enable_oversampling=True, sequential_sampling=True)["nn_indices"],
    )
    singles = raw._generate_groups_with_oversampling(100, 4, 1, seed=0)
    assert singles.shape == (100, 1) and set(singles.ravel()) <= set(range(64))


def test_normalize_data_accepts_single_patterns_and_groups():
    grouped = RawData.from_coords_without_pc(**SCAN).generate_grouped_data(N, K=6, nsamples=30, seed=4, gridsize=2)
    np.testing.assert_allclose(normalize_data(grouped, N), grouped["X_full"], rtol=1e-6)
    singles = normalize_data({"diffraction": DIFF}, N)
    assert singles.shape == DIFF.shape and singles.dtype == np.float32
    energy = np.sum(singles.astype(np.float64) ** 2, axis=(1, 2))
    assert energy.mean() == pytest.approx((N / 2) ** 2, rel=1e-5)
    np.testing.assert_allclose(normalize_data({"diffraction": DIFF[..., None]}, N)[..., 0], singles, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(n, N, N\) or \(B, N, N, C\), got \(16, 16\)"):
        normalize_data({"diffraction": DIFF[0]}, N)


def test_container_accepts_grouped_data_without_start_coordinates():
    grouped = RawData.from_coords_without_pc(**SCAN).generate_grouped_data(N, K=6, nsamples=30, seed=4, gridsize=2)
    del grouped["coords_start_relative"]
    container = PtychoDataContainerTorch(grouped, probe(N))
    np.testing.assert_array_equal(np.asarray(container.coords_relative), grouped["coords_relative"])
    np.testing.assert_array_equal(np.asarray(container.coords_nominal), grouped["coords_relative"].astype(np.float32))


# --- params.seal / unseal --------------------------------------------------------------------------

def test_post_seal_writes_warn_except_whitelisted_ones(caplog):
    params.unseal()
    with caplog.at_level(logging.WARNING, logger="ptycho.params"):
        params.set("gridsize", 1)
        params.seal()
        assert params.is_sealed()
        params.set("intensity_scale", 5.0)
        assert not any("post-seal" in m for m in caplog.messages)
        params.set("gridsize", 2)
    assert [m for m in caplog.messages if "post-seal" in m] == [
        "post-seal write of params.cfg['gridsize'] = 2: the configuration was sealed; "
        "set it before params.seal() (or call params.unseal() first)"
    ]
    assert params.get("gridsize") == 2  # still written, as upstream
    params.unseal()
    caplog.clear()
    params.set("gridsize", 3)
    assert not caplog.messages and not params.is_sealed()


def test_snapshot_restores_the_seal():
    params.unseal()
    saved = params.snapshot()
    params.seal()
    params.restore(saved)
    assert not params.is_sealed()
