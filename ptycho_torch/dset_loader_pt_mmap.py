"""PtychoDataset: a torch ``Dataset`` of groups over memory-mapped diffraction, grouped by RawDataTorch.

One NPZ or a directory of NPZ experiments (each its own scan, probe and scale) becomes one index
space of groups. Nothing is grouped here: every experiment's groups come from
``RawDataTorch`` through its ``.groups_cache.npz`` (see ``ptycho_torch.experiment``). A batch is
gathered from the memory map on demand, so memory does not grow with the dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ptycho import params
from ptycho.config.config import update_legacy_dict
from ptycho.loader import probe_mode0
from ptycho.patches import extract_patches
from ptycho.scan_file import scan_files
from ptycho_torch.data_settings import PipelineSettings, pipeline_settings
from ptycho_torch.dataset_config import PtychoConfig, grouping_key, to_ptycho_config
from ptycho_torch.distributed import rank_zero_first
from ptycho_torch.experiment import Experiment, prepare_experiment
from ptycho_torch.torch_support import INSTALL_HINT, require_torch

try:
    import torch
    from torch.utils.data import Dataset
except ImportError:  # the module imports without torch; the dataset itself needs it
    torch = None
    Dataset = object
try:
    from tensordict import TensorDict
except ImportError:
    TensorDict = None

logger = logging.getLogger(__name__)

__all__ = ["PtychoDataset"]


class PtychoDataset(Dataset):
    """Groups of ``C`` diffraction patterns, channels first, batched by index lists.

    ``dataset[indices]`` (an int, a list, an array or a tensor of indices) returns
    ``(batch, probe, scale)``: ``batch`` is a TensorDict with ``images (B, C, N, N)`` float32
    (X_full: the normalised amplitudes), ``coords_relative (B, C, 1, 2)``, ``coords_center
    (B, 1, 1, 2)``, ``coords_start_relative``, ``coords_start_center``, ``nn_indices (B, C)``,
    ``experiment_id (B,)`` and, with ``ground_truth=True`` and an object or ``Y`` in the data,
    ``Y (B, C, N, N)`` complex64; ``probe`` is ``(B, C, N, N)`` complex64 (each item's experiment
    probe, mode 0, broadcast over channels) and ``scale`` ``(B,)`` float32 is the factor the
    images were multiplied by: the experiment's X_full factor (``DataConfig.normalize='Batch'``) or
    the group's own (``'Group'``; see specs/data_contracts.md). An int index gives the same without
    the batch dimension.

    Configure with the torch configs (``data_config``, ``model_config``, ``training_config``;
    ``inference_config`` and ``datagen_config`` are accepted and unused, as Ptychodus passes all
    five) or with ``config=`` a ``ptycho`` TrainingConfig/InferenceConfig; ``overrides`` set
    ``ptycho`` config fields such as ``n_groups`` or ``nphotons``. ``params.cfg`` is updated once,
    here. ``remake_map=True`` rebuilds the memory map and regroups.
    """

    def __init__(
        self,
        ptycho_dir_or_npz,
        data_config=None,
        model_config=None,
        training_config=None,
        inference_config=None,
        datagen_config=None,
        *,
        config: PtychoConfig | None = None,
        overrides: dict | None = None,
        data_dir="data/memmap",
        remake_map: bool = False,
        diffraction_units: str = "auto",
        ground_truth: bool = False,
        progress: bool = True,
    ):
        require_torch("PtychoDataset")
        _require_tensordict()
        self.files = scan_files(ptycho_dir_or_npz)
        self.data_dir = Path(data_dir)
        self.config = to_ptycho_config(self.files[0], data_config, model_config, training_config, config=config, overrides=overrides)
        update_legacy_dict(params.cfg, self.config)
        key = grouping_key(self.config)
        self.experiments: list[Experiment] = rank_zero_first(
            lambda build: [
                prepare_experiment(
                    path,
                    self.data_dir,
                    key,
                    diffraction_units=diffraction_units,
                    remake=remake_map and build,
                    build=build,
                    progress=progress,
                )
                for path in tqdm(self.files, desc="preparing scans", unit="file", disable=not progress or len(self.files) < 2)
            ]
        )
        self.N, self.C = key.N, key.settings.C
        self.ground_truth = ground_truth
        self._index = _GroupIndex(self.experiments)
        self.probes = torch.from_numpy(np.stack([_probe_of(e, self.N) for e in self.experiments]))
        self.scales = torch.tensor([e.grouping.norm for e in self.experiments], dtype=torch.float32)
        self.settings: PipelineSettings = PipelineSettings() if config is not None else pipeline_settings(data_config, model_config)
        self._group_scales = _group_scales(self.experiments, self.N) if self.settings.per_group(self.C) else None
        logger.info("PtychoDataset: %d groups of %d from %d file(s) in %s", len(self), self.C, len(self.files), self.data_dir)

    def __len__(self) -> int:
        return self._index.size

    @property
    def regrouped(self) -> bool:
        """Whether any experiment had to be grouped (no usable cache) during construction."""
        return any(e.regrouped for e in self.experiments)

    @property
    def cache_paths(self) -> list[Path]:
        return [e.cache_path for e in self.experiments]

    def __getitem__(self, indices):
        idx, single = _index_array(indices, len(self))
        parts = self._by_experiment(self._index.experiment_of[idx])
        items = {
            "images": self._images(idx, parts),
            **self._index.gather(idx),
        }
        if self.ground_truth:
            truth = self._ground_truth(idx, parts)
            if truth is not None:
                items["Y"] = truth
        batch = TensorDict(items, batch_size=[len(idx)])
        probe, scale = self._probe_and_scale(idx, parts)
        if single:
            return batch[0], probe[0], scale[0]
        return batch, probe, scale

    def _by_experiment(self, experiment_id: np.ndarray) -> list[tuple[int, slice | np.ndarray]]:
        """``(experiment, rows of the batch)`` pairs; a single pair without a mask for a one-experiment batch."""
        if experiment_id.size == 0:
            return []
        first = int(experiment_id[0])
        if len(self.experiments) == 1 or (experiment_id == first).all():
            return [(first, slice(None))]
        return [(int(e), experiment_id == e) for e in np.unique(experiment_id)]

    def _images(self, idx: np.ndarray, parts):
        """Gather each group's patterns from the memory map straight into the batch, then scale in place."""
        images = np.empty((len(idx), self.C, self.N, self.N), dtype=np.float32)
        for e, rows in parts:
            experiment = self.experiments[e]
            members = experiment.grouping.nn_indices[self._index.local[idx[rows]]].ravel()
            target = images if isinstance(rows, slice) else np.empty((int(rows.sum()), self.C, self.N, self.N), np.float32)
            # indices were range-checked when the cache was loaded; "clip" avoids a copy of `out`
            np.take(experiment.store.diffraction, members, axis=0, out=target.reshape(-1, self.N, self.N), mode="clip")
            if self._group_scales is None:
                torch.from_numpy(target).mul_(float(np.float32(experiment.grouping.norm)))  # threaded
            else:
                torch.from_numpy(target).mul_(torch.from_numpy(self._group_scales[idx[rows]]).view(-1, 1, 1, 1))
            if target is not images:
                images[rows] = target
        return torch.from_numpy(images)

    def _probe_and_scale(self, idx: np.ndarray, parts):
        if self._group_scales is not None:
            ids = torch.from_numpy(self._index.experiment_of[idx])
            return self.probes[ids].unsqueeze(1).expand(-1, self.C, -1, -1), torch.from_numpy(self._group_scales[idx])
        if len(parts) == 1:  # one experiment: broadcast views, no per-item copies
            e = parts[0][0]
            return self.probes[e].expand(len(idx), self.C, self.N, self.N), self.scales[e].expand(len(idx))
        ids = torch.from_numpy(self._index.experiment_of[idx])
        return self.probes[ids].unsqueeze(1).expand(-1, self.C, -1, -1), self.scales[ids]

    def _ground_truth(self, idx: np.ndarray, parts):
        truth = np.zeros((len(idx), self.C, self.N, self.N), dtype=np.complex64)
        for e, rows in parts:
            experiment = self.experiments[e]
            local = self._index.local[idx[rows]]
            if experiment.store.ground_truth is not None:
                members = experiment.grouping.nn_indices[local]
                truth[rows] = experiment.store.ground_truth[members.ravel()].reshape(-1, self.C, self.N, self.N)
            elif experiment.object_guess.present:
                g = experiment.grouping
                position = g.coords_offsets[local] + g.coords_relative[local]
                patches = extract_patches(experiment.object_guess.get(), position[:, 0, 0].ravel(), position[:, 0, 1].ravel(), self.N)
                truth[rows] = patches.reshape(-1, self.C, self.N, self.N)
            else:
                return None
        return torch.from_numpy(truth)


class _GroupIndex:
    """Global group index -> experiment and local group, plus the per-group arrays, channels first.

    The per-group arrays are packed into one float64 and one int64 table, so a batch costs two
    gathers; :meth:`gather` hands out views of them by name.
    """

    def __init__(self, experiments: list[Experiment]):
        counts = [e.n_groups for e in experiments]
        self.size = int(sum(counts))
        self.experiment_of = np.repeat(np.arange(len(experiments)), counts)
        self.local = np.concatenate([np.arange(c) for c in counts])
        groupings = [e.grouping for e in experiments]
        coords = {
            "coords_relative": np.concatenate([g.coords_relative.transpose(0, 3, 1, 2) for g in groupings]),
            "coords_center": np.concatenate([g.coords_offsets.transpose(0, 1, 3, 2) for g in groupings]),
            "coords_start_relative": np.concatenate([g.coords_start_relative.transpose(0, 3, 1, 2) for g in groupings]),
            "coords_start_center": np.concatenate([g.coords_start_offsets.transpose(0, 1, 3, 2) for g in groupings]),
        }
        self._coord_fields, column = [], 0
        for name, values in coords.items():
            width = int(np.prod(values.shape[1:]))
            self._coord_fields.append((name, slice(column, column + width), values.shape[1:]))
            column += width
        self._floats = np.concatenate([values.reshape(self.size, -1) for values in coords.values()], axis=1)
        nn_indices = np.concatenate([g.nn_indices for g in groupings]).astype(np.int64)
        self._C = nn_indices.shape[1]
        self._ints = np.concatenate([nn_indices, self.experiment_of[:, None]], axis=1).astype(np.int64)

    def gather(self, idx: np.ndarray) -> dict:
        floats = torch.from_numpy(self._floats.take(idx, axis=0))
        ints = torch.from_numpy(self._ints.take(idx, axis=0))
        items = {name: floats[:, columns].reshape(len(idx), *shape) for name, columns, shape in self._coord_fields}
        items["nn_indices"] = ints[:, : self._C]
        items["experiment_id"] = ints[:, self._C]
        return items


def _index_array(indices, length: int) -> tuple[np.ndarray, bool]:
    if isinstance(indices, np.ndarray) and indices.ndim == 1 and indices.dtype.kind in "iu" and indices.size:
        if indices.min() >= 0 and indices.max() < length:  # the DataLoader's case: no conversion needed
            return indices.astype(np.int64, copy=False), False
    if torch is not None and isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    single = np.ndim(indices) == 0
    idx = np.atleast_1d(np.asarray(indices))
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64), single
    if idx.dtype.kind not in "iu":
        raise TypeError(f"dataset indices must be integers, got {idx.dtype}")
    idx = idx.astype(np.int64)
    bad = (idx < -length) | (idx >= length)
    if bad.any():
        raise IndexError(f"index {idx[bad][0]} is out of range for a dataset of {length} groups")
    return np.where(idx < 0, idx + length, idx), single


def _group_scales(experiments: list[Experiment], N: int) -> np.ndarray:
    """``normalize='Group'``: each group's own Parseval factor ``sqrt((N/2)**2 / mean over its C patterns of sum(d**2))``."""
    scales = []
    for experiment in experiments:
        energy = experiment.store.energy[experiment.grouping.nn_indices].mean(axis=1)
        empty = np.flatnonzero(energy <= 0)
        if empty.size:
            group = int(empty[0])
            raise ValueError(
                f"{experiment.scan.path}: group {group} (patterns {experiment.grouping.nn_indices[group].tolist()}) holds only "
                "zero patterns, so normalize='Group' cannot scale it; use normalize='Batch' or remove the empty patterns"
            )
        scales.append(np.sqrt((N / 2) ** 2 / energy).astype(np.float32))
    return np.concatenate(scales)


def _probe_of(experiment: Experiment, N: int) -> np.ndarray:
    probe = probe_mode0(experiment.scan.probeGuess)
    if probe.shape != (N, N):
        raise ValueError(f"{experiment.scan.path}: probeGuess is {probe.shape[0]} x {probe.shape[1]} but N={N}; the probe must match the patterns")
    return probe


def _require_tensordict() -> None:
    if TensorDict is None:
        raise ImportError(f"PtychoDataset needs tensordict, which is not installed; {INSTALL_HINT}")
