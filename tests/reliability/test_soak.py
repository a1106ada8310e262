"""Soak: 20 epochs over a 100,000-pattern scan with 2 workers: every epoch serves each group once, memory stays flat."""

from __future__ import annotations

import ctypes
import gc
import os
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("tensordict")

from torch.utils.data import RandomSampler  # noqa: E402

from ptycho.config.config import ModelConfig, TrainingConfig  # noqa: E402
from ptycho.simulate import SimulationSettings, write_scan_npz  # noqa: E402
from ptycho_torch.dataloader import TensorDictDataLoader  # noqa: E402
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset  # noqa: E402

N_POINTS, N = 100_000, 32
# 20,000 groups of 4 (K=7) read 80,000 patterns per epoch, most of the 100,000, so every epoch sweeps
# nearly the whole 400 MB map; an epoch takes about 2 s on 2 cores.
N_GROUPS, GRIDSIZE, K = 20_000, 2, 7
EPOCHS = 20
# Six sizes, so epochs 2 and 20 (where memory is compared) use the same one, the largest: the allocator's
# high-water mark follows the batch size.
BATCH_SIZES = (500, 1000, 128, 300, 777, 64)
MAX_GROWTH = 0.05


@pytest.fixture(scope="session")
def large_scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("soak") / "sim_100k.npz"
    yield write_scan_npz(path, SimulationSettings(n_points=N_POINTS, N=N, seed=1), compressed=False)
    path.unlink()  # 400 MB; pytest keeps recent temporary directories


@pytest.fixture
def data_dir(tmp_path):
    yield tmp_path / "data"
    shutil.rmtree(tmp_path / "data", ignore_errors=True)  # the 400 MB map


def rss_anon_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError(f"no RssAnon in /proc/{pid}/status")


def release_freed_memory_promptly(worker_id: int) -> None:
    """Make glibc return every freed batch buffer to the OS (a fixed 1 MiB mmap threshold).

    Otherwise malloc keeps freed multi-MB buffers in its heap and RssAnon jumps by tens of MB with the
    batch size, hiding (or faking) a leak; with this, RssAnon measures what the worker really keeps.
    """
    libc = ctypes.CDLL("libc.so.6")
    M_MMAP_THRESHOLD = -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


class RecordingSampler(RandomSampler):
    """A RandomSampler that remembers the order it handed out in its latest epoch."""

    def __init__(self, dataset):
        super().__init__(dataset)
        self.epochs = 0
        self.order: list[int] = []

    def __iter__(self):
        self.epochs += 1
        self.order = []
        for index in super().__iter__():
            self.order.append(index)
            yield index


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RssAnon is read from /proc (Linux)")
def test_twenty_epochs_serve_every_group_once_with_flat_memory(large_scan, data_dir):
    main = os.getpid()
    anon_at_start = rss_anon_kb(main)
    config = TrainingConfig(
        model=ModelConfig(N=N, gridsize=GRIDSIZE), train_data_file=large_scan, n_groups=N_GROUPS,
        neighbor_count=K, subsample_seed=1, nphotons=1e6,
    )
    dataset = PtychoDataset(large_scan, config=config, data_dir=data_dir, progress=False)
    (experiment,) = dataset.experiments
    groups, norm, diffraction = experiment.grouping.nn_indices, np.float32(experiment.grouping.norm), experiment.store.diffraction
    assert len(dataset) == N_GROUPS and diffraction.shape == (N_POINTS, N, N)

    sampler = RecordingSampler(dataset)
    loader = TensorDictDataLoader(
        dataset, batch_size=BATCH_SIZES[0], sampler=sampler, num_workers=2, persistent_workers=True,
        worker_init_fn=release_freed_memory_promptly,
    )
    main_anon, worker_anon, orders = [], [], []
    for epoch in range(EPOCHS):
        batch_size = BATCH_SIZES[epoch % len(BATCH_SIZES)]
        loader.sampler.batch_size = batch_size  # the BatchSampler is re-iterated each epoch
        served, sizes = [], []
        for i, (batch, probe, scale) in enumerate(loader):
            nn = batch["nn_indices"].numpy()
            served.append(nn)
            sizes.append(len(nn))
            if i == 0:  # the gathered patterns are the map's, scaled
                expected = diffraction[nn.ravel()].reshape(len(nn), GRIDSIZE**2, N, N) * norm
                np.testing.assert_array_equal(batch["images"].numpy(), expected)
                assert probe.shape == (len(nn), GRIDSIZE**2, 1, N, N) and torch.all(scale == scale[0])
        order = np.array(sampler.order)
        assert sampler.epochs == epoch + 1
        orders.append(order[:100])
        assert np.array_equal(np.sort(order), np.arange(N_GROUPS)), f"epoch {epoch + 1} did not cover every group once"
        np.testing.assert_array_equal(np.concatenate(served), groups[order])  # each batch is the groups it was asked for
        assert sizes[:-1] == [batch_size] * (len(sizes) - 1) and 0 < sizes[-1] <= batch_size
        gc.collect()
        main_anon.append(rss_anon_kb(main))
        worker_anon.append([rss_anon_kb(w.pid) for w in loader._iterator._workers])

    assert not np.array_equal(orders[0], orders[1])  # shuffled anew each epoch
    assert BATCH_SIZES[1 % len(BATCH_SIZES)] == BATCH_SIZES[(EPOCHS - 1) % len(BATCH_SIZES)]
    assert main_anon[-1] <= main_anon[1] * (1 + MAX_GROWTH), f"main RssAnon (kB) per epoch: {main_anon}"
    for worker, series in enumerate(zip(*worker_anon)):
        assert series[-1] <= series[1] * (1 + MAX_GROWTH), f"worker {worker} RssAnon (kB) per epoch: {series}"
    map_kb = diffraction.nbytes // 1024
    assert main_anon[-1] - anon_at_start < map_kb / 2, "the map seems to be held in anonymous memory"
