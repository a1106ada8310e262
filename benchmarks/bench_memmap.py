"""Memory-mapped PtychoDataset against the eager grouped-data path: build time, warm start, memory, throughput.

Run from the repository root (``python benchmarks/bench_memmap.py --help``). Every measurement runs in
a fresh Python subprocess so that its memory numbers start from the same clean process.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MiB = 1024**2
PHASES = ("cold", "warm", "epoch", "variants", "cold_cache", "eager", "eager_y")
QUICK = {"n_points": 4_000, "n_groups": 1_000, "epochs": 3}


@dataclass(frozen=True)
class BenchSettings:
    """What to simulate, how to group it and how to iterate it."""

    n_points: int = 20_000
    N: int = 64
    n_groups: int = 5_000
    K: int = 7
    gridsize: int = 2
    batch_size: int = 64
    epochs: int = 5
    simulation_seed: int = 0
    grouping_seed: int = 42
    nphotons: float = 1e6
    compressed: bool = False
    workdir: str = str(REPO / "benchmarks" / "results" / "work")
    sample_interval_s: float = 0.002
    torch_threads: int | None = None

    @property
    def npz_path(self) -> Path:
        suffix = "-zip" if self.compressed else ""
        return Path(self.workdir) / f"sim-{self.n_points}x{self.N}-seed{self.simulation_seed}{suffix}.npz"

    @property
    def data_dir(self) -> Path:
        return Path(self.workdir) / "memmap-data"




def proc_status() -> dict[str, int]:
    """Memory lines of ``/proc/self/status`` in bytes (RssAnon, RssFile, VmRSS, VmHWM, ...)."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[name] = int(rest.split()[0]) * 1024
    return values


def rss_anon() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no RssAnon line (Linux >= 4.5 needed)")


class AnonPeakSampler:
    """Samples RssAnon every ``interval`` seconds on a daemon thread and keeps the maximum."""

    def __init__(self, interval: float):
        self.interval = interval
        self.peak = rss_anon()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples = 0

    def __enter__(self) -> AnonPeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> int:
        value = rss_anon()
        with self._lock:
            self.peak = max(self.peak, value)
            self.samples += 1
        return value

    def current_peak(self) -> int:
        self.sample()
        return self.peak




def import_everything():
    """The same imports in every child, so every child starts from the same baseline."""
    import numpy  # noqa: F401
    import tensordict  # noqa: F401
    import torch  # noqa: F401

    import ptycho.raw_data  # noqa: F401
    import ptycho_torch.dataloader  # noqa: F401
    import ptycho_torch.dset_loader_pt_mmap  # noqa: F401


def ptycho_config(settings: BenchSettings):
    from ptycho.config.config import ModelConfig, TrainingConfig

    return TrainingConfig(
        model=ModelConfig(N=settings.N, gridsize=settings.gridsize),
        train_data_file=settings.npz_path,
        test_data_file=settings.npz_path,
        n_groups=settings.n_groups,
        neighbor_count=settings.K,
        subsample_seed=settings.grouping_seed,
        nphotons=settings.nphotons,
    )


def open_dataset(settings: BenchSettings):
    from ptycho_torch.dset_loader_pt_mmap import PtychoDataset

    return PtychoDataset(settings.npz_path, config=ptycho_config(settings), data_dir=settings.data_dir, progress=False)


def grouping_digest(nn_indices) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(np.asarray(nn_indices), dtype=np.int64).tobytes()).hexdigest()[:16]


def run_cold(settings: BenchSettings, sampler: AnonPeakSampler) -> dict:
    if settings.data_dir.exists():
        raise RuntimeError(f"{settings.data_dir} exists; the cold build needs an empty data dir")
    started = time.perf_counter()
    dataset = open_dataset(settings)
    build_s = time.perf_counter() - started
    if not dataset.regrouped:
        raise RuntimeError("the cold build reused a cache; it must build from scratch")
    disk = sum(p.stat().st_blocks * 512 for p in settings.data_dir.rglob("*") if p.is_file())
    return {"build_s": build_s, "n_groups": len(dataset), "data_dir_disk_bytes": disk}


def run_warm(settings: BenchSettings, sampler: AnonPeakSampler) -> dict:
    import numpy as np

    started = time.perf_counter()
    dataset = open_dataset(settings)
    constructed = time.perf_counter()
    batch, probe, scale = dataset[np.arange(settings.batch_size)]
    finished = time.perf_counter()
    if dataset.regrouped:
        raise RuntimeError("the warm start regrouped; the cache of the cold build was not reused")
    return {
        "construct_s": constructed - started,
        "first_batch_s": finished - constructed,
        "warm_start_s": finished - started,
        "batch_images_shape": list(batch["images"].shape),
    }


def timed_epoch(batches) -> dict:
    """Seconds and groups of one pass over ``batches`` (an iterable of image tensors/arrays), with the load average."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    count = 0
    for images in batches:
        count += images.shape[0]
    return {"seconds": time.perf_counter() - started, "groups": count, "loadavg_1min": load}


def resident_fraction(path: Path) -> float:
    """Fraction of ``path``'s pages in the page cache (``mincore`` on a private mapping that is never touched)."""
    import ctypes
    import mmap

    size = os.path.getsize(path)
    page = mmap.PAGESIZE
    vector = (ctypes.c_ubyte * ((size + page - 1) // page))()
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        buffer = ctypes.c_char.from_buffer(mapping)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(buffer)), ctypes.c_size_t(size), vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del buffer
    finally:
        mapping.close()
    return sum(v & 1 for v in vector) / len(vector)


def evict_from_page_cache(path: Path) -> None:
    """``posix_fadvise(DONTNEED)``: drop the file's clean pages (only pages nobody maps can go)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_epoch(settings: BenchSettings, sampler: AnonPeakSampler) -> dict:
    import numpy as np
    import torch

    from ptycho_torch.dataloader import TensorDictDataLoader

    torch.manual_seed(0)
    dataset = open_dataset(settings)
    if dataset.regrouped:
        raise RuntimeError("the epoch run regrouped; the cache of the cold build was not reused")
    n, bs = len(dataset), settings.batch_size
    loader = TensorDictDataLoader(dataset, batch_size=bs, shuffle=True, num_workers=0)

    def loader_images():
        for batch, probe, scale in loader:
            yield batch["images"]

    first = timed_epoch(loader_images())
    epoch_peak, epoch_hwm = sampler.current_peak(), proc_status()["VmHWM"]
    if first["groups"] != n:
        raise RuntimeError(f"one epoch yielded {first['groups']} groups, the dataset has {n}")

    full = torch.empty((n, dataset.C, dataset.N, dataset.N), dtype=torch.float32)
    for start in range(0, n, 1024):
        full[start : start + 1024] = dataset[np.arange(start, min(start + 1024, n))][0]["images"]
    check = torch.randperm(n)[:bs]
    if not torch.equal(full[check], dataset[check][0]["images"]):
        raise RuntimeError("in-memory X_full differs from the dataset's batch")
    experiment = dataset.experiments[0]
    memmap, members = experiment.store.diffraction, experiment.grouping.nn_indices

    def tensor_images():
        order = torch.randperm(n)
        for start in range(0, n, bs):
            yield full[order[start : start + bs]]

    def raw_gather_images():
        order = torch.randperm(n).numpy()
        for start in range(0, n, bs):
            yield memmap[members[order[start : start + bs]].ravel()].reshape(-1, dataset.C, dataset.N, dataset.N)

    norm = np.float32(experiment.grouping.norm)

    def take_and_scale_images():
        order = torch.randperm(n).numpy()
        for start in range(0, n, bs):
            rows = members[order[start : start + bs]].ravel()
            images = np.empty((len(rows), dataset.N, dataset.N), dtype=np.float32)
            np.take(memmap, rows, axis=0, out=images, mode="clip")
            images *= norm
            yield torch.from_numpy(images.reshape(-1, dataset.C, dataset.N, dataset.N))

    epochs = {"loader": [], "tensor": [], "raw_memmap_gather": [], "take_and_scale": []}
    for _ in range(settings.epochs):  # interleaved, so that background load hits every path alike
        epochs["loader"].append(timed_epoch(loader_images()))
        epochs["tensor"].append(timed_epoch(tensor_images()))
        epochs["raw_memmap_gather"].append(timed_epoch(raw_gather_images()))
        epochs["take_and_scale"].append(timed_epoch(take_and_scale_images()))
    total, total_sq = 0.0, 0.0
    for start in range(0, n, 256):
        block = full[start : start + 256].double()
        total += float(block.sum())
        total_sq += float(block.square().sum())
    return {
        "epoch_peak_anon": epoch_peak,
        "epoch_vm_hwm": epoch_hwm,
        "first_loader_epoch": first,
        "epochs": epochs,
        "in_memory_tensor_bytes": full.numel() * full.element_size(),
        "nn_indices_digest": grouping_digest(members),
        "x_full_sum": total,
        "x_full_sum_sq": total_sq,
        "norm": float(experiment.grouping.norm),
    }


def run_variants(settings: BenchSettings, sampler: AnonPeakSampler) -> dict:
    """The README's recipe (num_workers=2, pin_memory=True) against num_workers=0 and the in-memory tensor, interleaved."""
    import warnings

    import numpy as np
    import torch

    from ptycho_torch.dataloader import TensorDictDataLoader

    torch.manual_seed(0)
    dataset = open_dataset(settings)
    n, bs = len(dataset), settings.batch_size
    full = torch.cat([dataset[np.arange(s, min(s + 1024, n))][0]["images"] for s in range(0, n, 1024)])

    def loader_images(**kwargs):
        for batch, probe, scale in TensorDictDataLoader(dataset, batch_size=bs, shuffle=True, **kwargs):
            yield batch["images"]

    def tensor_images():
        order = torch.randperm(n)
        for start in range(0, n, bs):
            yield full[order[start : start + bs]]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe_batch = next(iter(TensorDictDataLoader(dataset, batch_size=bs, num_workers=2, pin_memory=True)))[0]["images"]
    pinned = _is_pinned(probe_batch)
    epochs = {"workers0": [], "workers2_pin": [], "tensor": []}
    for _ in range(settings.epochs):
        epochs["workers0"].append(timed_epoch(loader_images(num_workers=0)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            epochs["workers2_pin"].append(timed_epoch(loader_images(num_workers=2, pin_memory=True)))
        epochs["tensor"].append(timed_epoch(tensor_images()))
    return {
        "epochs": epochs,
        "pinned": pinned,
        "accelerator": torch.cuda.is_available(),
        "pin_memory_warnings": sorted({str(w.message) for w in caught}),
    }


def _is_pinned(tensor) -> bool:
    try:
        return bool(tensor.is_pinned())
    except RuntimeError:  # no accelerator to pin for
        return False


def run_cold_cache(settings: BenchSettings, sampler: AnonPeakSampler) -> dict:
    """Epochs whose every page of ``diffraction.npy`` is first evicted from the page cache, against warm ones."""
    import torch

    from ptycho_torch.dataloader import TensorDictDataLoader

    torch.manual_seed(0)
    epochs = {"cold": [], "warm": []}
    resident = []
    for _ in range(settings.epochs):
        for state in ("cold", "warm"):
            dataset = open_dataset(settings)  # a fresh, not yet mapped store: mapped pages could not be evicted
            path = dataset.experiments[0].store.directory / "diffraction.npy"
            if state == "cold":
                gc.collect()
                evict_from_page_cache(path)
                resident.append(resident_fraction(path))
            loader = TensorDictDataLoader(dataset, batch_size=settings.batch_size, shuffle=True, num_workers=0)
            epochs[state].append(timed_epoch(batch["images"] for batch, probe, scale in loader))
            del dataset, loader
    return {"epochs": epochs, "resident_fraction_after_evict": resident,
            "map_bytes": os.path.getsize(path), "mem_available_bytes": _mem_available()}


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return -1


def run_eager(settings: BenchSettings, sampler: AnonPeakSampler, with_y: bool) -> dict:
    from ptycho.raw_data import RawData

    started = time.perf_counter()
    raw = RawData.from_file(settings.npz_path)
    loaded = time.perf_counter()
    load_peak = sampler.current_peak()
    if not with_y:
        raw.objectGuess = None  # no ground-truth patches: only diffraction and X_full are materialised
    grouped = raw.generate_grouped_data(
        settings.N, K=settings.K, nsamples=settings.n_groups, seed=settings.grouping_seed, gridsize=settings.gridsize
    )
    finished = time.perf_counter()
    work_peak, work_hwm = sampler.current_peak(), proc_status()["VmHWM"]
    x_full = grouped["X_full"]
    materialised = sum(v.nbytes for v in grouped.values() if hasattr(v, "nbytes"))
    total, total_sq = 0.0, 0.0
    for start in range(0, len(x_full), 256):
        block = x_full[start : start + 256].astype("float64")
        total += float(block.sum())
        total_sq += float((block**2).sum())
    return {
        "work_peak_anon": work_peak,
        "work_vm_hwm": work_hwm,
        "load_s": loaded - started,
        "group_s": finished - loaded,
        "total_s": finished - started,
        "load_peak_anon": load_peak,
        "grouped_bytes": materialised,
        "has_y": grouped["Y"] is not None,
        "nn_indices_digest": grouping_digest(grouped["nn_indices"]),
        "x_full_sum": total,
        "x_full_sum_sq": total_sq,
    }


def child_main(phase: str, settings: BenchSettings, result_path: Path) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()
    started = time.perf_counter()
    import_everything()
    import torch

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    import_s = time.perf_counter() - started
    gc.collect()
    baseline = proc_status()
    with AnonPeakSampler(settings.sample_interval_s) as sampler:
        if phase == "cold":
            result = run_cold(settings, sampler)
        elif phase == "warm":
            result = run_warm(settings, sampler)
        elif phase == "epoch":
            result = run_epoch(settings, sampler)
        elif phase == "variants":
            result = run_variants(settings, sampler)
        elif phase == "cold_cache":
            result = run_cold_cache(settings, sampler)
        elif phase in ("eager", "eager_y"):
            result = run_eager(settings, sampler, with_y=phase == "eager_y")
        else:
            raise ValueError(f"unknown phase {phase!r}")
    end = proc_status()
    result.update(
        phase=phase,
        import_s=import_s,
        baseline_anon=baseline["RssAnon"],
        peak_anon=result.pop("work_peak_anon", sampler.peak),
        anon_samples=sampler.samples,
        end_anon=end["RssAnon"],
        end_file=end["RssFile"],
        vm_hwm=result.pop("work_vm_hwm", end["VmHWM"]),
        torch_threads=torch.get_num_threads(),
        loadavg_before=load_before,
        loadavg_after=os.getloadavg(),
    )
    result_path.write_text(json.dumps(result))


def run_child(phase: str, settings: BenchSettings) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", phase,
                   "--settings", json.dumps(asdict(settings)), "--result", str(out)]
        subprocess.run(command, check=True, cwd=REPO)
        return json.loads(out.read_text())


def ensure_dataset(settings: BenchSettings) -> dict:
    from ptycho.simulate import SimulationSettings, write_scan_npz

    path = settings.npz_path
    if path.exists():
        return {"simulated": False, "path": str(path), "bytes": path.stat().st_size, "seconds": 0.0}
    started = time.perf_counter()
    write_scan_npz(
        path,
        SimulationSettings(n_points=settings.n_points, N=settings.N, nphotons=settings.nphotons, seed=settings.simulation_seed),
        compressed=settings.compressed,
    )
    return {"simulated": True, "path": str(path), "bytes": path.stat().st_size, "seconds": time.perf_counter() - started}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    import numpy
    import torch

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "mem_total_bytes": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def rates(epochs: list[dict]) -> list[float]:
    return [e["groups"] / e["seconds"] for e in epochs]


def summarise(settings: BenchSettings, runs: dict) -> dict:
    cold, warm, epoch, eager = runs["cold"], runs["warm"], runs["epoch"], runs["eager"]
    throughput = {name: {"median": statistics.median(rates(values)), "all": rates(values)} for name, values in epoch["epochs"].items()}
    throughput["loader_first_epoch"] = rates([epoch["first_loader_epoch"]])[0]
    pair_ratios = [a / b for a, b in zip(throughput["loader"]["all"], throughput["tensor"]["all"])]
    ratio = statistics.median(pair_ratios)

    def above(run: dict, peak_key: str = "peak_anon") -> int:
        return run[peak_key] - run["baseline_anon"]

    eager_delta, eager_abs = above(eager), eager["peak_anon"]
    memory = {
        "build": {"delta": above(cold), "absolute": cold["peak_anon"]},
        "epoch": {"delta": above(epoch, "epoch_peak_anon"), "absolute": epoch["epoch_peak_anon"]},
    }
    targets = {
        "warm_start_le_cold_over_20": {
            "value": warm["warm_start_s"] / cold["build_s"], "limit": 1 / 20,
            "pass": warm["warm_start_s"] <= cold["build_s"] / 20,
        },
        "throughput_ge_0.8x_in_memory": {"value": ratio, "limit": 0.8, "pass": ratio >= 0.8, "pair_ratios": pair_ratios},
    }
    for name, values in memory.items():
        targets[f"{name}_anon_le_25pct_eager"] = {
            "value": values["delta"] / eager_delta, "limit": 0.25,
            "pass": values["delta"] <= 0.25 * eager_delta,
            "absolute_ratio": values["absolute"] / eager_abs,
            "absolute_pass": values["absolute"] <= 0.25 * eager_abs,
        }
    targets["throughput_ge_0.8x_in_memory"]["torch_threads"] = epoch["torch_threads"]
    per_thread = [thread_summary(run) for name, run in sorted(runs.items()) if name.startswith("epoch_threads_")]
    variants = variant_summary(runs["variants"]) if "variants" in runs else None
    cold_cache = cold_cache_summary(runs["cold_cache"]) if "cold_cache" in runs else None
    checks = {
        "same_groups_as_eager": epoch["nn_indices_digest"] == eager["nn_indices_digest"],
        "x_full_sum_rel_diff": abs(epoch["x_full_sum"] - eager["x_full_sum"]) / abs(eager["x_full_sum"]),
        "x_full_sum_sq_rel_diff": abs(epoch["x_full_sum_sq"] - eager["x_full_sum_sq"]) / abs(eager["x_full_sum_sq"]),
    }
    return {"throughput": throughput, "memory": memory, "targets": targets, "checks": checks,
            "per_thread": per_thread, "variants": variants, "cold_cache": cold_cache}


def loads_of(*epoch_lists: list[dict]) -> list[float]:
    return [e["loadavg_1min"] for epochs in epoch_lists for e in epochs]


def is_contended(loads: list[float]) -> bool:
    """Other work shared the cores: a 1-minute load average above half the core count."""
    return max(loads) > 0.5 * (os.cpu_count() or 1)


def thread_summary(run: dict) -> dict:
    loader, tensor = rates(run["epochs"]["loader"]), rates(run["epochs"]["tensor"])
    ratios = [a / b for a, b in zip(loader, tensor)]
    loads = loads_of(run["epochs"]["loader"], run["epochs"]["tensor"])
    return {"torch_threads": run["torch_threads"], "loader": loader, "tensor": tensor, "pair_ratios": ratios,
            "median_ratio": statistics.median(ratios), "loads": loads, "contended": is_contended(loads)}


def variant_summary(run: dict) -> dict:
    medians = {name: statistics.median(rates(epochs)) for name, epochs in run["epochs"].items()}
    loads = loads_of(*run["epochs"].values())
    return {"medians": medians, "all": {name: rates(epochs) for name, epochs in run["epochs"].items()},
            "pinned": run["pinned"], "accelerator": run["accelerator"], "warnings": run["pin_memory_warnings"],
            "loads": loads, "contended": is_contended(loads)}


def cold_cache_summary(run: dict) -> dict:
    cold, warm = rates(run["epochs"]["cold"]), rates(run["epochs"]["warm"])
    loads = loads_of(run["epochs"]["cold"], run["epochs"]["warm"])
    return {"cold": cold, "warm": warm, "pair_ratios": [c / w for c, w in zip(cold, warm)],
            "resident_after_evict": run["resident_fraction_after_evict"], "map_bytes": run["map_bytes"],
            "mem_available_bytes": run["mem_available_bytes"], "loads": loads, "contended": is_contended(loads)}


def mib(value: float) -> str:
    return f"{value / MiB:,.0f}"


def table(settings: BenchSettings, runs: dict, summary: dict) -> str:
    cold, warm, epoch, eager = runs["cold"], runs["warm"], runs["epoch"], runs["eager"]
    eager_y = runs.get("eager_y")
    throughput = summary["throughput"]
    rows = [
        ("memmap: cold build (copy + group + cache)", f"{cold['build_s']:.2f} s", cold, "peak_anon"),
        ("memmap: warm start to first batch", f"{warm['warm_start_s']:.3f} s "
         f"({warm['construct_s']:.3f} + {warm['first_batch_s']:.3f})", warm, "peak_anon"),
        (f"memmap: 1 shuffled epoch, DataLoader bs={settings.batch_size}",
         f"{epoch['first_loader_epoch']['seconds']:.2f} s", epoch, "epoch_peak_anon"),
        ("eager: RawData.from_file + generate_grouped_data (no Y)", f"{eager['total_s']:.2f} s "
         f"({eager['load_s']:.2f} load + {eager['group_s']:.2f} group)", eager, "peak_anon"),
    ]
    if eager_y is not None:
        rows.append(("eager, with Y from objectGuess (PtychoPINN's default)", f"{eager_y['total_s']:.2f} s "
                     f"({eager_y['load_s']:.2f} + {eager_y['group_s']:.2f})", eager_y, "peak_anon"))
    lines = [
        "| step (each in a fresh process) | time | RssAnon after imports (MiB) | peak RssAnon (MiB) "
        "| peak - after imports (MiB) | VmHWM (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, time_text, run, key in rows:
        hwm = run["epoch_vm_hwm"] if key == "epoch_peak_anon" else run["vm_hwm"]
        lines.append(f"| {label} | {time_text} | {mib(run['baseline_anon'])} | {mib(run[key])} | "
                     f"{mib(run[key] - run['baseline_anon'])} | {mib(hwm)} |")
    ratios = ", ".join(f"{r:.3f}" for r in summary["targets"]["throughput_ge_0.8x_in_memory"]["pair_ratios"])
    lines += [
        "",
        f"| throughput, batch {settings.batch_size}, shuffled (groups/s) | median of {settings.epochs} epochs | epochs |",
        "|---|---:|---|",
        f"| TensorDictDataLoader over the memmap (num_workers=0) | {throughput['loader']['median']:,.0f} | "
        f"{', '.join(f'{r:,.0f}' for r in throughput['loader']['all'])} (first epoch of the process: "
        f"{throughput['loader_first_epoch']:,.0f}) |",
        f"| indexing an in-memory X_full tensor (B, C, N, N) with torch | {throughput['tensor']['median']:,.0f} | "
        f"{', '.join(f'{r:,.0f}' for r in throughput['tensor']['all'])} |",
        f"| diagnostic: raw NumPy gather from the memmap (no scaling, no TensorDict) | "
        f"{throughput['raw_memmap_gather']['median']:,.0f} | "
        f"{', '.join(f'{r:,.0f}' for r in throughput['raw_memmap_gather']['all'])} |",
        f"| diagnostic: np.take from the memmap into one batch buffer + in-place scale (X_full, no TensorDict) | "
        f"{throughput['take_and_scale']['median']:,.0f} | "
        f"{', '.join(f'{r:,.0f}' for r in throughput['take_and_scale']['all'])} |",
        "",
        f"Loader / in-memory ratio per interleaved epoch pair: {ratios}. "
        f"torch threads: {epoch['torch_threads']}; load average (1 min) during the epoch run: "
        f"{epoch['loadavg_before'][0]:.2f} -> {epoch['loadavg_after'][0]:.2f}.",
        "",
        "| target | measured | limit | result |",
        "|---|---:|---:|---|",
    ]
    t = summary["targets"]
    lines.append(f"| warm start / cold build | {t['warm_start_le_cold_over_20']['value']:.4f} | <= 0.05 | "
                 f"{'PASS' if t['warm_start_le_cold_over_20']['pass'] else 'FAIL'} |")
    for name in ("build", "epoch"):
        entry = t[f"{name}_anon_le_25pct_eager"]
        lines.append(f"| {name} peak RssAnon / eager's, above the after-import baseline | {entry['value']:.3f} | <= 0.25 | "
                     f"{'PASS' if entry['pass'] else 'FAIL'} |")
        lines.append(f"| {name} peak RssAnon / eager's, absolute (nothing subtracted) | {entry['absolute_ratio']:.3f} | <= 0.25 | "
                     f"{'PASS' if entry['absolute_pass'] else 'FAIL'} |")
    entry = t["throughput_ge_0.8x_in_memory"]
    lines.append(f"| DataLoader / in-memory indexing throughput (median of per-epoch ratios, {entry['torch_threads']} torch "
                 f"thread(s)) | {entry['value']:.3f} | >= 0.8 | {'PASS' if entry['pass'] else 'FAIL'} |")
    lines += extra_tables(settings, summary)
    checks = summary["checks"]
    lines += [
        "",
        "Memory targets are judged on peak RssAnon minus RssAnon after imports (every process imports numpy, torch, "
        "tensordict, ptycho and ptycho_torch first); the 'absolute' rows compare the raw peaks, nothing subtracted.",
        f"Same groups as the eager path: {'yes' if checks['same_groups_as_eager'] else 'NO'}; "
        f"X_full sum relative difference {checks['x_full_sum_rel_diff']:.1e}, "
        f"sum of squares {checks['x_full_sum_sq_rel_diff']:.1e}.",
    ]
    return "\n".join(lines)


def _contended_note(entry: dict) -> str:
    return "CONTENDED" if entry["contended"] else "quiet"


def extra_tables(settings: BenchSettings, summary: dict) -> list[str]:
    """Per thread count, the worker/pinning recipe and the cold page cache; every number with its load average."""
    cores = os.cpu_count() or 1
    lines = ["", f"Load: 1-minute load average before each timed epoch, on {cores} cores; a run is marked CONTENDED when "
             f"it exceeded {0.5 * cores:g} (other work shared the cores, so its timings are not a quiet machine's)."]
    if summary["per_thread"]:
        lines += ["", "| torch threads | loader groups/s per epoch | in-memory groups/s per epoch | loader / in-memory per epoch "
                  "| median ratio | load per epoch | |", "|---:|---|---|---|---:|---|---|"]
        for t in summary["per_thread"]:
            lines.append(
                f"| {t['torch_threads']} | {', '.join(f'{r:,.0f}' for r in t['loader'])} | "
                f"{', '.join(f'{r:,.0f}' for r in t['tensor'])} | {', '.join(f'{r:.3f}' for r in t['pair_ratios'])} | "
                f"{t['median_ratio']:.3f} | {', '.join(f'{x:.2f}' for x in t['loads'])} | {_contended_note(t)} |")
    v = summary["variants"]
    if v:
        pin = "pinned" if v["pinned"] else "NOT pinned (no accelerator: pin_memory does nothing here)"
        lines += ["", f"| DataLoader variant, batch {settings.batch_size}, shuffled | median groups/s | per epoch | / num_workers=0 |",
                  "|---|---:|---|---:|"]
        labels = {"workers0": "num_workers=0", "workers2_pin": f"num_workers=2, pin_memory=True (workers started each epoch; batches {pin})",
                  "tensor": "in-memory X_full tensor, indexed"}
        for name, label in labels.items():
            lines.append(f"| {label} | {v['medians'][name]:,.0f} | {', '.join(f'{r:,.0f}' for r in v['all'][name])} | "
                         f"{v['medians'][name] / v['medians']['workers0']:.3f} |")
        lines.append(f"\nLoad per epoch: {', '.join(f'{x:.2f}' for x in v['loads'])} ({_contended_note(v)}).")
    c = summary["cold_cache"]
    if c:
        lines += ["", "| page cache before the epoch (num_workers=0) | groups/s per epoch | resident share of the map after eviction |",
                  "|---|---|---|",
                  f"| warm (map pages cached) | {', '.join(f'{r:,.0f}' for r in c['warm'])} | - |",
                  f"| cold (posix_fadvise DONTNEED on diffraction.npy first) | {', '.join(f'{r:,.0f}' for r in c['cold'])} | "
                  f"{', '.join(f'{x:.3f}' for x in c['resident_after_evict'])} |",
                  "",
                  f"Cold / warm per epoch pair: {', '.join(f'{r:.3f}' for r in c['pair_ratios'])}; map {c['map_bytes'] / MiB:,.0f} MiB, "
                  f"MemAvailable {c['mem_available_bytes'] / MiB:,.0f} MiB; load per epoch {', '.join(f'{x:.2f}' for x in c['loads'])} "
                  f"({_contended_note(c)})."]
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    defaults = BenchSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-points", type=int, default=defaults.n_points, help="simulated scan positions")
    parser.add_argument("--N", type=int, default=defaults.N, help="pattern side in pixels")
    parser.add_argument("--n-groups", type=int, default=defaults.n_groups, help="groups (nsamples)")
    parser.add_argument("--K", type=int, default=defaults.K, help="neighbour count")
    parser.add_argument("--gridsize", type=int, default=defaults.gridsize)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs timed for throughput (memory: the first)")
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads in every child (default: torch's own)")
    parser.add_argument("--compressed", action="store_true", help="simulate a compressed NPZ (np.savez_compressed)")
    parser.add_argument("--no-eager-y", action="store_true", help="skip the eager run that also cuts Y from objectGuess")
    parser.add_argument("--thread-sweep", default="1,2",
                        help="torch thread counts to measure the loader / in-memory ratio with, each in its own process (default: 1,2; '' for none)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small scan ({QUICK['n_points']:,} points, {QUICK['n_groups']:,} groups, {QUICK['epochs']} epochs), "
                             "no eager Y run: under 3 minutes on a busy 2-core machine")
    parser.add_argument("--workdir", type=Path, default=Path(defaults.workdir), help="simulated NPZ (kept) and memmap data dir")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "bench_memmap.json", help="result file")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, BenchSettings(**json.loads(args.settings)), args.result)
        return 0
    if args.quick:
        args.n_points, args.n_groups, args.epochs, args.no_eager_y = QUICK["n_points"], QUICK["n_groups"], QUICK["epochs"], True
    settings = BenchSettings(
        n_points=args.n_points, N=args.N, n_groups=args.n_groups, K=args.K, gridsize=args.gridsize,
        batch_size=args.batch_size, epochs=args.epochs, compressed=args.compressed, workdir=str(args.workdir.resolve()),
        torch_threads=args.torch_threads,
    )
    sweep = [int(t) for t in args.thread_sweep.split(",") if t.strip()]
    Path(settings.workdir).mkdir(parents=True, exist_ok=True)
    dataset = ensure_dataset(settings)
    print(f"dataset {dataset['path']} ({dataset['bytes'] / 1e6:.0f} MB"
          + (f", simulated in {dataset['seconds']:.1f} s)" if dataset["simulated"] else ", cached)"), flush=True)
    if settings.data_dir.exists():
        shutil.rmtree(settings.data_dir)
    phases = [p for p in PHASES if not (p == "eager_y" and args.no_eager_y)]
    runs = {}
    for phase in phases:
        print(f"running {phase} ...", flush=True)
        runs[phase] = run_child(phase, settings)
    for threads in sweep:
        print(f"running epoch with {threads} torch thread(s) ...", flush=True)
        runs[f"epoch_threads_{threads}"] = run_child("epoch", replace(settings, torch_threads=threads))
    summary = summarise(settings, runs)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "settings": asdict(settings),
        "dataset": dataset,
        "runs": runs,
        **summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print()
    print(table(settings, runs, summary))
    print(f"\nJSON written to {args.json}")
    missed = [name for name, t in summary["targets"].items() if not t["pass"]]
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    return 1 if (missed and args.strict) else 0


if __name__ == "__main__":
    raise SystemExit(main())
