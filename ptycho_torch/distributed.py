"""Under ``torch.distributed``, rank 0 prepares shared files while the other ranks wait outside any collective."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

POLL_SECONDS = 0.2
LOG_EVERY_SECONDS = 60.0
_KEY_PREFIX = "ptycho_torch/rank_zero_first"
_OK = "ok"


def process_group() -> tuple[int, int] | None:
    """``(rank, world_size)`` when a process group is initialised, else None (torch is never imported here)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist.get_rank(), dist.get_world_size()


def rank_zero_first(prepare: Callable[[bool], T]) -> T:
    """Run ``prepare(build=True)`` on rank 0, then ``prepare(build=False)`` on the others.

    The other ranks do not wait inside a collective while rank 0 builds (a build can outlast the
    process group timeout, and NCCL's watchdog kills such waits): they poll a key in the process
    group's key-value store, which rank 0 sets when it is done or has failed. Only then do all ranks
    meet at a barrier, which is brief. If rank 0 fails, the others raise instead of hanging.
    """
    group = process_group()
    if group is None:
        return prepare(True)
    rank, world = group
    dist = sys.modules["torch.distributed"]
    store = _default_store(dist)
    if store is None:  # pragma: no cover - a process group always has a store in torch >= 2.2
        return _broadcast_status(dist, rank, prepare)
    key = _status_key(store, rank)
    if rank == 0:
        try:
            result = prepare(True)
        except Exception as exc:
            store.set(key, f"{type(exc).__name__}: {exc}")
            raise
        store.set(key, _OK)
        dist.barrier()
        return result
    logger.info("rank %d of %d waits for rank 0 to prepare the data", rank, world)
    status = _wait_for(store, key, rank)
    if status != _OK:
        raise RuntimeError(f"rank 0 failed to prepare the data: {status}")
    result = prepare(False)
    dist.barrier()
    return result


def _default_store(dist):
    """The key-value store the process group was initialised with (torch keeps it private)."""
    getter = getattr(getattr(dist, "distributed_c10d", None), "_get_default_store", None)
    try:
        return None if getter is None else getter()
    except (RuntimeError, ValueError):  # pragma: no cover
        return None


def _status_key(store, rank: int) -> str:
    """A key unique to this call: every rank calls in the same order, so its own call count agrees."""
    call = store.add(f"{_KEY_PREFIX}/calls/{rank}", 1)
    return f"{_KEY_PREFIX}/status/{call}"


def _wait_for(store, key: str, rank: int) -> str:
    """Poll ``key`` without blocking in the store (``check`` never times out), logging now and then."""
    started = last_log = time.monotonic()
    while not store.check([key]):
        time.sleep(POLL_SECONDS)
        now = time.monotonic()
        if now - last_log >= LOG_EVERY_SECONDS:
            logger.info("rank %d still waits for rank 0 to prepare the data (%.0f s)", rank, now - started)
            last_log = now
    return store.get(key).decode()


def _broadcast_status(dist, rank: int, prepare: Callable[[bool], T]) -> T:  # pragma: no cover
    status: list[str | None] = [None]
    if rank == 0:
        try:
            result = prepare(True)
        except Exception as exc:
            status[0] = f"{type(exc).__name__}: {exc}"
            dist.broadcast_object_list(status, src=0)
            raise
        dist.broadcast_object_list(status, src=0)
        return result
    dist.broadcast_object_list(status, src=0)
    if status[0] is not None:
        raise RuntimeError(f"rank 0 failed to prepare the data: {status[0]}")
    return prepare(False)
