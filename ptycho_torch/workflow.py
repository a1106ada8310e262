"""Training and reconstruction as `ptycho-train`, `ptycho-reconstruct` and the Ptychodus API all run them."""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptycho_torch.model.refine import RefinementUpdate

logger = logging.getLogger(__name__)

__all__ = ["MAX_SWEEPS", "ReconstructionSettings", "STARTS", "reconstruct_scan", "resolve_device", "train_model"]

STARTS = ("network", "physics", "flat")  # what the object (and its refinement) starts from
MAX_SWEEPS = 100_000  # refinement sweeps one reconstruction may ask for (about 2 CPU-hours per 512 points); beyond it, a typo
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class ReconstructionSettings:
    """How a network reconstructs a scan; the defaults are the command's.

    ``device``: ``'auto'`` (CUDA when torch sees it, else the CPU) or a torch device; ``precision``:
    the U-Net's arithmetic (``'auto'``, ``'fp32'``, ``'bf16'``, :func:`~ptycho_torch.model.pinn.choose_precision`);
    ``batch_size``: groups per batch, memory only (None: the stitching's default); ``groups`` and
    ``whole_scan``: :func:`~ptycho_torch.model.stitching.reconstruct`'s; ``refine_iterations``: error-reduction
    sweeps over the whole stitched object (:func:`~ptycho_torch.model.refine.refine`), 0 for none, each updating
    the object as ``refine_update`` says (:class:`~ptycho_torch.model.refine.RefinementUpdate`; None: its defaults);
    ``start``: what refinement starts from, ``'network'`` (the single pass), ``'physics'`` (the network's physics input
    alone, the U-Net not run) or ``'flat'`` (a unit object, :func:`~ptycho_torch.model.refine.flat_start`: no
    prediction at all; needs ``refine_iterations``); ``object_network_after``: with ``start='flat'``, the refinement sweep
    after which the shipped whole-object network corrects the object (0: never; :mod:`~ptycho_torch.model.object_network`):
    the remaining sweeps run from its correction and from the object without it, and the one that fits the data better is
    kept (so those sweeps cost twice).
    """

    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    groups: str = "cover"
    whole_scan: bool = True
    refine_iterations: int = 0
    progress: bool = True
    refine_update: "RefinementUpdate | None" = None
    start: str = "network"
    object_network_after: int = 0


def resolve_device(requested="auto"):
    """``'auto'``: the GPU when torch sees one, else the CPU; anything else as ``torch.device`` reads it."""
    import torch

    if str(requested).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _settings_device(requested):
    """The torch device of ``ReconstructionSettings.device``, refused (ValueError) unless it is the CPU or a CUDA device."""
    try:
        device = resolve_device(requested)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"ReconstructionSettings.device={requested!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'")
    if device.type == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"ReconstructionSettings.device={requested!r}: torch sees {count} CUDA device(s) here; use 'cpu' or 'auto'"
                             + (f", or 'cuda:0' to 'cuda:{count - 1}'" if count else ""))
    return device


def reconstruct_scan(network, dataset, settings: ReconstructionSettings = ReconstructionSettings(), *, canvas=None,
                     object_network=None):
    """The stitched object of ``dataset``'s scan through ``network`` (a plain ``PtychoPINN``; Lightning is not needed).

    The network is moved to the settings' device and given its arithmetic, then every chosen group is
    predicted and stitched (:func:`~ptycho_torch.model.stitching.reconstruct`) and, with
    ``refine_iterations``, refined. Returns the :class:`~ptycho_torch.model.stitching.Reconstruction`.
    ``object_network``: with ``object_network_after``, the whole-object network a caller already loaded (and so checked)
    with :func:`~ptycho_torch.pretrained.load_object_network`; None: the shipped one, loaded here.
    """
    from ptycho_torch.model.pinn import PRECISIONS, choose_precision
    from ptycho_torch.model.stitching import GROUP_SELECTIONS, check_batch_size, reconstruct

    if settings.start not in STARTS:
        raise ValueError(f"ReconstructionSettings.start={settings.start!r}; use one of {STARTS}")
    if settings.start == "flat" and not settings.refine_iterations:
        raise ValueError("ReconstructionSettings.start='flat' is a unit object: give refine_iterations >= 1 to refine it")
    if settings.refine_update is not None and not settings.refine_iterations:
        raise ValueError("ReconstructionSettings.refine_update says how refinement updates the object, but refine_iterations is 0: "
                         "give refine_iterations >= 1, or leave refine_update out")
    if settings.precision not in ("auto", *PRECISIONS):
        raise ValueError(f"ReconstructionSettings.precision={settings.precision!r}; use one of {('auto', *PRECISIONS)}")
    check_batch_size(settings.batch_size, "ReconstructionSettings.batch_size")
    if settings.groups not in GROUP_SELECTIONS:
        raise ValueError(f"ReconstructionSettings.groups={settings.groups!r}; use one of {GROUP_SELECTIONS}")
    iterations = settings.refine_iterations
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or not 0 <= iterations <= MAX_SWEEPS:
        raise ValueError(f"ReconstructionSettings.refine_iterations={iterations!r} must be an integer from 0 (no refinement) "
                         f"to {MAX_SWEEPS:,}")
    after = settings.object_network_after
    if isinstance(after, bool) or not isinstance(after, numbers.Integral) or after < 0:
        raise ValueError(f"ReconstructionSettings.object_network_after={after!r} must be an integer >= 0 (0: no object network)")
    if after and (settings.start != "flat" or after >= iterations):
        raise ValueError(f"ReconstructionSettings.object_network_after={after!r} needs start='flat' (the object network was trained on "
                         f"objects refined from a unit object) and refine_iterations above it (the sweeps after it decide whether its "
                         f"correction is kept); got start={settings.start!r}, refine_iterations={iterations!r}")
    if object_network is not None and not after:
        raise ValueError("an object_network was given but ReconstructionSettings.object_network_after is 0, so it would not run; "
                         "set object_network_after (with start='flat'), or leave object_network out")
    device = _settings_device(settings.device)
    if after:
        from ptycho_torch.pretrained import load_object_network, object_network_for_pattern_size

        object_network_for_pattern_size(dataset.N)
        object_network = (load_object_network() if object_network is None else object_network).to(device)
    network = getattr(network, "network", network)
    network.to(device)
    network.precision = choose_precision(settings.precision, device)
    if settings.start == "network":
        logger.info("network arithmetic: %s on %s", network.precision, device)
    if settings.start == "flat":
        from ptycho_torch.model.refine import flat_start

        result = flat_start(dataset, canvas)
        logger.info("refining from a unit object (no network, no physics input)")
    else:
        if settings.start == "physics":
            logger.info("the network's physics input alone on %s (the U-Net is not run)", device)
        result = reconstruct(network, dataset, batch_size=settings.batch_size, canvas=canvas, progress=settings.progress,
                             groups=settings.groups, whole_scan=settings.whole_scan, use_network=settings.start == "network")
    if settings.refine_iterations:
        from ptycho_torch.model.refine import RefinementUpdate, refine

        update = settings.refine_update or RefinementUpdate()
        if after:  # one refinement of `iterations` sweeps, the network's branch forked from it after sweep `after`
            from ptycho_torch.model.object_network import refine_with_object_network

            result, _ = refine_with_object_network(result, dataset, object_network, int(iterations) - int(after), update=update,
                                                   bf16=network.precision == "bf16", progress=settings.progress,
                                                   sweeps_before=int(after))
        else:
            result = refine(result, dataset, iterations, update=update, progress=settings.progress)
    return result


def train_model(model, data_module, trainer, run_dir: Path, *, discard_on_failure: bool = True) -> Path:
    """Fit ``model`` (a ``PtychoPINN_Lightning``) with ``trainer`` and return the run's best checkpoint: the
    ``best-checkpoint.ckpt`` its checkpoint callback wrote (without one, :func:`~ptycho_torch.lightning_utils.find_best_checkpoint`).

    A run that fails or is interrupted re-raises (an interruption as KeyboardInterrupt, also where Lightning turns
    it into ``sys.exit(1)``); with
    ``discard_on_failure`` (the process that owns ``run_dir``) its directory is removed, or kept marked
    ``INCOMPLETE`` when it holds checkpoints (:func:`~ptycho_torch.run_dirs.discard_failed_run`).
    """
    from ptycho_torch.lightning_utils import BEST_CHECKPOINT, find_best_checkpoint
    from ptycho_torch.run_dirs import discard_failed_run

    run_dir = Path(run_dir)
    try:
        try:
            trainer.fit(model, datamodule=data_module)
        except SystemExit as exc:  # Lightning 2.6 ends a fit stopped by KeyboardInterrupt with sys.exit(1)
            if trainer.interrupted and isinstance(exc.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt(f"training in {run_dir} was interrupted") from None
            raise
        if trainer.interrupted:
            raise KeyboardInterrupt(f"training in {run_dir} was interrupted")
        callback = getattr(trainer, "checkpoint_callback", None)
        if callback is not None and callback.dirpath:  # the file this run wrote (rank 0's directory under DDP, which
            best = Path(callback.dirpath) / BEST_CHECKPOINT  # another rank may see before rank 0 marks the run finished)
        else:
            best = find_best_checkpoint(run_dir)
        if best is None or not best.is_file():
            raise RuntimeError(f"training finished without a checkpoint in {run_dir / 'checkpoints'}")
    except BaseException:
        if discard_on_failure:
            discard_failed_run(run_dir)
        raise
    logger.info("best checkpoint: %s", best)
    return best
