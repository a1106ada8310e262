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
from ptycho.patches import extract_patches
from ptycho.scan_file import ScanFile, ScanFileError, scan_files
from ptycho.validation import REAL_GROUND_TRUTH_FIX
from ptycho_torch.config_resolve import PtychoConfig, resolve_call_slots, to_ptycho_config
from ptycho_torch.data_settings import PipelineSettings, grouping_key, pipeline_settings
from ptycho_torch.distributed import rank_zero_first
from ptycho_torch.experiment import Experiment, prepare_experiment
from ptycho_torch.torch_support import INSTALL_HINT, require_torch

try:
    import torch
    from torch.utils.data import Dataset
except ImportError:  # the module imports without torch; the dataset itself needs it
    torch = None
    Dataset = object
try:  # located, not imported: importing tensordict pulls in torch's compiler stack (seconds), which inference never needs
    from importlib.util import find_spec

    _HAVE_TENSORDICT = find_spec("tensordict") is not None
except (ImportError, ValueError):
    _HAVE_TENSORDICT = False

logger = logging.getLogger(__name__)

__all__ = ["PtychoDataset", "Y_CONVENTIONS"]

Y_CONVENTIONS = ("physical", "baseline")


class PtychoDataset(Dataset):
    """Groups of ``C`` diffraction patterns over memory-mapped diffraction, batched by index lists.

    ``dataset[indices]`` (an int, or a 1-D list, array or tensor of group indices) returns
    ``(batch, probe, scale)`` laid out as PtychoPINN's ``ptycho_torch.dataloader.PtychoDataset``
    (specs/data_contracts.md section 6); an int gives the same without the batch dimension ``B``:

    - ``batch["images"]``: ``(B, C, N, N)`` float32, normalised amplitudes (``X_full``: the
      amplitudes times ``scale``; ``DataConfig.normalize='Batch'``: the experiment's factor,
      ``'Group'``: the group's own, specs/data_contracts.md section 7).
    - ``batch["coords_global"]``, ``["coords_relative"]``, ``["coords_start_relative"]``:
      ``(B, C, 1, 2)`` float32, ``[x, y]`` in object pixels (``coords_relative`` is
      ``-(member - centre)``, the TensorFlow sign); ``["coords_center"]``, ``["coords_start_center"]``:
      ``(B, 1, 1, 2)`` float32 pixels.
    - ``batch["nn_indices"]``: ``(B, C)`` int64 pattern indices in the scan file;
      ``batch["experiment_id"]``: ``(B,)`` int32 index into ``files``.
    - ``batch["rms_scaling_constant"]``: ``(B, 1, 1, 1)`` float32, equal to ``scale``;
      ``batch["physics_scaling_constant"]``: ``(B, 1, 1, 1)`` float32, ``1 / mean sum(d**2)`` of the scan.
    - ``batch["Y"]`` with ``ground_truth=True``: ``(B, C, N, N)`` complex64 object patches.
    - ``probe``: ``(B, C, P, N, N)`` complex64, the experiment's ``P`` probe modes as stored (a read-only
      broadcast view of a per-batch copy; ``tensordict_loader.compact_to`` moves it without copies).
    - ``scale``: ``(B, 1, 1, 1)`` float32, the dimensionless factor the amplitudes were multiplied by.

    Args:
        ptycho_dir: one scan NPZ or a directory of them (every ``*.npz``, in name order, one
            experiment each; reconstructions written by ``ptycho-reconstruct`` are skipped).
        *configs: PtychoPINN's order ``(model_config, data_config, training_config, data_dir,
            remake_map)`` or this project's ``(data_config, model_config, training_config,
            inference_config, datagen_config)``; configs are told apart by type.
        data_config, model_config, training_config: the torch configs.
            ``TrainingConfig.n_groups`` is the number of groups per scan file (None: 512).
        config: a ``ptycho`` TrainingConfig/InferenceConfig instead of the torch configs.
        overrides: ``ptycho`` config fields to set, e.g. ``{"n_groups": 1000, "enable_oversampling": True}``.
        data_dir: directory of the memory maps and groups caches (default ``data/memmap``).
        remake_map: rebuild the memory map and regroup even if valid.
        diffraction_units: ``"auto"`` (integer dtypes are photon counts, square-rooted; floats
            amplitudes), ``"amplitude"`` or ``"counts"``.
        layout: ``"auto"``, ``"nNN"`` or legacy ``"NNn"``, for an ambiguous ``(N, N, N)`` stack.
        ground_truth: add ``Y``; every scan file must hold a complex ``objectGuess`` or ``Y``.
        y_convention: where ``Y[:, c]`` is cut from ``objectGuess``: ``"physical"`` (default) under
            ``images[:, c]``, at that pattern's scan position; ``"baseline"`` at ``coords_center +
            coords_relative``, PtychoPINN's position, which for gridsize > 1 is the member's position
            reflected through the group centre (specs/data_contracts.md, "Coordinate conventions").
            A stored ``Y`` is per pattern and the same in both.
        progress: progress bars while building.
        lock_timeout: seconds to wait for another process building the same scan, then
            ``LockTimeoutError`` (None: no limit; a warning names that process meanwhile).

    ``params.cfg`` is updated once, here (CONFIG-001). Refused, with an error naming the file, key,
    field or index and the fix: a config in the wrong slot or given twice (TypeError); ``DataConfig``
    fields the pipeline cannot honour (``C`` not ``grid_size[0] * grid_size[1]``, a non-square grid,
    ``neighbor_function`` other than ``'Nearest'``, ``data_scaling='Max'``, ...); ``N`` other than the
    pattern size; more groups than scan points without oversampling; a malformed or pickled scan file;
    a probe not of the pattern size, all zero or not finite; ``ground_truth=True`` with a file that has
    neither object nor ``Y``; an unknown ``y_convention``; indices that are not integers, out of range
    or not 1-D. Needs torch and tensordict (ImportError naming the install otherwise).
    """

    def __init__(
        self,
        ptycho_dir=None,
        *configs,
        data_config=None,
        model_config=None,
        training_config=None,
        inference_config=None,
        datagen_config=None,
        data_dir=None,
        remake_map: bool | None = None,
        config: PtychoConfig | None = None,
        overrides: dict | None = None,
        diffraction_units: str = "auto",
        layout: str = "auto",
        ground_truth: bool = False,
        y_convention: str = "physical",
        progress: bool = True,
        lock_timeout: float | None = None,
        ptycho_dir_or_npz=None,
    ):
        require_torch("PtychoDataset")
        _require_tensordict()
        if y_convention not in Y_CONVENTIONS:
            raise ValueError(f"y_convention must be one of {Y_CONVENTIONS}, got {y_convention!r}; "
                             "'physical': Y[:, c] is the object under images[:, c]; 'baseline': PtychoPINN's patches")
        slots = resolve_call_slots(
            configs,
            dict(
                data_config=data_config,
                model_config=model_config,
                training_config=training_config,
                inference_config=inference_config,
                datagen_config=datagen_config,
                data_dir=data_dir,
                remake_map=remake_map,
            ),
        )
        path = _one_path(ptycho_dir, ptycho_dir_or_npz)
        self.files = [path.absolute() for path in scan_files(path)]  # survive a later os.chdir
        if ground_truth:
            _require_ground_truth_in_every_file(self.files)
        self.data_dir = Path("data/memmap" if slots["data_dir"] is None else slots["data_dir"]).absolute()
        self.data_config, self.model_config, self.training_config = slots["data_config"], slots["model_config"], slots["training_config"]
        self.config = to_ptycho_config(
            self.files[0], slots["data_config"], slots["model_config"], slots["training_config"], config=config, overrides=overrides
        )
        update_legacy_dict(params.cfg, self.config)
        key = grouping_key(self.config)
        remake = bool(slots["remake_map"])
        self.experiments: list[Experiment] = rank_zero_first(
            lambda build: [
                prepare_experiment(
                    path,
                    self.data_dir,
                    key,
                    diffraction_units=diffraction_units,
                    layout=layout,
                    remake=remake and build,
                    build=build,
                    progress=progress,
                    lock_timeout=lock_timeout,
                )
                for path in tqdm(self.files, desc="preparing scans", unit="file", disable=not progress or len(self.files) < 2)
            ]
        )
        self.N, self.C = key.N, key.settings.C
        self.diffraction_units, self.layout, self.lock_timeout = diffraction_units, layout, lock_timeout
        self.ground_truth = ground_truth
        self.y_convention = y_convention
        self._index = _GroupIndex(self.experiments)
        self.probes = torch.from_numpy(_probe_stack([_probe_modes(e, self.N) for e in self.experiments]))
        self.scales = torch.tensor([e.grouping.norm for e in self.experiments], dtype=torch.float32)
        self.physics_scales = torch.tensor([_physics_scale(e) for e in self.experiments], dtype=torch.float32)
        self.settings: PipelineSettings = (
            PipelineSettings() if config is not None else pipeline_settings(self.data_config, self.model_config)
        )
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
        """The ``.groups_cache.npz`` of each experiment, in ``files`` order."""
        return [e.cache_path for e in self.experiments]

    def split(self, val_fraction: float = 0.05, seed: int = 42):
        """``(train, validation)`` subsets with disjoint groups, drawn as PtychoPINN does (5 %, seed 42).

        ``torch.utils.data.random_split`` with a generator seeded by ``seed``: the same split for the
        same dataset length and seed, whatever the global RNG state. Refuses (ValueError) a
        ``val_fraction`` outside ``(0, 1)`` or one that leaves either subset empty.
        """
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        from torch.utils.data import random_split

        train, validation = random_split(self, [1 - val_fraction, val_fraction], generator=torch.Generator().manual_seed(int(seed)))
        if len(validation) == 0 or len(train) == 0:
            raise ValueError(f"val_fraction={val_fraction} of {len(self)} groups leaves an empty split; use more groups or another fraction")
        return train, validation

    def __getitem__(self, indices):
        from tensordict import TensorDict

        items, probe, scale, single = self._gather(indices)
        batch = TensorDict(items, batch_size=[len(probe)])
        if single:
            return batch[0], probe[0], scale[0]
        return batch, probe, scale

    def gather(self, indices) -> tuple[dict, "torch.Tensor", "torch.Tensor"]:
        """``(items, probe, scale)`` of a batch of groups: ``__getitem__``'s batch as a plain dict of tensors (no TensorDict)."""
        items, probe, scale, _ = self._gather(np.atleast_1d(np.asarray(indices)))
        return items, probe, scale

    def _gather(self, indices):
        idx, single = _index_array(indices, len(self))
        parts = self._by_experiment(self._index.experiment_of[idx])
        scale, physics = self._scale(idx, parts), self._per_item(self.physics_scales, idx, parts)
        items = {
            "images": self._images(idx, parts),
            **self._index.gather(idx),
            "rms_scaling_constant": scale,
            "physics_scaling_constant": physics,
        }
        if self.ground_truth:
            items["Y"] = self._ground_truth(idx, parts)
        return items, self._probe(idx, parts), scale.clone(), single

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

    def _scale(self, idx: np.ndarray, parts):
        """``(B, 1, 1, 1)``: the factor each item's images were multiplied by (its group's or its experiment's)."""
        if self._group_scales is not None:
            return torch.from_numpy(self._group_scales[idx]).view(-1, 1, 1, 1)
        return self._per_item(self.scales, idx, parts)

    def _per_item(self, values, idx: np.ndarray, parts):
        """A real ``(B, 1, 1, 1)`` tensor of each item's experiment value."""
        if len(parts) == 1:
            return values[parts[0][0]].repeat(len(idx)).view(-1, 1, 1, 1)
        return values[torch.from_numpy(self._index.experiment_of[idx])].view(-1, 1, 1, 1)

    def _probe(self, idx: np.ndarray, parts):
        """``(B, C, P, N, N)``: a broadcast view of a copy made for this batch, never of ``self.probes``.

        One experiment: one ``(P, N, N)`` copy broadcast over batch and channels (writing to the
        view raises; ``Tensor.to`` would materialise it, ``tensordict_loader.compact_to`` does not).
        """
        size = (len(idx), self.C) + tuple(self.probes.shape[1:])
        if len(parts) == 1:
            return self.probes[parts[0][0]].clone().expand(size)
        ids = torch.from_numpy(self._index.experiment_of[idx])
        return self.probes[ids].unsqueeze(1).expand(size)

    def _ground_truth(self, idx: np.ndarray, parts):
        truth = np.zeros((len(idx), self.C, self.N, self.N), dtype=np.complex64)
        for e, rows in parts:
            experiment = self.experiments[e]
            local = self._index.local[idx[rows]]
            if experiment.store.ground_truth is not None:
                members = experiment.grouping.nn_indices[local]
                truth[rows] = experiment.store.ground_truth[members.ravel()].reshape(-1, self.C, self.N, self.N)
            else:  # every file has an object or Y (checked at construction)
                position = self._patch_positions(experiment.grouping, local)
                patches = extract_patches(experiment.object_guess.get(), position[:, 0, 0].ravel(), position[:, 0, 1].ravel(), self.N)
                truth[rows] = patches.reshape(-1, self.C, self.N, self.N)
        return torch.from_numpy(truth)

    def _patch_positions(self, g, local: np.ndarray) -> np.ndarray:
        """``(B, 1, 2, C)`` object positions of each channel's patch under the chosen ``y_convention``."""
        if self.y_convention == "baseline":
            return g.coords_offsets[local] + g.coords_relative[local]
        return g.coords_nn[local]


class _GroupIndex:
    """Global group index -> experiment and local group, plus the per-group arrays, channels first.

    The per-group arrays are packed into one float32 and one int64 table, so a batch costs two
    gathers; :meth:`gather` hands out views of them by name.
    """

    def __init__(self, experiments: list[Experiment]):
        counts = [e.n_groups for e in experiments]
        self.size = int(sum(counts))
        self.experiment_of = np.repeat(np.arange(len(experiments)), counts)
        self.local = np.concatenate([np.arange(c) for c in counts])
        groupings = [e.grouping for e in experiments]
        coords = {
            "coords_global": np.concatenate([g.coords_nn.transpose(0, 3, 1, 2) for g in groupings]),
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
        self._floats = np.concatenate([values.reshape(self.size, -1) for values in coords.values()], axis=1).astype(np.float32)
        nn_indices = np.concatenate([g.nn_indices for g in groupings]).astype(np.int64)
        self._C = nn_indices.shape[1]
        self._ints = np.concatenate([nn_indices, self.experiment_of[:, None]], axis=1).astype(np.int64)

    def gather(self, idx: np.ndarray) -> dict:
        floats = torch.from_numpy(self._floats.take(idx, axis=0))
        ints = torch.from_numpy(self._ints.take(idx, axis=0))
        items = {name: floats[:, columns].reshape(len(idx), *shape) for name, columns, shape in self._coord_fields}
        items["nn_indices"] = ints[:, : self._C]
        items["experiment_id"] = ints[:, self._C].to(torch.int32)
        return items


def _index_array(indices, length: int) -> tuple[np.ndarray, bool]:
    if isinstance(indices, np.ndarray) and indices.ndim == 1 and indices.dtype.kind in "iu" and indices.size:
        if indices.min() >= 0 and indices.max() < length:  # the DataLoader's case: no conversion needed
            return indices.astype(np.int64, copy=False), False
    if torch is not None and isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    single = np.ndim(indices) == 0
    if np.ndim(indices) > 1:
        raise IndexError(
            f"dataset indices must be an int or a 1-D sequence of group indices, got shape {np.shape(indices)}; "
            "pass indices.ravel() (or index one row at a time) for a batch of those groups"
        )
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


def _require_ground_truth_in_every_file(files: list[Path]) -> None:
    """``ground_truth=True`` is all or nothing: a batch never lacks ``Y`` because one scan has no object."""
    missing = []
    for path in files:
        with ScanFile(path) as scan_file:
            if "objectGuess" not in scan_file.headers and "Y" not in scan_file.headers:
                missing.append(path)
            elif "Y" not in scan_file.headers and scan_file.headers["objectGuess"].dtype.kind != "c":
                # the dtype is in the header: refuse now, not at the first batch after the build
                raise ScanFileError(
                    f"{path} key 'objectGuess' has real dtype {scan_file.headers['objectGuess'].dtype}; {REAL_GROUND_TRUTH_FIX}"
                )
    if missing:
        shown = ", ".join(str(p) for p in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(
            f"ground_truth=True needs an object ('objectGuess') or ground-truth patches ('Y') in every scan file, "
            f"but {len(missing)} of {len(files)} have neither: {shown}; add the object to those files, "
            "move them out of the directory, or pass ground_truth=False"
        )


def _probe_modes(experiment: Experiment, N: int) -> np.ndarray:
    """The experiment's probe as a ``(P, N, N)`` complex64 mode stack (one mode for a 2-D probe)."""
    probe = np.asarray(experiment.scan.probeGuess)
    modes = probe[None] if probe.ndim == 2 else probe
    if modes.ndim != 3 or modes.shape[1:] != (N, N):
        raise ValueError(
            f"{experiment.scan.path}: probeGuess has shape {probe.shape} but the patterns are {N} x {N}; "
            "the probe must be (N, N) or (modes, N, N) of the pattern size"
        )
    return modes.astype(np.complex64)


def _probe_stack(probes: list[np.ndarray]) -> np.ndarray:
    """``(experiments, P, N, N)``: every experiment's modes, zero-padded to the largest mode count (as PtychoPINN)."""
    stack = np.zeros((len(probes), max(len(p) for p in probes)) + probes[0].shape[1:], dtype=np.complex64)
    for i, modes in enumerate(probes):
        stack[i, : len(modes)] = modes
    return stack


def _physics_scale(experiment: Experiment) -> float:
    """PtychoPINN's ``physics_scaling_constant``: ``1 / mean over the scan's patterns of sum(diffraction ** 2)``."""
    mean_energy = float(np.mean(experiment.store.energy))
    return 1.0 / mean_energy if mean_energy > 0 else 0.0


def _one_path(ptycho_dir, ptycho_dir_or_npz):
    if ptycho_dir is not None and ptycho_dir_or_npz is not None:
        raise TypeError("pass the scan path once (ptycho_dir= or ptycho_dir_or_npz=)")
    path = ptycho_dir if ptycho_dir is not None else ptycho_dir_or_npz
    if path is None:
        raise TypeError("PtychoDataset needs ptycho_dir: one scan NPZ or a directory of them")
    return path


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



def _require_tensordict() -> None:
    if not _HAVE_TENSORDICT:
        raise ImportError(f"PtychoDataset needs tensordict, which is not installed; {INSTALL_HINT}")
