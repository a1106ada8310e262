"""Files this package did not write survive ``clean`` and builds; links and FIFOs in the data directory are never followed into a hang or a write."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ptycho_torch.store.atomic import DataDirectoryError
from ptycho_torch.cli import main as cli
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.store.memmap import DIFFRACTION, ENERGY, MANIFEST
from tests.reliability.support import copy_embedded, file_identity, last_json, run_python, scan_directory, tree_state
from tests.torch.test_data_pipeline import assert_same_grouped_data, baseline_grouped, memmap_config

FOREIGN_CACHE = "groups-0123456789abcdef.groups_cache.npz"


def build(npz, data_dir) -> MemmapDatasetBridge:
    return MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)


def write_foreign_files(directory) -> list:
    """Files a user might keep under names this package also uses, with contents it never writes."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps({"experiment": "beamtime 42", "n": 3}))
    cache = directory / FOREIGN_CACHE
    with open(cache, "wb") as handle:
        np.savez(handle, results=np.arange(5.0))
    diffraction = directory / DIFFRACTION
    np.save(diffraction, np.ones((2, 4, 4), np.float32))
    return [manifest, cache, diffraction]


def test_clean_removes_only_files_it_provably_wrote_and_leaves_no_lock(tmp_path, capsys):
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    ours = build(npz, data_dir).cache_path.parent
    (ours / ".lock").unlink()  # e.g. a cache copied from another machine: clean must not leave the lock it takes
    foreign = write_foreign_files(data_dir / "notes-0123456789ab")
    other_cache = ours / "groups-fedcba9876543210.groups_cache.npz"  # named like ours, written by someone else
    other_cache.write_bytes(b"not a cache")
    kept = [*foreign, other_cache]
    before = {path: file_identity(path) for path in kept}

    assert cli(["clean", str(data_dir), "--quiet"]) == 0
    listing = capsys.readouterr().out
    assert f"keeping {other_cache}" in listing and str(foreign[0].parent) not in listing
    assert cli(["clean", "--yes", str(data_dir), "--quiet"]) == 0

    assert {path: file_identity(path) for path in kept} == before
    assert sorted(p.name for p in ours.iterdir()) == [other_cache.name]  # every file of ours is gone, nothing else
    assert list(data_dir.rglob(".lock")) == []


def test_build_refuses_a_symlinked_dataset_directory_and_leaves_its_target_alone(tmp_path):
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    write_foreign_files(elsewhere)
    (elsewhere / ".diffraction.npy.tmp-1-0123abcd").write_bytes(b"looks like a temporary of ours")
    directory = scan_directory(data_dir, npz)
    directory.parent.mkdir(parents=True)
    directory.symlink_to(elsewhere)
    before = tree_state(elsewhere)

    with pytest.raises(DataDirectoryError, match="symbolic link") as error:
        build(npz, data_dir)
    assert str(directory) in str(error.value) and f"rm {directory}" in str(error.value)
    assert cli(["clean", "--yes", str(data_dir), "--quiet"]) == 0
    assert tree_state(elsewhere) == before and sorted(os.listdir(elsewhere)) == sorted(before)

    directory.unlink()  # the fix the message gives
    assert_same_grouped_data(build(npz, data_dir).grouped_data(), baseline_grouped())


def test_symlinked_lock_file_is_refused_not_written_through(tmp_path):
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    before = file_identity(victim)
    directory = scan_directory(data_dir, npz)
    directory.mkdir(parents=True)
    (directory / ".lock").symlink_to(victim)
    with pytest.raises(DataDirectoryError, match="symbolic link") as error:
        build(npz, data_dir)
    assert str(directory / ".lock") in str(error.value)
    assert file_identity(victim) == before


BUILD_AND_INFO = r"""
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from ptycho_torch.store.inventory import list_caches
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from tests.torch.test_data_pipeline import memmap_config
npz, data_dir = sys.argv[1:3]
info_before = [(e.valid, e.problem) for e in list_caches(data_dir)]
bridge = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
info_after = [e.valid for e in list_caches(data_dir)]
print(json.dumps({"before": info_before, "after": info_after, "nn": bridge.grouped_data()["nn_indices"].tolist()}))
"""


@pytest.mark.parametrize("name", [MANIFEST, ENERGY, DIFFRACTION, "groups cache"])
def test_fifo_where_a_file_of_ours_goes_neither_hangs_info_nor_construction(tmp_path, name):
    """Opening a FIFO for reading blocks until a writer comes: a hang without a word before the fix."""
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    path = build(npz, data_dir).cache_path
    path = path if name == "groups cache" else path.parent / name
    path.unlink()
    os.mkfifo(path)

    result = run_python(BUILD_AND_INFO, npz, data_dir, timeout=60)  # a regression times out here instead of hanging CI
    assert result.returncode == 0, result.stderr[-3000:]
    report = last_json(result.stdout)
    # (memory map, groups cache): a broken map is rebuilt with a new identity, so its groups cache is stale too
    expected = [True, False] if name == "groups cache" else [False, False]
    assert [valid for valid, _ in report["before"]] == expected
    if name in (MANIFEST, "groups cache"):
        assert "not a regular file" in next(problem for valid, problem in report["before"] if not valid)
    assert report["after"] == [True, True]
    np.testing.assert_array_equal(np.array(report["nn"]), baseline_grouped()["nn_indices"])
    assert path.is_file()  # the FIFO was replaced by the rebuilt file
