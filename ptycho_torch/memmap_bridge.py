"""MemmapDatasetBridge: one scan NPZ served from its memory map and groups cache, grouped by RawDataTorch."""

from __future__ import annotations

import logging
from pathlib import Path

from ptycho import params
from ptycho.config.config import update_legacy_dict
from ptycho.grouping import GroupingSettings
from ptycho.raw_data import grouped_data_from
from ptycho_torch.config_resolve import PtychoConfig, to_ptycho_config
from ptycho_torch.data_settings import grouping_key
from ptycho_torch.distributed import rank_zero_first
from ptycho_torch.experiment import Experiment, prepare_experiment
from ptycho_torch.store.groups_cache import GroupingKey

logger = logging.getLogger(__name__)


class MemmapDatasetBridge:
    """The grouped-data dict of ``RawDataTorch.generate_grouped_data``, from disk instead of memory.

    ``config`` is a ``ptycho`` TrainingConfig/InferenceConfig or a ``(DataConfig, ModelConfig,
    TrainingConfig)`` tuple of torch configs (bridged through ``config_bridge``); it is applied to
    ``params.cfg`` once, here. The diffraction is copied once into ``memmap_dir`` and groups are
    cached there per setting; later bridges on the same file reuse both. ``layout`` ("auto", "nNN" or
    legacy "NNn") settles an ambiguous ``(N, N, N)`` diffraction cube. ``lock_timeout`` (seconds,
    default no limit) bounds the wait for another process building the same scan. Works without torch.
    """

    def __init__(
        self, npz_path, config, memmap_dir="data/memmap", *, overrides=None, diffraction_units="auto", layout="auto",
        remake_map=False, progress=True, lock_timeout: float | None = None,
    ):
        self.npz_path = Path(npz_path).absolute()
        self.memmap_dir = Path(memmap_dir).absolute()
        self.lock_timeout = lock_timeout
        self.diffraction_units = diffraction_units
        self.layout = layout
        self.progress = progress
        self.config: PtychoConfig = _ptycho_config(self.npz_path, config, overrides)
        update_legacy_dict(params.cfg, self.config)
        self.experiment = self._prepare(grouping_key(self.config), remake_map)

    @property
    def probe(self):
        """The probe as stored (a mode stack stays a stack)."""
        return self.experiment.scan.probeGuess

    @property
    def diffraction(self):
        """The ``(n, N, N)`` float32 amplitude memory map."""
        return self.experiment.store.diffraction

    @property
    def cache_path(self) -> Path:
        return self.experiment.cache_path

    def get_grouped_data(
        self, N: int, K: int = 4, nsamples: int = 1, dataset_path=None, seed: int | None = None,
        sequential_sampling: bool = False, gridsize: int | None = None, enable_oversampling: bool = False,
        neighbor_pool_size: int | None = None,
    ) -> dict:
        """Same arguments and result as ``RawDataTorch.generate_grouped_data``; groups come from the cache."""
        settings = GroupingSettings.from_keywords(
            K=K, nsamples=nsamples, seed=seed, sequential_sampling=sequential_sampling, gridsize=gridsize,
            enable_oversampling=enable_oversampling, neighbor_pool_size=neighbor_pool_size,
        )
        key = GroupingKey(N=int(N), settings=settings)
        return _grouped_data(self.experiment if key == self.experiment.key else self._prepare(key, remake=False))

    def grouped_data(self) -> dict:
        """The grouped-data dict for the grouping the config asks for."""
        return _grouped_data(self.experiment)

    def _prepare(self, key: GroupingKey, remake: bool) -> Experiment:
        return rank_zero_first(
            lambda build: prepare_experiment(
                self.npz_path,
                self.memmap_dir,
                key,
                diffraction_units=self.diffraction_units,
                layout=self.layout,
                remake=remake and build,
                build=build,
                progress=self.progress,
                lock_timeout=self.lock_timeout,
            )
        )


def _grouped_data(e: Experiment) -> dict:
    return grouped_data_from(e.grouping, e.store.diffraction, objectGuess=e.object_guess.get(), Y=e.store.ground_truth)


def _ptycho_config(npz_path: Path, config, overrides) -> PtychoConfig:
    if isinstance(config, tuple):
        if config and getattr(config[0], "normalize", "Batch") == "Group":
            raise ValueError(
                "DataConfig.normalize='Group' has no effect on MemmapDatasetBridge: its grouped data is PtychoPINN's "
                "X_full, normalised per scan; use PtychoDataset for per-group scaling, or normalize='Batch'"
            )
        return to_ptycho_config(npz_path, *config, overrides=overrides)
    return to_ptycho_config(npz_path, config=config, overrides=overrides)
