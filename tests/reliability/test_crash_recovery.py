"""kill -9 during a build: the next run rebuilds what is incomplete and serves the baseline; nothing else is touched."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from ptycho_torch.store.locks import LOCK_NAME
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.store.memmap import DIFFRACTION, MANIFEST, DiffractionMemmap
from tests.reliability.support import (
    CACHE_GLOB,
    copy_embedded,
    file_identity,
    last_json,
    python_env,
    run_python,
    scan_directory,
    temporaries,
    tree_state,
)
from tests.torch.test_data_pipeline import ROOT, assert_same_grouped_data, baseline_grouped, memmap_config

# Each kill point patches one library step so that the process SIGKILLs itself at a known moment.
BUILD_AND_DIE = r"""
import io, os, signal, sys
import numpy as np
from ptycho.scan_file import ScanFile
from ptycho_torch.store import atomic, groups_cache, memmap
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from tests.torch.test_data_pipeline import memmap_config

npz, data_dir, point = sys.argv[1], sys.argv[2], sys.argv[3]

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if point in ("memmap-half-copied", "remake-half-copied"):
    real_blocks = ScanFile.iter_disk_blocks
    def blocks(self, key, block_bytes=None):
        for i, item in enumerate(real_blocks(self, key, block_bytes=1 << 20)):  # 8 blocks of 1 MiB
            if i == 4:
                die()
            yield item
    ScanFile.iter_disk_blocks = blocks
elif point == "memmap-before-manifest":
    memmap.sample_digest = lambda *a, **k: die()
elif point == "cache-half-written":
    real_savez = np.savez
    def savez(handle, **arrays):
        buffer = io.BytesIO()
        real_savez(buffer, **arrays)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        die()
    groups_cache.np.savez = savez
elif point == "cache-before-rename":
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith(groups_cache.SUFFIX):
            die()
        return real_replace(src, dst)
    atomic.os.replace = replace
else:
    raise SystemExit(f"unknown kill point {point}")

MemmapDatasetBridge(npz, memmap_config(npz), data_dir, remake_map=point == "remake-half-copied", progress=False)
print("survived")
"""

REBUILDS_MAP = {
    "memmap-half-copied": True,
    "memmap-before-manifest": True,
    "remake-half-copied": True,
    "cache-half-written": False,
    "cache-before-rename": False,
}


def assert_killed_at(point: str, directory) -> None:
    """The killed build left exactly the partial state the kill point stands for."""
    names = {p.name for p in directory.iterdir()}
    tmp = temporaries(directory)
    caches = list(directory.glob(CACHE_GLOB))
    assert LOCK_NAME in names  # the lock file stays behind; only its flock died with the process
    if point in ("memmap-half-copied", "remake-half-copied"):
        assert MANIFEST not in names
        (partial,) = [directory / t for t in tmp if t.startswith(f".{DIFFRACTION}.tmp-")]
        assert partial.stat().st_size < 512 * 64 * 64 * 4
        if point == "remake-half-copied":  # the old map and cache are still there, but the map is no longer vouched for
            assert DIFFRACTION in names and len(caches) == 1
        else:
            assert not caches
    elif point == "memmap-before-manifest":
        assert DIFFRACTION in names and MANIFEST not in names and not caches and not tmp
    elif point == "cache-half-written":
        assert MANIFEST in names and not caches
        (partial,) = [directory / t for t in tmp if ".groups_cache.npz.tmp-" in t]
        with pytest.raises((zipfile.BadZipFile, OSError, ValueError, EOFError)):
            np.load(partial, allow_pickle=False)["nn_indices"]
    elif point == "cache-before-rename":
        assert MANIFEST in names and not caches
        assert [t for t in tmp if ".groups_cache.npz.tmp-" in t]


def assert_lock_is_free(directory) -> None:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if a dead holder still had it
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@pytest.fixture
def map_builds(monkeypatch):
    calls = []
    real = DiffractionMemmap.build

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(DiffractionMemmap, "build", staticmethod(spy))
    return calls


@pytest.mark.parametrize("point", sorted(REBUILDS_MAP))
def test_kill_during_build_then_next_run_recovers(tmp_path, point, map_builds, caplog):
    npz = copy_embedded(tmp_path / "user" / "scan.npz")
    other = copy_embedded(tmp_path / "user" / "other.npz")
    data_dir = tmp_path / "data"
    other_bridge = MemmapDatasetBridge(other, memmap_config(other), data_dir, progress=False)
    other_directory = other_bridge.cache_path.parent
    if point == "remake-half-copied":
        MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    map_builds.clear()
    npz_before, other_before = file_identity(npz), tree_state(other_directory)

    killed = run_python(BUILD_AND_DIE, npz, data_dir, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "survived" not in killed.stdout
    directory = scan_directory(data_dir, npz)
    assert_killed_at(point, directory)
    assert_lock_is_free(directory)

    with caplog.at_level(logging.WARNING, logger="ptycho_torch.store.atomic"):
        recovered = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert recovered.experiment.regrouped
    assert bool(map_builds) == REBUILDS_MAP[point]
    assert_same_grouped_data(recovered.grouped_data(), baseline_grouped())
    assert temporaries(directory) == []
    if temporaries_were_left(point):
        assert "incomplete file(s) left by an interrupted build" in caplog.text
    assert [p.name for p in directory.glob(CACHE_GLOB)] == [recovered.cache_path.name]
    assert file_identity(npz) == npz_before
    assert tree_state(other_directory) == other_before

    again = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert not again.experiment.regrouped
    np.testing.assert_array_equal(again.grouped_data()["nn_indices"], baseline_grouped()["nn_indices"])


def temporaries_were_left(point: str) -> bool:
    return point != "memmap-before-manifest"


def popen_python(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


HOLD_LOCK_THEN_DIE = r"""
import os, signal, sys, time
from pathlib import Path
from ptycho_torch.experiment import dataset_directory
from ptycho_torch.store.locks import directory_lock
npz, data_dir, holding, release = sys.argv[1:5]
directory = dataset_directory(data_dir, npz)
directory.mkdir(parents=True)
with directory_lock(directory):
    Path(holding).touch()
    while not Path(release).exists():
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
"""

WAIT_AND_BUILD = r"""
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from tests.torch.test_data_pipeline import memmap_config
bridge = MemmapDatasetBridge(sys.argv[1], memmap_config(sys.argv[1]), sys.argv[2], progress=False)
print(json.dumps({"regrouped": bridge.experiment.regrouped, "nn": bridge.grouped_data()["nn_indices"].tolist()}))
"""


def wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_builder_killed_while_another_waits_for_the_lock(tmp_path):
    """A builder killed holding the lock releases it (the kernel drops the flock): the waiting builder goes on."""
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir, holding, release = tmp_path / "data", tmp_path / "holding", tmp_path / "release"
    holder = popen_python(HOLD_LOCK_THEN_DIE, npz, data_dir, holding, release)
    wait_for(lambda: holding.exists() or holder.poll() is not None, "the lock holder")
    assert holder.poll() is None, holder.stderr.read()
    waiter = popen_python(WAIT_AND_BUILD, npz, data_dir)
    log = []
    for line in waiter.stderr:  # the waiter says it waits, then blocks in flock
        log.append(line)
        if "waiting for another process" in line:
            break
    assert any("waiting for another process" in line for line in log), "".join(log)
    release.touch()
    assert holder.wait(timeout=60) == -signal.SIGKILL
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err[-2000:]
    result = last_json(out)
    assert result["regrouped"]
    np.testing.assert_array_equal(np.array(result["nn"]), baseline_grouped()["nn_indices"])
