"""Lightning training on PtychoDataset: a data module with a seeded validation split, and the Trainer set-up."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import BatchSampler, DistributedSampler

from ptycho_torch.config_params import DataConfig, ModelConfig, TrainingConfig
from ptycho_torch.dataloader import TensorDictDataLoader
from ptycho_torch.dset_loader_pt_mmap import PtychoDataset
from ptycho_torch.config_file import as_config
from ptycho_torch.config_resolve import check_strategy
from ptycho_torch.run_dirs import mark_finished, mark_incomplete
from ptycho_torch.store.atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["BEST_CHECKPOINT", "LAST_CHECKPOINT", "NonFiniteLossError", "PtychoDataModule", "StopOnNonFiniteLoss", "build_trainer",
           "needs_ground_truth", "split_by_region"]

BEST_CHECKPOINT = "best-checkpoint.ckpt"
LAST_CHECKPOINT = "last.ckpt"
VAL_MONITOR = "val_loss"  # logged by PtychoPINN_Lightning beside its val_loss_name


def needs_ground_truth(model_config) -> bool:
    """Whether training reads ground-truth patches ``Y``: Supervised mode, or a positive ``truth_loss_weight``."""
    return model_config.mode == "Supervised" or float(getattr(model_config, "truth_loss_weight", 0) or 0) > 0


def split_by_region(dataset, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` group indices of a PtychoDataset that share no scan point, from every experiment.

    In each experiment, the ``max(1, round(val_fraction * groups))`` groups lying furthest towards
    one edge of the scan (an axis and an end drawn from ``seed``; a group's position is that of its
    innermost member) validate; the strip they span is then withheld from training: a training
    group has no member in it. Groups reaching into the strip from outside serve neither purpose.
    Validation therefore scores parts of the object the network was not trained on.
    """
    rng = np.random.default_rng(seed)
    axis, towards_high = int(rng.integers(2)), bool(rng.integers(2))
    train, val = [], []
    first = 0
    for experiment in dataset.experiments:
        members = experiment.grouping.nn_indices
        coordinate = np.asarray(experiment.scan.xcoords if axis == 0 else experiment.scan.ycoords, dtype=np.float64)
        if not towards_high:
            coordinate = -coordinate
        innermost = coordinate[members].min(axis=1)
        n_val = min(len(innermost) - 1, max(1, round(val_fraction * len(innermost))))
        if n_val < 1:
            raise ValueError(f"{experiment.scan.path} has {len(innermost)} group(s); training with a validation split needs at least 2 (ask for more groups)")
        order = np.argsort(-innermost, kind="stable")
        threshold = innermost[order[n_val - 1]]
        in_strip = coordinate[members] >= threshold
        val.append(first + np.sort(order[:n_val]))
        train.append(first + np.flatnonzero(~in_strip.any(axis=1)))
        first += len(innermost)
    train_indices, val_indices = np.concatenate(train), np.concatenate(val)
    if len(train_indices) == 0:
        paths = ", ".join(str(experiment.scan.path) for experiment in dataset.experiments)
        raise ValueError(f"{paths}: no training group is left outside the validation strip of {len(dataset)} groups (every group shares a "
                         f"scan point with the {len(val_indices)} validation group(s) at one edge of the scan): train on a scan of more "
                         "points (a few dozen at least), or give PtychoDataModule a smaller val_fraction from Python")
    return train_indices, val_indices


class _Subset:
    """The groups ``indices`` of a PtychoDataset, still indexable by whole index batches."""

    def __init__(self, dataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx):
        return self.dataset[self.indices[np.asarray(idx)]]


class _EpochBatches(BatchSampler):
    """A BatchSampler that forwards ``set_epoch`` (Lightning calls it) to its DistributedSampler."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class PtychoDataModule(L.LightningDataModule):
    """Training and validation batches of a PtychoDataset (or of a scan path, built on ``setup``).

    Validation groups come from a strip at one edge of each scan and training groups never use its
    scan points (:func:`split_by_region`: ``val_fraction`` 5 %, ``val_seed`` 42; at least one
    validation group). ``num_workers``, ``pin_memory`` and ``batch_size`` come from the
    TrainingConfig; ``num_workers`` is capped at the cores this machine has to spare (:func:`loader_workers`) and at
    ``max_loader_workers`` when given (``ptycho-train --threads``); under DDP each process reads its own shard through a DistributedSampler.
    ``lock_timeout`` (seconds, None: no limit) bounds the wait for another process building the same cache.
    """

    def __init__(self, data, data_config=None, model_config=None, training_config=None, *, data_dir="data/memmap",
                 val_fraction: float = 0.05, val_seed: int = 42, pin_memory: bool | None = None, progress: bool = True,
                 lock_timeout: float | None = None, max_loader_workers: int | None = None):
        super().__init__()
        self.data_config = as_config(data_config, DataConfig)
        self.model_config = as_config(model_config, ModelConfig)
        self.training_config = as_config(training_config, TrainingConfig)
        self.dataset = data if isinstance(data, PtychoDataset) else None
        self.source = None if self.dataset is not None else Path(data)
        self.data_dir, self.val_fraction, self.val_seed, self.progress = Path(data_dir), val_fraction, val_seed, progress
        self.lock_timeout = lock_timeout
        self.max_loader_workers = max_loader_workers
        self._workers_logged = None  # (allowed, started) last logged: both loaders of a fit say it once
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_indices = self.val_indices = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = PtychoDataset(self.source, self.data_config, self.model_config, self.training_config,
                                         data_dir=self.data_dir, ground_truth=needs_ground_truth(self.model_config), progress=self.progress,
                                         lock_timeout=self.lock_timeout)
        if self.train_indices is None:
            self.train_indices, self.val_indices = split_by_region(self.dataset, self.val_fraction, self.val_seed)
            unused = len(self.dataset) - len(self.train_indices) - len(self.val_indices)
            logger.info("%d training and %d validation groups (%d on the strip's edge unused)", len(self.train_indices), len(self.val_indices), unused)

    def train_dataloader(self):
        return self._loader(self.train_indices, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_indices, shuffle=False)

    def _loader(self, indices: np.ndarray, shuffle: bool) -> TensorDictDataLoader:
        subset = _Subset(self.dataset, indices)
        tc = self.training_config
        trainer = getattr(self, "trainer", None)
        allowed = int(tc.num_workers) if self.max_loader_workers is None else min(int(tc.num_workers), int(self.max_loader_workers))
        workers = loader_workers(allowed, processes=trainer.world_size if trainer is not None else 1)
        if workers < allowed and self._workers_logged != (allowed, workers):
            self._workers_logged = (allowed, workers)
            logger.info("TrainingConfig.num_workers=%d: using %d loader worker(s), the cores this machine has to spare", tc.num_workers, workers)
        options = dict(num_workers=workers, pin_memory=self.pin_memory, persistent_workers=workers > 0)
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(subset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=shuffle, seed=self.val_seed)
            batches = _EpochBatches(sampler, batch_size=tc.batch_size, drop_last=False)
            return torch.utils.data.DataLoader(subset, sampler=batches, batch_size=None, collate_fn=_whole_batch, **options)
        generator = torch.Generator().manual_seed(self.val_seed)
        return TensorDictDataLoader(subset, batch_size=tc.batch_size, shuffle=shuffle, generator=generator, **options)


def loader_workers(requested: int, processes: int = 1) -> int:
    """Loader worker processes: as many as requested, but never more than the cores a training process leaves free.

    Each of the ``processes`` training processes on this machine keeps one core for its own
    computation; a worker beyond the cores only competes with it (Ptychodus asks for 4 by default).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    spare = max(0, cores // max(1, processes) - 1)
    return min(requested, spare)


def _whole_batch(batch):
    return batch


class ConfigWriter(Callback):
    """Writes the module's configs as JSON to ``run_dir/configs/<name>.json`` when fitting starts (rank 0)."""

    def __init__(self, run_dir: Path):
        self.config_dir = Path(run_dir) / "configs"

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for name, value in pl_module.hparams.items():
            if isinstance(value, dict):
                with atomic_path(self.config_dir / f"{name}.json") as tmp:
                    tmp.write_text(json.dumps(value, indent=2, default=_json_value))


class RunInProgressMark(Callback):
    """Rank 0 keeps ``run_dir/INCOMPLETE`` from the start of fitting until it ends normally (``ptycho_torch.run_dirs``).

    Written after the logger opened the directory (so Lightning sees no earlier files there); a fit that
    raises or is interrupted leaves it, and ``find_best_checkpoint`` then ignores the directory.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            mark_incomplete(self.run_dir)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.interrupted:
            mark_finished(self.run_dir)


class NonFiniteLossError(ValueError):
    """The training or validation loss became NaN or infinite; the message names the epoch and batch."""


class StopOnNonFiniteLoss(Callback):
    """Stops training with :class:`NonFiniteLossError` as soon as a loss is not finite (on every DDP rank together).

    A NaN loss makes every later weight NaN; training on would end "successfully" with a useless checkpoint.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._check(trainer, loss, f"training loss in epoch {trainer.current_epoch} (batch {batch_idx})")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get(VAL_MONITOR)
        if isinstance(loss, torch.Tensor) and not trainer.sanity_checking:
            self._check(trainer, loss, f"validation loss in epoch {trainer.current_epoch}")

    @staticmethod
    def _check(trainer, loss: torch.Tensor, what: str) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        value = f"is {float(loss.detach().float().reshape(-1)[0])}" if not finite else "is not finite on another rank"
        raise NonFiniteLossError(
            f"the {what} {value}: training stopped; check the scan (probe, diffraction, positions) or lower training.learning_rate"
        )


def _json_value(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if is_dataclass(value):
        return asdict(value)
    return str(value)


DEVICES = ("auto", "cpu", "cuda", "cuda:<index>", "gpu")
CLIP_ALGORITHMS = ("norm", "value")  # what Lightning's Trainer clips by


def choose_accelerator(training_config) -> tuple[str, int]:
    """``(accelerator, devices)`` of ``TrainingConfig.device``: ``'auto'`` (the default) takes the GPUs when torch sees CUDA, else the CPU, silently.

    ``'cpu'`` trains on the CPU; ``'cuda'`` (``'cuda:<index>'``, ``'gpu'``) on the GPUs, falling back to the CPU
    with one warning when torch sees none. Any other value is a ValueError naming the field. Under a
    launcher that already started one process per device (``torchrun`` sets ``LOCAL_WORLD_SIZE``),
    ``devices`` is that count, on the CPU too (DDP over gloo); otherwise the CPU trains in one process.
    """
    wanted = _device_request(training_config.device)
    launched = launched_processes_per_node()
    if wanted != "cpu" and torch.cuda.is_available():
        return "gpu", launched or max(1, min(int(training_config.n_devices), torch.cuda.device_count()))
    if wanted == "cuda":
        logger.warning("TrainingConfig.device=%r but no CUDA device is available: training on the CPU", training_config.device)
    return "cpu", launched or 1


def _device_request(device) -> str:
    """``'auto'``, ``'cpu'`` or ``'cuda'`` for a ``TrainingConfig.device`` value (None: ``'auto'``)."""
    text = "auto" if device is None else str(device).strip().lower()
    if text in ("auto", "cpu"):
        return text
    if text in ("cuda", "gpu") or (text.startswith("cuda:") and text[5:].isdigit()):
        return "cuda"
    raise ValueError(f"TrainingConfig.device={device!r} is not a device; use one of {list(DEVICES)}")


def gradient_clipping(training_config) -> dict:
    """The Trainer's ``gradient_clip_val`` and ``gradient_clip_algorithm`` (None, None when ``gradient_clip_val`` is unset or 0)."""
    algorithm = str(training_config.gradient_clip_algorithm)
    if algorithm not in CLIP_ALGORITHMS:
        raise ValueError(f"TrainingConfig.gradient_clip_algorithm={algorithm!r} is not available (Lightning clips by "
                         f"{' or '.join(map(repr, CLIP_ALGORITHMS))}); use 'norm' or 'value'")
    value = training_config.gradient_clip_val or None
    return {"gradient_clip_val": value, "gradient_clip_algorithm": algorithm if value is not None else None}


def launched_processes_per_node() -> int | None:
    """The processes per node a launcher such as ``torchrun`` started (``LOCAL_WORLD_SIZE``), or None."""
    value = os.environ.get("LOCAL_WORLD_SIZE")
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def build_trainer(training_config, run_dir, callbacks=(), *, progress: bool = True) -> L.Trainer:
    """A Lightning Trainer writing ``run_dir/checkpoints/{best-checkpoint,last}.ckpt`` and ``run_dir/configs/*.json``.

    One process per device; with one device the strategy is in-process (``'auto'``) whatever
    ``TrainingConfig.strategy`` says (``ddp_spawn`` cannot pickle local callbacks); under ``torchrun``
    it is ``'ddp'`` over the processes it started. Gradient clipping and accumulation follow the
    config (``gradient_clip_val`` by ``gradient_clip_algorithm``, ``'norm'`` or ``'value'``). Metrics go to ``run_dir/metrics.csv``;
    ``run_dir/INCOMPLETE`` marks it while fitting. A ``run_dir`` already holding metrics or checkpoints is refused
    (FileExistsError): a previous run is never overwritten. A non-finite loss stops training with
    :class:`NonFiniteLossError`. Under DDP the checkpoints go to rank 0's ``run_dir`` (Lightning
    broadcasts it), so only rank 0 needs a real one.
    """
    tc = as_config(training_config, TrainingConfig)
    run_dir = Path(run_dir)
    previous = sorted(run_dir.glob("checkpoints/*.ckpt")) + [path for path in [run_dir / "metrics.csv"] if path.exists()]
    if previous:
        raise FileExistsError(f"{run_dir} already holds a previous run ({', '.join(str(p.relative_to(run_dir)) for p in previous)}), "
                              "which this trainer would overwrite; pass a new directory, e.g. "
                              "ptycho_torch.run_dirs.new_run_dir('runs') (a fresh runs/run_<UTC time>)")
    clipping = gradient_clipping(tc)
    check_strategy(tc.strategy)
    accelerator, devices = choose_accelerator(tc)
    launched = launched_processes_per_node()
    if int(tc.n_devices) > 1 and devices == 1 and not launched:
        reason = ("start it under torchrun for several processes" if accelerator == "cpu" else
                  "torch sees one GPU here (CUDA_VISIBLE_DEVICES may hide others)")
        logger.warning("TrainingConfig.n_devices=%d: training runs in one process on the %s: %s", int(tc.n_devices),
                       "CPU" if accelerator == "cpu" else "GPU", reason)
    if devices == 1:
        strategy = "auto"
    else:
        strategy = "ddp" if launched else tc.strategy or "ddp"
    world = int(os.environ.get("WORLD_SIZE", devices)) if launched else devices
    num_nodes = max(1, world // devices)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename=Path(BEST_CHECKPOINT).stem, monitor=VAL_MONITOR,
                                 mode="min", save_top_k=1, save_last=True, enable_version_counter=False)
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        max_epochs=int(tc.epochs),
        **clipping,
        accumulate_grad_batches=max(1, int(tc.accum_steps)),
        callbacks=[checkpoint, ConfigWriter(run_dir), RunInProgressMark(run_dir), StopOnNonFiniteLoss(), *callbacks],
        logger=CSVLogger(run_dir, name="", version=""),
        default_root_dir=run_dir,
        enable_progress_bar=progress,
        enable_model_summary=False,
        use_distributed_sampler=False,  # PtychoDataModule shards by itself
        num_sanity_val_steps=0,
    )
