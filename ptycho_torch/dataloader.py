"""TensorDictDataLoader: a DataLoader that asks the dataset for whole batches of indices at once."""

from __future__ import annotations

import numpy as np

from ptycho_torch.torch_support import require_torch

torch = require_torch("TensorDictDataLoader")

from torch.utils.data import BatchSampler, DataLoader, Sampler  # noqa: E402


def _whole_batch(batch):
    return batch


class IndexBatches(Sampler):
    """Index batches (int64 arrays) cut from one permutation per epoch, or in order without ``shuffle``.

    Equivalent to ``BatchSampler(RandomSampler(...))`` without building a Python list per batch;
    the permutation comes from ``generator`` (default: seeded from torch's global RNG, so
    ``torch.manual_seed`` makes epochs reproducible).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, generator=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.drop_last, self.generator = n, batch_size, shuffle, drop_last, generator

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = self._permutation() if self.shuffle else np.arange(self.n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]

    def _permutation(self) -> np.ndarray:
        generator = self.generator
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        return torch.randperm(self.n, generator=generator).numpy()


class TensorDictDataLoader(DataLoader):
    """Yields ``dataset[batch_indices]`` per batch, so one memory-map gather serves a whole batch.

    Takes the usual ``batch_size``, ``shuffle``, ``sampler`` (e.g. ``DistributedSampler``),
    ``drop_last``, ``num_workers``, ``pin_memory`` and other DataLoader keywords; workers
    fetch whole batches.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, sampler=None, drop_last: bool = False, **kwargs):
        if sampler is not None and shuffle:
            raise ValueError("pass shuffle=False with a sampler (the sampler decides the order; call its set_epoch)")
        if sampler is None:
            batches = IndexBatches(len(dataset), batch_size, shuffle, drop_last, kwargs.get("generator"))
        else:
            batches = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
        super().__init__(dataset, sampler=batches, batch_size=None, collate_fn=_whole_batch, **kwargs)
