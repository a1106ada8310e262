"""Under ``torch.distributed``, rank 0 prepares shared files while the other ranks wait."""

from __future__ import annotations

import logging
import sys
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


def process_group() -> tuple[int, int] | None:
    """``(rank, world_size)`` when a process group is initialised, else None (torch is never imported here)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist.get_rank(), dist.get_world_size()


def rank_zero_first(prepare: Callable[[bool], T]) -> T:
    """Run ``prepare(build=True)`` on rank 0, then ``prepare(build=False)`` on the others.

    The other ranks wait at a collective until rank 0 is done; if rank 0 fails they raise too
    instead of hanging.
    """
    group = process_group()
    if group is None:
        return prepare(True)
    rank, world = group
    dist = sys.modules["torch.distributed"]
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
    logger.info("rank %d of %d waits for rank 0 to prepare the data", rank, world)
    dist.broadcast_object_list(status, src=0)
    if status[0] is not None:
        raise RuntimeError(f"rank 0 failed to prepare the data: {status[0]}")
    return prepare(False)
