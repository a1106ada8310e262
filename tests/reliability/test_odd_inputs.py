"""Odd but possible inputs: each served correctly or refused with a message naming the file, key, index and fix."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from ptycho.config.config import ModelConfig, TrainingConfig
from ptycho.raw_data import RawData
from ptycho.scan_file import ScanFileError
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from tests.torch.test_data_pipeline import assert_same_grouped_data, baseline_grouped, embedded_arrays, memmap_config, save_variant


def bridge(npz: Path, data_dir: Path, config=None, **kwargs) -> MemmapDatasetBridge:
    return MemmapDatasetBridge(npz, memmap_config(npz) if config is None else config, data_dir, progress=False, **kwargs)


@pytest.mark.parametrize("value", [1e160, -3e12])
def test_absurd_coordinates_are_refused_up_front_naming_file_key_and_index(tmp_path, value):
    arrays = embedded_arrays()
    x = arrays["xcoords"].copy()
    x[5] = value
    npz = save_variant(tmp_path / "far.npz", xcoords=x)
    with pytest.raises(ScanFileError) as caught:
        bridge(npz, tmp_path / "memmap")
    message = str(caught.value)
    assert str(npz) in message and "'xcoords'[5]" in message and f"{value:g}" in message and "units" in message, message
    with pytest.raises(ValueError, match=r"xcoords\[5\] is .*must lie within"):
        RawData.from_coords_without_pc(x, arrays["ycoords"], arrays["diffraction"], arrays["probeGuess"], None)


CUBE = 16


def cube_scan(path: Path) -> tuple[Path, np.ndarray]:
    """A legacy (N, N, n) stack with n == N: only the caller knows the patterns are on the last axis."""
    rng = np.random.default_rng(0)
    patterns = rng.uniform(0.5, 2.0, size=(CUBE, CUBE, CUBE)).astype(np.float32)  # (n, N, N)
    patterns[np.arange(CUBE), 0, 0] = np.arange(CUBE) + 10  # pattern i is recognisable
    grid = np.arange(CUBE, dtype=np.float64)
    np.savez(path, xcoords=(grid % 4) * 3.0, ycoords=(grid // 4) * 3.0, diff3d=patterns.transpose(1, 2, 0).copy(),
             probeGuess=np.ones((CUBE, CUBE), np.complex64))
    return path, patterns


def cube_config(npz: Path) -> TrainingConfig:
    return TrainingConfig(model=ModelConfig(N=CUBE, gridsize=1), train_data_file=npz, n_groups=CUBE, subsample_seed=1, nphotons=1e6)


def test_ambiguous_cube_stack_is_warned_about_and_layout_settles_it(tmp_path, caplog):
    npz, patterns = cube_scan(tmp_path / "cube.npz")
    data_dir = tmp_path / "memmap"
    with caplog.at_level(logging.WARNING):
        guessed = bridge(npz, data_dir, cube_config(npz))
    assert "could be (n, N, N) or a legacy (N, N, n)" in caplog.text and "layout='NNn'" in caplog.text, caplog.text
    assert "ptycho-reconstruct take it as (n, N, N)" in caplog.text and "np.moveaxis(d, -1, 0)" in caplog.text  # the commands' way
    assert not np.array_equal(guessed.diffraction, patterns)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        settled = bridge(npz, data_dir, cube_config(npz), layout="NNn")
    assert "could be" not in caplog.text
    np.testing.assert_array_equal(settled.diffraction, patterns)  # the map of the guess was rebuilt
    assert settled.experiment.regrouped
    np.testing.assert_array_equal(RawData.from_file(npz, layout="NNn").diff3d, patterns)
    with pytest.raises(ValueError, match="layout must be one of"):
        bridge(npz, data_dir, cube_config(npz), layout="patterns-last")


def test_diffraction_and_diff3d_with_equal_values_in_other_dtypes_are_not_different(tmp_path):
    arrays = embedded_arrays()
    npz = save_variant(tmp_path / "both.npz", diff3d=arrays["diffraction"].astype(np.float64))
    assert_same_grouped_data(bridge(npz, tmp_path / "memmap").grouped_data(), baseline_grouped())
    changed = arrays["diffraction"].astype(np.float64)
    changed[7, 3, 3] += 1
    with pytest.raises(ScanFileError, match="they differ"):
        bridge(save_variant(tmp_path / "differ.npz", diff3d=changed), tmp_path / "memmap")


def test_real_object_is_refused_like_a_real_y(tmp_path):
    arrays = embedded_arrays()
    real = np.abs(arrays["objectGuess"]).astype(np.float32)
    npz = save_variant(tmp_path / "real_object.npz", objectGuess=real)
    served = bridge(npz, tmp_path / "memmap")  # the object is read only where ground truth is cut from it
    with pytest.raises(ValueError) as caught:
        served.grouped_data()
    message = str(caught.value)
    assert str(npz) in message and "'objectGuess'" in message and "must be complex" in message and "complex64" in message, message
    with pytest.raises(ValueError, match="objectGuess has real dtype float32; ground truth must be complex"):
        RawData.from_coords_without_pc(arrays["xcoords"], arrays["ycoords"], arrays["diffraction"], arrays["probeGuess"], None, real)
    with pytest.raises(ValueError, match="Y has real dtype"):
        RawData.from_coords_without_pc(arrays["xcoords"], arrays["ycoords"], arrays["diffraction"], arrays["probeGuess"], None,
                                       Y=np.abs(np.ones_like(arrays["diffraction"])))


def test_numpy_integers_are_accepted_as_counts(tmp_path):
    npz = save_variant(tmp_path / "scan.npz")
    served = bridge(npz, tmp_path / "memmap")
    got = served.get_grouped_data(np.int64(64), K=np.int64(6), nsamples=np.int32(200), seed=np.int64(42), gridsize=np.int64(2))
    assert_same_grouped_data(got, baseline_grouped(K=6))
    assert len(list((tmp_path / "memmap").glob("*/*.groups_cache.npz"))) == 2
    again = served.get_grouped_data(64, K=6, nsamples=200, seed=42, gridsize=2)  # the same cache, by name
    np.testing.assert_array_equal(again["nn_indices"], got["nn_indices"])
    assert len(list((tmp_path / "memmap").glob("*/*.groups_cache.npz"))) == 2


def test_probe_of_another_size_is_refused_on_every_path(tmp_path):
    arrays = embedded_arrays()
    small = arrays["probeGuess"][16:48, 16:48]
    npz = save_variant(tmp_path / "small_probe.npz", probeGuess=small)
    with pytest.raises(ScanFileError) as caught:
        bridge(npz, tmp_path / "memmap")
    message = str(caught.value)
    assert str(npz) in message and "'probeGuess'" in message and "32 x 32" in message and "64 x 64" in message, message
    with pytest.raises(ValueError, match="probeGuess is 32 x 32 but the diffraction patterns are 64 x 64"):
        RawData.from_coords_without_pc(arrays["xcoords"], arrays["ycoords"], arrays["diffraction"], small, None)


def test_two_dimensional_index_array_gives_a_clear_error(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    npz = save_variant(tmp_path / "scan.npz")
    dataset = PtychoDataset(npz, config=memmap_config(npz), data_dir=tmp_path / "memmap", progress=False)
    rows = np.array([[0, 1, 2], [3, 4, 5]])
    with pytest.raises(IndexError, match=r"1-D sequence of group indices, got shape \(2, 3\); pass indices.ravel\(\)"):
        dataset[rows]
    batch, _, _ = dataset[rows.ravel()]
    np.testing.assert_array_equal(batch["nn_indices"].numpy(), baseline_grouped()["nn_indices"][:6])


def test_command_line_build_and_verify_take_the_layout(tmp_path):
    from tests.test_cli import run

    npz, patterns = cube_scan(tmp_path / "cube.npz")
    data_dir = tmp_path / "memmap"
    grouping = ("--gridsize", "1", "--n-groups", str(CUBE), "--seed", "1", "--data-dir", data_dir, "--quiet")
    built = run("build", npz, *grouping, "--layout", "NNn")
    assert built.returncode == 0 and "could be" not in built.stderr, built.stderr
    (map_path,) = data_dir.glob("*/diffraction.npy")
    np.testing.assert_array_equal(np.load(map_path), patterns)
    verified = run("verify", npz, *grouping, "--layout", "NNn")
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout + verified.stderr
    guessed = run("verify", npz, *grouping)
    assert guessed.returncode == 1 and "could be (n, N, N) or a legacy (N, N, n)" in guessed.stderr, guessed.stderr
