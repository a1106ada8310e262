"""Concurrent starts on one dataset build once and agree; DDP ranks split the groups exactly."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from tests.reliability.support import CACHE_GLOB, copy_embedded, python_env, scan_directory, temporaries
from tests.torch.test_data_pipeline import ROOT, assert_same_grouped_data, baseline_grouped, embedded_arrays, memmap_config, save_variant

START_TOGETHER = r"""
import hashlib, json, sys, time
from pathlib import Path
from ptycho_torch.memmap_bridge import MemmapDatasetBridge
from ptycho_torch.store.memmap import DiffractionMemmap
from tests.torch.test_data_pipeline import memmap_config

npz, data_dir, ready, go = sys.argv[1:5]
builds = []
real_build = DiffractionMemmap.build
DiffractionMemmap.build = staticmethod(lambda *a, **k: builds.append(1) or real_build(*a, **k))
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.001)
bridge = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
grouped = bridge.grouped_data()
print(json.dumps({
    "regrouped": bridge.experiment.regrouped,
    "map_builds": len(builds),
    "nn": grouped["nn_indices"].tolist(),
    "x_full_sha256": hashlib.sha256(grouped["X_full"].tobytes()).hexdigest(),
}))
"""


def test_four_processes_starting_at_once_build_once_and_agree(tmp_path):
    npz = copy_embedded(tmp_path / "scan.npz")
    data_dir, go = tmp_path / "data", tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", START_TOGETHER, str(npz), str(data_dir), str(flag), str(go)],
            cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 120
    while not all(flag.exists() for flag in ready):  # every process imported and waits at the start line
        dead = [p for p in procs if p.poll() is not None]
        assert not dead and time.monotonic() < deadline, f"a process did not get ready: {dead[0].stderr.read()[-2000:] if dead else 'timeout'}"
        time.sleep(0.01)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert sum(r["regrouped"] for r in results) == 1
    assert sum(r["map_builds"] for r in results) == 1
    expected = baseline_grouped()["nn_indices"].tolist()
    assert all(r["nn"] == expected for r in results)
    assert len({r["x_full_sha256"] for r in results}) == 1
    directory = scan_directory(data_dir, npz)
    assert len(list(directory.glob(CACHE_GLOB))) == 1 and temporaries(directory) == []


DDP_EPOCHS = r"""
import json, sys
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler
from ptycho_torch.dataloader import TensorDictDataLoader
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
from tests.torch.test_data_pipeline import memmap_config

npz, data_dir, out = sys.argv[1:4]
dist.init_process_group("gloo")
rank = dist.get_rank()
dataset = PtychoDataset(npz, config=memmap_config(npz), data_dir=data_dir, progress=False)
sampler = DistributedSampler(dataset, shuffle=True, seed=7)
loader = TensorDictDataLoader(dataset, batch_size=16, sampler=sampler)
epochs = []
for epoch in range(2):
    sampler.set_epoch(epoch)
    indices = list(sampler)
    served = [row for batch, probe, scale in loader for row in batch["nn_indices"].tolist()]
    epochs.append({"indices": indices, "nn": served})
with open(f"{out}/rank-{rank}.json", "w") as handle:
    json.dump({"rank": rank, "world": dist.get_world_size(), "regrouped": dataset.regrouped, "n": len(dataset), "epochs": epochs}, handle)
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_distributed_sampler_splits_the_groups_exactly(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    npz = copy_embedded(tmp_path / "scan.npz")
    script = tmp_path / "ddp_epochs.py"
    script.write_text(DDP_EPOCHS)
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(script), str(npz), str(tmp_path / "data"), str(tmp_path)],
        cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["n"] for r in ranks] == [200, 200]
    assert [r["regrouped"] for r in ranks] == [True, False]  # rank 0 built, rank 1 read its cache
    expected = baseline_grouped()["nn_indices"]
    orders = []
    for epoch in range(2):
        per_rank = [np.array(r["epochs"][epoch]["indices"]) for r in ranks]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(np.concatenate(per_rank).tolist()) == list(range(200))
        for r, indices in zip(ranks, per_rank):
            np.testing.assert_array_equal(np.array(r["epochs"][epoch]["nn"]), expected[indices])
        orders.append(np.concatenate(per_rank))
    assert not np.array_equal(orders[0], orders[1])  # set_epoch reshuffles



def test_map_rebuilt_by_another_job_is_refused_not_served(tmp_path):
    """A long job holds groups for the old map; another job rebuilds the map for a re-exported scan.

    The long job's later (re)opening of the map (e.g. a fresh DataLoader worker) must fail loudly rather
    than serve new patterns under old groups; a job that already mapped the file keeps the old, consistent data.
    """
    npz = save_variant(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    not_yet_opened = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    already_opened = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    before = already_opened.grouped_data()["X_full"]
    assert not not_yet_opened.experiment.regrouped

    arrays = embedded_arrays()
    save_variant(npz, diffraction=arrays["diffraction"][::-1].copy())  # the user re-exports the scan in place
    other_job = MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    assert other_job.experiment.regrouped and other_job.cache_path.parent == not_yet_opened.cache_path.parent

    with pytest.raises(RuntimeError, match="was replaced after this dataset checked it.*create the dataset again"):
        not_yet_opened.grouped_data()
    np.testing.assert_array_equal(already_opened.grouped_data()["X_full"], before)


def test_map_rebuilt_under_a_training_loop_stops_its_workers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    from ptycho_torch.dataloader import TensorDictDataLoader
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
    npz = save_variant(tmp_path / "scan.npz")
    data_dir = tmp_path / "data"
    MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    dataset = PtychoDataset(npz, config=memmap_config(npz), data_dir=data_dir, progress=False)
    loader = TensorDictDataLoader(dataset, batch_size=50, shuffle=True, num_workers=1)
    assert sum(batch.batch_size[0] for batch, _, _ in loader) == 200  # epoch 1, on the map it checked

    save_variant(npz, diffraction=embedded_arrays()["diffraction"][::-1].copy())
    MemmapDatasetBridge(npz, memmap_config(npz), data_dir, progress=False)
    with pytest.raises(RuntimeError, match="was replaced after this dataset checked it"):
        for _ in loader:  # epoch 2: a fresh worker reopens the map
            pass


@pytest.mark.parametrize("error", ["ENOSYS", "ENOLCK"])
def test_file_system_without_locks_still_builds_with_a_warning(tmp_path, monkeypatch, caplog, error):
    """Some cluster file systems (Lustre mounted without flock) refuse flock: build anyway, and say so."""
    def unsupported(fd, operation):
        raise OSError(getattr(errno, error), os.strerror(getattr(errno, error)))

    npz = copy_embedded(tmp_path / "scan.npz")
    monkeypatch.setattr(fcntl, "flock", unsupported)
    with caplog.at_level(logging.WARNING, logger="ptycho_torch.store.locks"):
        bridge = MemmapDatasetBridge(npz, memmap_config(npz), tmp_path / "data", progress=False)
    assert "does not support file locks" in caplog.text and str(bridge.cache_path.parent) in caplog.text
    assert_same_grouped_data(bridge.grouped_data(), baseline_grouped())


SLOW_BUILD_UNDER_SHORT_TIMEOUT = r"""
import json, sys, time
from datetime import timedelta
from pathlib import Path
import torch.distributed as dist
import ptycho_torch.experiment as experiment
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
from tests.torch.test_data_pipeline import memmap_config

npz, data_dir, out, build_seconds, fail = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "fail"
real_build = experiment._build
def slow_build(*args, **kwargs):  # a build that outlasts the process group timeout
    time.sleep(build_seconds)
    if fail:
        raise OSError("disk full while building (test)")
    return real_build(*args, **kwargs)
experiment._build = slow_build
rank = int(__import__("os").environ["RANK"])
(out / f"ready-{rank}").touch()  # start the process group together, so only the build outlasts its timeout
while not all((out / f"ready-{r}").exists() for r in range(2)):
    time.sleep(0.01)
dist.init_process_group("gloo", timeout=timedelta(seconds=3))
started = time.monotonic()
try:
    dataset = PtychoDataset(npz, config=memmap_config(npz), data_dir=data_dir, progress=False)
    result = {"regrouped": dataset.regrouped, "n": len(dataset)}
except Exception as exc:
    result = {"error": f"{type(exc).__name__}: {exc}"}
result.update(rank=rank, seconds=time.monotonic() - started)
dist.barrier()  # the process group still works after the long wait
(out / f"rank-{rank}.json").write_text(json.dumps(result))
dist.destroy_process_group()
"""


def _run_two_ranks(tmp_path, build_seconds: float, fail: bool) -> list[dict]:
    npz = copy_embedded(tmp_path / "scan.npz")
    script = tmp_path / "slow_build.py"
    script.write_text(SLOW_BUILD_UNDER_SHORT_TIMEOUT)
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(script), str(npz), str(tmp_path / "data"), str(tmp_path),
         str(build_seconds), "fail" if fail else "ok"],
        cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]


def test_other_ranks_outlive_a_build_longer_than_the_process_group_timeout(tmp_path):
    """Rank 1 must not wait inside a collective while rank 0 builds for 6 s under a 3 s gloo timeout."""
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    ranks = _run_two_ranks(tmp_path, build_seconds=6.0, fail=False)
    assert [r.get("error") for r in ranks] == [None, None]
    assert [r["regrouped"] for r in ranks] == [True, False] and [r["n"] for r in ranks] == [200, 200]
    assert ranks[1]["seconds"] >= 6.0  # it really waited for the build, outside the 3 s collective timeout


def test_a_failed_build_on_rank_zero_is_reported_on_every_rank(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tensordict")
    ranks = _run_two_ranks(tmp_path, build_seconds=4.0, fail=True)
    assert ranks[0]["error"] == "OSError: disk full while building (test)"
    assert ranks[1]["error"] == "RuntimeError: rank 0 failed to prepare the data: OSError: disk full while building (test)"
