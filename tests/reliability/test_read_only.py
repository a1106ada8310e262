"""Read-only and missing data directories: a valid cache is served without writing; otherwise a clear error.

The OS must really refuse the writes. As root (where chmod does not stop writes) the reader drops to the
unprivileged ``nobody`` with ``os.setuid`` once its imports are done; as another user, chmod is enough.
The child first checks that it cannot write.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ptycho_torch.store.atomic import DataDirectoryError
from ptycho_torch.store.locks import LOCK_NAME
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from tests.reliability.support import copy_embedded, last_json, python_env, run_python, scan_directory, tree_state
from tests.torch.test_data_pipeline import assert_same_grouped_data, baseline_grouped, memmap_config

READ = r"""
import json, os, sys
import numpy as np
from pathlib import Path
npz, data_dir, out, entry, n_groups, uid, gid = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
from tests.torch.test_data_pipeline import memmap_config


def serve(data_dir):
    config = memmap_config(npz, n_groups=n_groups)
    if entry == "bridge":
        from ptycho_torch.memmap_bridge import MemmapDatasetBridge
        bridge = MemmapDatasetBridge(npz, config, data_dir, progress=False)
        grouped = bridge.grouped_data()
        return bridge.experiment.regrouped, {k: v for k, v in grouped.items() if v is not None}
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
    dataset = PtychoDataset(npz, config=config, data_dir=data_dir, progress=False)
    batch, probe, scale = dataset[list(range(len(dataset)))]
    return dataset.regrouped, {"images": batch["images"].numpy(), "nn_indices": batch["nn_indices"].numpy()}


if uid >= 0:
    # Root: the interpreter's own files live under /root, so run everything once (imports are lazy),
    # then become the unprivileged user for the run that counts.
    serve(out / "warm-up")
    np.savez(out / "warm-up.npz", x=np.zeros(1))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
result = {"euid": os.geteuid()}
try:
    (Path(data_dir) / "write-probe").touch()
    result["write_denied"] = False
except PermissionError:
    result["write_denied"] = True
try:
    result["regrouped"], served = serve(data_dir)
    np.savez(out / "served.npz", **served)
    result["error"] = None
except Exception as exc:
    result.update(error=type(exc).__name__, message=str(exc))
print(json.dumps(result))
"""


class ReadOnlyWorld:
    """A directory tree the reader can read but, once frozen, not write."""

    def __init__(self):
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("nobody")
            except KeyError:
                pytest.skip("running as root and there is no unprivileged 'nobody' user to read as")
        self.root = Path(tempfile.mkdtemp(prefix="ptycho-read-only-"))  # not under pytest's 0700 tmp dirs
        self.root.chmod(0o755)
        self.out = self.root / "out"
        self.out.mkdir()
        self.out.chmod(0o777)

    def freeze(self, directory: Path) -> None:
        """chmod a-w on ``directory`` and everything in it."""
        for path in [directory, *directory.rglob("*")]:
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))

    def read(self, npz: Path, data_dir: Path, entry: str = "bridge", n_groups: int = 200) -> dict:
        uid, gid = (self.user.pw_uid, self.user.pw_gid) if self.user is not None else (-1, -1)
        out = run_python(READ, npz, data_dir, self.out, entry, n_groups, uid, gid, env=python_env(HOME=str(self.out)))
        assert out.returncode == 0, out.stderr[-3000:]
        result = last_json(out.stdout)
        assert result["write_denied"], f"the reader (euid {result['euid']}) could still write in {data_dir}; the test proves nothing"
        return result

    def served(self) -> dict:
        with np.load(self.out / "served.npz", allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def remove(self) -> None:
        for path in [self.root, *self.root.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(self.root)


@pytest.fixture
def world():
    world = ReadOnlyWorld()
    yield world
    world.remove()


def built(world: ReadOnlyWorld) -> tuple[Path, Path, Path]:
    npz = copy_embedded(world.root / "scans" / "scan.npz")
    data_dir = world.root / "data"
    MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    return npz, data_dir, scan_directory(data_dir, npz)


@pytest.mark.parametrize("entry", ["bridge", "dataset"])
def test_read_only_directory_with_a_valid_cache_is_served_without_writing(world, entry):
    if entry == "dataset":
        pytest.importorskip("torch")
        pytest.importorskip("tensordict")
    npz, data_dir, directory = built(world)
    (directory / LOCK_NAME).unlink()  # reading must not need the lock file
    world.freeze(data_dir)
    before = tree_state(data_dir)

    result = world.read(npz, data_dir, entry)

    assert result["error"] is None, result
    assert result["regrouped"] is False
    expected = baseline_grouped()
    served = world.served()
    if entry == "bridge":
        assert_same_grouped_data(served, expected)
    else:
        np.testing.assert_array_equal(served["nn_indices"], expected["nn_indices"])
        np.testing.assert_allclose(served["images"], expected["X_full"].transpose(0, 3, 1, 2), rtol=1e-6)
    assert not (directory / LOCK_NAME).exists()
    assert tree_state(data_dir) == before


def test_read_only_directory_without_a_cache_names_the_path_and_the_option(world):
    npz = copy_embedded(world.root / "scans" / "scan.npz")
    data_dir = world.root / "data"
    data_dir.mkdir()
    world.freeze(data_dir)
    result = world.read(npz, data_dir)
    assert result["error"] == "DataDirectoryError"
    assert str(data_dir) in result["message"] and "data_dir=" in result["message"] and "writable" in result["message"]
    assert list(data_dir.iterdir()) == []


def test_read_only_directory_with_a_map_but_not_these_groups(world):
    """The map is valid but the settings are new: grouping needs the lock and a write, and says so."""
    npz, data_dir, directory = built(world)
    world.freeze(data_dir)
    before = tree_state(data_dir)
    result = world.read(npz, data_dir, n_groups=120)
    assert result["error"] == "DataDirectoryError"
    assert str(directory) in result["message"] and "data_dir=" in result["message"]
    assert tree_state(data_dir) == before


@pytest.mark.parametrize("where", ["data_dir is a file", "parent is a file"])
def test_data_directory_that_cannot_exist_names_the_path_and_the_option(tmp_path, where):
    npz = copy_embedded(tmp_path / "scan.npz")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the data directory should go")
    data_dir = blocker if where == "data_dir is a file" else blocker / "memmap"
    with pytest.raises(DataDirectoryError) as caught:
        MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    message = str(caught.value)
    assert str(data_dir) in message and f"{blocker} is a file, not a directory" in message and "data_dir=" in message, message
    assert blocker.read_text() == "a file where the data directory should go"


@pytest.mark.parametrize("where", ["data_dir is the link", "parent is the link"])
def test_data_directory_behind_a_dangling_link_names_the_link_and_its_target(tmp_path, where):
    npz = copy_embedded(tmp_path / "scan.npz")
    link = tmp_path / "caches"
    link.symlink_to(tmp_path / "unmounted" / "disk")
    data_dir = link if where == "data_dir is the link" else link / "memmap"
    with pytest.raises(DataDirectoryError) as caught:
        MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    message = str(caught.value)
    assert f"{link} is a symbolic link to {tmp_path / 'unmounted' / 'disk'}, which does not exist" in message, message
    assert "is a file" not in message and "data_dir=" in message, message
    assert link.is_symlink() and not (tmp_path / "unmounted").exists()


def test_missing_data_directory_is_created(tmp_path):
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "does" / "not" / "exist yet"
    bridge = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert bridge.cache_path.parent.parent == data_dir and bridge.cache_path.exists()
    assert_same_grouped_data(bridge.grouped_data(), baseline_grouped())
