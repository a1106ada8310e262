"""TensorDictDataLoader and PtychoPINN's collate functions (needs torch)."""

from __future__ import annotations

import numpy as np

from ptycho_torch.torch_support import require_torch

torch = require_torch("TensorDictDataLoader")

from torch.utils.data import BatchSampler, DataLoader, Sampler, Subset  # noqa: E402

__all__ = ["Collate", "Collate_Lightning", "IndexBatches", "TensorDictDataLoader", "compact_to"]


class _WholeBatch:
    """The DataLoader's collate: the dataset already returned the whole batch; apply ``then`` if given."""

    def __init__(self, then=None):
        self.then = then

    def __call__(self, batch):
        return batch if self.then is None else self.then(batch)


class IndexBatches(Sampler):
    """Index batches cut from one permutation per epoch, or in order without ``shuffle``.

    Equivalent to ``BatchSampler(RandomSampler(...))`` without building a Python list per batch
    (batches are int64 arrays; lists with ``as_lists=True``, which ``Subset`` needs); the
    permutation comes from ``generator`` (default: seeded from torch's global RNG, so
    ``torch.manual_seed`` makes epochs reproducible).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, generator=None, as_lists: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.drop_last, self.generator = n, batch_size, shuffle, drop_last, generator
        self.as_lists = as_lists

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = self._permutation() if self.shuffle else np.arange(self.n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = order[start : start + self.batch_size]
            yield batch.tolist() if self.as_lists else batch

    def _permutation(self) -> np.ndarray:
        generator = self.generator
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        return torch.randperm(self.n, generator=generator).numpy()


class TensorDictDataLoader(DataLoader):
    """Yields ``dataset[batch_indices]`` per batch, so one memory-map gather serves a whole batch.

    Takes the usual ``batch_size``, ``shuffle``, ``sampler`` (e.g. ``DistributedSampler``),
    ``drop_last``, ``num_workers``, ``pin_memory`` and other DataLoader keywords; workers fetch
    whole batches. ``collate_fn`` (e.g. :class:`Collate`) is applied to each whole batch, as in
    PtychoPINN. ``dataset`` may be a ``torch.utils.data.Subset`` (``random_split``).
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, sampler=None, drop_last: bool = False, collate_fn=None, **kwargs):
        if sampler is not None and shuffle:
            raise ValueError("pass shuffle=False with a sampler (the sampler decides the order; call its set_epoch)")
        if sampler is None:
            as_lists = isinstance(dataset, Subset)  # Subset indexes its index list with lists only
            batches = IndexBatches(len(dataset), batch_size, shuffle, drop_last, kwargs.get("generator"), as_lists=as_lists)
        else:
            batches = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
        super().__init__(dataset, sampler=batches, batch_size=None, collate_fn=_WholeBatch(collate_fn), **kwargs)


def compact_to(tensor, device, non_blocking: bool = False):
    """``tensor.to(device)`` that keeps a broadcast (stride-0) view broadcast.

    ``Tensor.to`` materialises an expanded view: a ``(B, C, P, N, N)`` probe that is one
    ``(P, N, N)`` probe broadcast would grow ``B * C`` times on the device. This moves only the
    distinct values and expands again there.
    """
    base = tensor
    for dim, (size, stride) in enumerate(zip(tensor.shape, tensor.stride())):
        if stride == 0 and size > 1:
            base = base.narrow(dim, 0, 1)
    moved = base.to(device, non_blocking=non_blocking)
    return moved if base is tensor else moved.expand(tensor.shape)


class Collate:
    """PtychoPINN's collate for plain torch loops: moves ``(TensorDict, probe, scale)`` to ``device``.

    Pins memory first when the device is CUDA. Unlike upstream's, the probe stays a broadcast
    view on the device (see :func:`compact_to`) instead of being cloned ``B * C`` times.
    """

    def __init__(self, device=None):
        self.device = None if device is None else torch.device(device)

    def __call__(self, batch):
        tensor_dict, probe, scale = batch
        if self.device is None:
            return tensor_dict, probe, scale
        pin = self.device.type == "cuda"
        if pin:
            tensor_dict, scale = tensor_dict.pin_memory(), scale.pin_memory()
        return tensor_dict.to(self.device, non_blocking=pin), compact_to(probe, self.device, pin), scale.to(self.device, non_blocking=pin)


class Collate_Lightning:
    """PtychoPINN's collate for Lightning, which moves batches itself: pins memory when CUDA is available.

    The probe is left a broadcast view (pinning it would materialise it); Lightning's transfer
    then copies it whole, so move it with :func:`compact_to` in ``transfer_batch_to_device`` when
    the copy matters.
    """

    def __init__(self, pin_memory_if_cuda: bool = True):
        self.pin_memory_if_cuda = pin_memory_if_cuda

    def __call__(self, batch):
        tensor_dict, probe, scale = batch
        if self.pin_memory_if_cuda and torch.cuda.is_available():
            tensor_dict, scale = tensor_dict.pin_memory(), scale.pin_memory()
        return tensor_dict, probe, scale
