"""Relative paths survive ``os.chdir``; every ``.npz`` entry of a scan directory is an experiment or an error."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from ptycho.scan_file import ScanFileError, scan_files
from ptycho_torch.cli import main as cli
from ptycho_torch.store.groups_cache import read_metadata
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.store.memmap import MANIFEST
from tests.reliability.support import copy_embedded
from tests.torch.test_data_pipeline import EMBEDDED, assert_same_grouped_data, baseline_grouped, memmap_config


def test_relative_data_dir_then_chdir_serves_the_data_and_records_absolute_sources(tmp_path, monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    npz = copy_embedded(work / "scan.npz")
    monkeypatch.chdir(work)
    bridge = MemmapDatasetBridge("scan.npz", memmap_config("scan.npz"), "memmap", progress=False)
    monkeypatch.chdir(elsewhere)  # a training script or a spawned worker changing directory

    assert_same_grouped_data(bridge.grouped_data(), baseline_grouped())  # the map is opened lazily, after the chdir
    recorded = {
        "manifest": json.loads((bridge.cache_path.parent / MANIFEST).read_text())["source"],
        "groups cache": read_metadata(bridge.cache_path)["source"],
    }
    assert recorded == {"manifest": str(npz.resolve()), "groups cache": str(npz.resolve())}
    assert cli(["info", "--json", str(work / "memmap"), "--quiet"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [(e["kind"], e["valid"]) for e in entries] == [("memory map", True), ("groups", True)], entries


def test_relative_paths_then_chdir_in_the_dataset(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy_embedded(work / "scans" / "scan.npz")
    monkeypatch.chdir(work)
    PtychoDataset("scans", config=memmap_config("scans/scan.npz"), data_dir="memmap", progress=False)  # builds
    dataset = PtychoDataset("scans", config=memmap_config("scans/scan.npz"), data_dir="memmap", progress=False)
    assert not dataset.regrouped  # reused: its memory map is opened at the first batch, after the chdir
    monkeypatch.chdir(elsewhere)
    batch, _, scale = dataset[np.arange(len(dataset))]
    expected = baseline_grouped()
    np.testing.assert_array_equal(batch["nn_indices"].numpy(), expected["nn_indices"])
    np.testing.assert_allclose(batch["images"].numpy(), np.moveaxis(expected["X_full"], -1, 1), rtol=1e-6)


def scan_directory_with(tmp_path, names):
    directory = tmp_path / "scans"
    directory.mkdir()
    for name in names:
        shutil.copyfile(EMBEDDED, directory / name)
    return directory


def test_upper_case_npz_is_an_experiment_in_name_order(tmp_path):
    directory = scan_directory_with(tmp_path, ["a.npz", "B.NPZ", "c.Npz", "notes.txt"])
    assert [p.name for p in scan_files(directory)] == ["B.NPZ", "a.npz", "c.Npz"]


def test_upper_case_npz_keeps_experiment_ids_in_the_dataset(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    directory = scan_directory_with(tmp_path, ["a.npz", "B.NPZ"])
    dataset = PtychoDataset(directory, config=memmap_config(directory / "a.npz"), data_dir=tmp_path / "memmap", progress=False)
    assert [e.scan.path.name for e in dataset.experiments] == ["B.NPZ", "a.npz"]
    batch, _, _ = dataset[np.arange(len(dataset))]
    assert np.bincount(batch["experiment_id"].numpy()).tolist() == [200, 200]


def test_dangling_symlink_or_odd_entry_named_like_a_scan_is_an_error_naming_it(tmp_path, capsys):
    directory = scan_directory_with(tmp_path, ["a.npz", "c.npz"])
    link = directory / "b.npz"
    link.symlink_to(tmp_path / "moved-away.npz")
    with pytest.raises(FileNotFoundError) as error:
        scan_files(directory)
    assert str(link) in str(error.value) and "moved-away.npz" in str(error.value)
    assert cli(["build", str(directory), "--data-dir", str(tmp_path / "memmap"), "--quiet"]) == 2
    assert str(link) in capsys.readouterr().err
    assert not (tmp_path / "memmap").exists()  # refused before anything was built

    link.unlink()
    (directory / "b.npz").mkdir()
    with pytest.raises(ScanFileError, match="b.npz is named like a scan file but is not a regular file"):
        scan_files(directory)
    os.rmdir(directory / "b.npz")
    assert [p.name for p in scan_files(directory)] == ["a.npz", "c.npz"]
