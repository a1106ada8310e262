"""TensorDictDataLoader: a DataLoader that asks the dataset for whole batches of indices at once."""

from __future__ import annotations

from ptycho_torch.torch_support import require_torch

torch = require_torch("TensorDictDataLoader")

from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler  # noqa: E402


def _whole_batch(batch):
    return batch


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
            sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        batches = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
        super().__init__(dataset, sampler=batches, batch_size=None, collate_fn=_whole_batch, **kwargs)
