"""The physics input of each group kept across the epochs of one fit, addressed by the group's data, within a byte budget."""

from __future__ import annotations

import hashlib
import logging
import operator
import os

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["INPUT_CACHE_BYTES", "InputCache", "byte_budget", "default_budget"]

INPUT_CACHE_BYTES = 2 * 2**30  # the most PtychoPINN_Lightning.input_cache_bytes takes by default
MEMORY_SHARE = 8  # ... and at most this fraction of the machine's memory
_MIB = 2**20


def default_budget() -> int:
    """``INPUT_CACHE_BYTES`` or an eighth of the machine's physical memory, whichever is less (2 GiB when it cannot be read)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return INPUT_CACHE_BYTES
    return min(INPUT_CACHE_BYTES, memory // MEMORY_SHARE) if memory > 0 else INPUT_CACHE_BYTES


def byte_budget(value) -> int:
    """``value`` as a byte count >= 0, or a ValueError naming ``PtychoPINN_Lightning.input_cache_bytes``."""
    try:
        budget = operator.index(value)
    except TypeError:
        budget = None
    if budget is None or isinstance(value, bool) or budget < 0:
        raise ValueError(f"PtychoPINN_Lightning.input_cache_bytes={value!r} must be a whole number of bytes >= 0 "
                         "(0: recompute the physics input of every batch)")
    return budget


class InputCache:
    """Generator inputs ``(2C, N, N)`` of groups on the CPU, up to ``budget_bytes``.

    A group is addressed by a digest of everything its input is computed from (its patterns, count scales, positions
    and probe, :meth:`keys_of`), so two groups share an entry only when their inputs are the same numbers.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes, self.used_bytes, self.rows, self.full = budget_bytes, 0, {}, False

    @staticmethod
    def keys_of(batch, probe: torch.Tensor, scale: torch.Tensor) -> list[bytes] | None:
        """One digest per group of a CPU batch; None for a batch on another device or without positions."""
        images = batch["images"]
        if images.device.type != "cpu" or "coords_relative" not in batch.keys():
            return None
        parts = [images, batch["coords_relative"], scale.reshape(len(images), -1), probe]
        if "physics_scaling_constant" in batch.keys():
            parts.append(batch["physics_scaling_constant"])
        digests = [_row_digests(part.detach(), len(images)) for part in parts]
        return [hashlib.blake2b(b"".join(row), digest_size=16).digest() for row in zip(*digests)]

    def lookup(self, keys: list[bytes]) -> list[torch.Tensor | None]:
        return [self.rows.get(key) for key in keys]

    def put(self, keys: list[bytes], inputs: torch.Tensor) -> None:
        stored = inputs.detach().to("cpu")
        for key, row in zip(keys, stored):
            if key in self.rows:
                continue
            row_bytes = row.numel() * row.element_size()
            if self.used_bytes + row_bytes > self.budget_bytes:
                if not self.full:
                    self.full = True
                    logger.info("the physics inputs of %d groups fill input_cache_bytes=%d; the other groups' are recomputed in every epoch",
                                len(self.rows), self.budget_bytes)
                return
            self.rows[key] = row.clone()
            self.used_bytes += row_bytes

    def summary(self) -> str:
        return f"{len(self.rows)} groups' physics inputs were computed once and kept ({self.used_bytes / _MIB:.1f} MiB of input_cache_bytes)"


def _row_digests(tensor: torch.Tensor, rows: int) -> list[bytes]:
    """A digest of each of ``rows`` rows (first axis) of a CPU tensor; a row broadcast over the batch is digested once."""
    if tensor.ndim and tensor.shape[0] == rows and tensor.stride(0) != 0:
        array = tensor.numpy()
        return [hashlib.blake2b(np.ascontiguousarray(row).view(np.uint8), digest_size=16).digest() for row in array]
    first = tensor[0] if tensor.ndim and tensor.shape[0] == rows else tensor
    return [hashlib.blake2b(np.ascontiguousarray(first.numpy()).view(np.uint8), digest_size=16).digest()] * rows


def batch_rows(batch, index: torch.Tensor):
    """Rows ``index`` of a batch (a TensorDict, a dict of tensors, or a tensor; a probe broadcast over the batch stays a broadcast)."""
    if isinstance(batch, torch.Tensor):
        if batch.ndim and batch.stride(0) == 0:
            return batch[:1].expand(len(index), *batch.shape[1:])
        return batch[index]
    if isinstance(batch, dict):
        return {key: value[index] for key, value in batch.items()}
    return batch[index]
