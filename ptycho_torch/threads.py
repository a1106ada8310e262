"""How many threads torch computes with: the cores this process may use, less its loader workers (torch-free)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ThreadChoice", "available_cores", "choose_threads", "environment_threads", "spare_loader_workers"]


@dataclass(frozen=True)
class ThreadChoice:
    """The number of torch threads and why (for the one INFO line of each command)."""

    threads: int
    reason: str


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a batch job's allocation), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def spare_loader_workers(requested: int, processes: int = 1, cores: int | None = None, threads: int = 1) -> int:
    """The loader workers training starts (``model.training.loader_workers``'s rule): at most the cores a process leaves
    free beside its ``threads`` compute threads (1 when torch's threads follow the cores)."""
    cores = available_cores() if cores is None else cores
    return min(int(requested), max(0, cores // max(1, processes) - int(threads)))


def environment_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """``OMP_NUM_THREADS`` when it is set to a positive integer, else None."""
    return _positive_int((os.environ if environ is None else environ).get("OMP_NUM_THREADS"))


def choose_threads(requested: int | None = None, loader_workers: int = 0, processes: int = 1,
                   environ: Mapping[str, str] | None = None, cores: int | None = None) -> ThreadChoice:
    """``requested`` (``--threads``) if given, else ``OMP_NUM_THREADS`` if set, else this process's share of the
    cores (``cores // processes``) less its ``loader_workers``, at least 1."""
    if requested is not None:
        return ThreadChoice(int(requested), "--threads")
    omp = environment_threads(environ)
    if omp is not None:
        return ThreadChoice(omp, f"OMP_NUM_THREADS={omp}")
    cores = available_cores() if cores is None else cores
    share = max(1, cores // max(1, processes))
    threads = max(1, share - loader_workers)
    reason = f"{cores} core(s) this process may use"
    if processes > 1:
        reason += f", shared by {processes} training processes"
    return ThreadChoice(threads, f"{reason}, less {loader_workers} loader worker(s)")


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value >= 1 else None
