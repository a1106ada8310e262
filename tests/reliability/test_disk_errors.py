"""A full disk or a refused write: a DataDirectoryError naming the directory and the space needed, nothing half-written left to trust."""

from __future__ import annotations

import errno
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho_torch.store import atomic, groups_cache, memmap
from ptycho_torch.store.atomic import DataDirectoryError
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.store.memmap import MANIFEST, DiffractionMemmap
from tests.reliability.support import CACHE_GLOB, copy_embedded, last_json, python_env, run_python, scan_directory, temporaries
from tests.torch.test_data_pipeline import ROOT, assert_same_grouped_data, baseline_grouped, memmap_config

MAP_BYTES = 512 * 64 * 64 * 4  # the embedded scan's float32 map
SIZE = re.compile(r"(\d[\d,]*\.\d) (kB|MB|GB)")
UNITS = {"kB": 2**10, "MB": 2**20, "GB": 2**30}


def stated_bytes(message: str, context: str) -> float:
    """The size a message states right before ``context`` (e.g. 'needed'), in bytes."""
    match = re.search(SIZE.pattern + " " + re.escape(context), message)
    assert match, message
    return float(match.group(1).replace(",", "")) * UNITS[match.group(2)]


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def assert_names_directory_and_space(error: DataDirectoryError, directory: Path, at_least: int) -> None:
    message = str(error)
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(directory) in message and "data_dir=" in message, message
    assert stated_bytes(message, "needed") >= at_least * 0.99, message


def later_run_succeeds(npz: Path, data_dir: Path) -> MemmapDatasetBridge:
    bridge = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert bridge.experiment.regrouped
    assert_same_grouped_data(bridge.grouped_data(), baseline_grouped())
    return bridge


@pytest.fixture
def scan(tmp_path):
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    return npz, data_dir, scan_directory(data_dir, npz)


def test_too_little_free_space_fails_before_writing(scan, monkeypatch):
    npz, data_dir, directory = scan
    real = shutil.disk_usage
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: real(path)._replace(free=2**20))
    with pytest.raises(DataDirectoryError) as caught:
        MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert_names_directory_and_space(caught.value, directory, MAP_BYTES)
    assert "1.0 MB free" in str(caught.value)
    assert not directory.exists()  # created by this run: removed again, lock included
    monkeypatch.undo()
    later_run_succeeds(npz, data_dir)


def test_disk_full_while_copying_the_patterns(scan, monkeypatch):
    npz, data_dir, directory = scan
    written = []
    real_write = memmap._write_block

    def write_then_fill_the_disk(handle, part):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(part))
        real_write(handle, part)

    monkeypatch.setattr(memmap, "_write_block", write_then_fill_the_disk)
    monkeypatch.setattr("ptycho.scan_file.BLOCK_BYTES", 2**20)
    with pytest.raises(DataDirectoryError) as caught:
        MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert written, "the copy never started"
    assert_names_directory_and_space(caught.value, directory, MAP_BYTES)
    assert not directory.exists()  # created by this run: nothing half-made left
    monkeypatch.undo()
    later_run_succeeds(npz, data_dir)


def test_disk_full_after_the_map_but_before_its_manifest(scan, monkeypatch):
    npz, data_dir, directory = scan
    monkeypatch.setattr(memmap, "_save_npy", no_space)
    with pytest.raises(DataDirectoryError) as caught:
        MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert_names_directory_and_space(caught.value, directory, 512 * 8)
    assert not directory.exists()  # its diffraction.npy was complete, but not vouched for by a manifest: removed with the rest
    monkeypatch.undo()
    builds = []
    real_build = DiffractionMemmap.build
    monkeypatch.setattr(DiffractionMemmap, "build", staticmethod(lambda *a, **k: builds.append(1) or real_build(*a, **k)))
    later_run_succeeds(npz, data_dir)
    assert builds == [1]


def test_fsync_failure_of_the_manifest(scan, monkeypatch):
    """Network file systems report ENOSPC at fsync: the manifest must not appear."""
    npz, data_dir, directory = scan
    real_fsync = atomic.fsync_file
    monkeypatch.setattr(atomic, "fsync_file", lambda path: no_space() if MANIFEST in path.name else real_fsync(path))
    with pytest.raises(DataDirectoryError) as caught:
        MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert_names_directory_and_space(caught.value, directory, 100)  # the manifest's size
    assert not directory.exists()
    monkeypatch.undo()
    later_run_succeeds(npz, data_dir)


def test_disk_full_while_writing_the_groups_cache(scan, monkeypatch):
    npz, data_dir, directory = scan
    real_savez = np.savez

    def half_then_full(handle, **arrays):
        buffer = io.BytesIO()
        real_savez(buffer, **arrays)
        handle.write(buffer.getvalue()[:4096])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(groups_cache.np, "savez", half_then_full)
    with pytest.raises(DataDirectoryError) as caught:
        MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert_names_directory_and_space(caught.value, directory, 200 * 4 * 4)
    assert not list(directory.glob(CACHE_GLOB)) and temporaries(directory) == []
    monkeypatch.undo()
    bridge = later_run_succeeds(npz, data_dir)
    assert bridge.cache_path.exists()


FILE_SIZE_LIMIT = r"""
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from tests.torch.test_data_pipeline import memmap_config
try:
    MemmapDatasetBridge(sys.argv[1], memmap_config(sys.argv[1]), sys.argv[2], progress=False)
    print(json.dumps({"error": None}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "errno": getattr(exc, "errno", None), "message": str(exc)}))
"""


def test_file_size_limit_is_reported_with_the_size_needed(scan):
    npz, data_dir, directory = scan
    out = run_python(FILE_SIZE_LIMIT, npz, data_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    result = last_json(out.stdout)
    assert result["error"] == "DataDirectoryError" and result["errno"] == errno.EFBIG
    message = result["message"]
    assert str(directory) in message and "data_dir=" in message and "file size limit" in message, message
    assert float(re.search(r"a file of about (\d[\d,]*\.\d) MB", message).group(1).replace(",", "")) * 2**20 >= MAP_BYTES * 0.99
    assert not directory.exists()
    later_run_succeeds(npz, data_dir)


# A real full file system: a small tmpfs in a private mount namespace (vanishes with the process).
ON_A_SMALL_TMPFS = r"""
import errno, json, os, sys
from pathlib import Path
from ptycho_torch import experiment
from ptycho_torch.store import atomic, memmap
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.store.memmap import DiffractionMemmap
from tests.reliability.support import CACHE_GLOB, scan_directory, temporaries
from tests.torch.test_data_pipeline import memmap_config

npz, mount, what = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
data_dir = mount / "data"
filler = mount / "another-job.bin"

def fill(size=None):
    with open(filler, "wb") as handle:
        try:
            if size is not None:
                handle.write(b"x" * size)
            else:
                while True:
                    handle.write(b"x" * 2**16)
                    handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc

real_check, real_write = memmap.require_free_space, experiment.write_cache
if what == "map":  # another job fills the disk right after the free-space check passed
    def check_then_fill(directory, needed):
        real_check(directory, needed)
        fill(6 * 2**20)
    memmap.require_free_space = check_then_fill
else:  # the map fits; the disk is full when the groups cache is written
    def fill_then_write(*args, **kwargs):
        fill()
        return real_write(*args, **kwargs)
    experiment.write_cache = fill_then_write

result = {}
try:
    MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    result["error"] = None
except Exception as exc:
    result.update(error=type(exc).__name__, errno=getattr(exc, "errno", None), message=str(exc))
directory = scan_directory(data_dir, npz)
result["left"] = sorted(p.name for p in directory.iterdir()) if directory.exists() else None
result["temporaries"] = temporaries(directory) if directory.exists() else []
memmap.require_free_space, experiment.write_cache = real_check, real_write
filler.unlink()
builds = []
real_build = DiffractionMemmap.build
DiffractionMemmap.build = staticmethod(lambda *a, **k: builds.append(1) or real_build(*a, **k))
again = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
result["again"] = {"regrouped": again.experiment.regrouped, "map_rebuilt": bool(builds), "nn": again.grouped_data()["nn_indices"].tolist()}
print(json.dumps(result))
"""


def run_on_small_tmpfs(tmp_path: Path, npz: Path, what: str, size_mb: int) -> subprocess.CompletedProcess:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"', "sh"]
    args = [f"{size_mb}m", str(mount), sys.executable, "-c", ON_A_SMALL_TMPFS, str(npz), str(mount), what]
    return subprocess.run(command + args, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=120)


def tmpfs_available(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    check = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True)
    return check.returncode == 0


@pytest.mark.parametrize("what", ["map", "cache"])
def test_real_full_file_system(tmp_path, what):
    if not tmpfs_available(tmp_path):
        pytest.skip("mounting a small tmpfs needs a private mount namespace (unshare --mount) and root")
    npz = copy_embedded(tmp_path / "scan.npz")
    out = run_on_small_tmpfs(tmp_path, npz, what, size_mb=12)
    assert out.returncode == 0, f"exit {out.returncode} (-7 is SIGBUS: a mapped write hit the full disk)\n{out.stderr[-3000:]}"
    result = last_json(out.stdout)
    assert result["error"] == "DataDirectoryError" and result["errno"] == errno.ENOSPC, result
    assert "/data/scan-" in result["message"] and "data_dir=" in result["message"]
    assert stated_bytes(result["message"], "needed") >= (MAP_BYTES if what == "map" else 200 * 4 * 4)
    assert result["temporaries"] == []
    if what == "map":
        assert result["left"] is None  # the directory this run created, half-made: removed
    else:
        assert MANIFEST in result["left"] and not [name for name in result["left"] if name.endswith(groups_cache.SUFFIX)]
    assert result["again"]["regrouped"] and result["again"]["map_rebuilt"] == (what == "map")
    np.testing.assert_array_equal(np.array(result["again"]["nn"]), baseline_grouped()["nn_indices"])
