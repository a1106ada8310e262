"""Finding the checkpoint a Lightning training run left in its run directory."""

from __future__ import annotations

import logging
from pathlib import Path

from ptycho_torch.run_dirs import INCOMPLETE, is_incomplete

logger = logging.getLogger(__name__)

__all__ = ["BEST_CHECKPOINT", "LAST_CHECKPOINT", "find_best_checkpoint"]

BEST_CHECKPOINT = "best-checkpoint.ckpt"
LAST_CHECKPOINT = "last.ckpt"


def find_best_checkpoint(run_dir) -> Path | None:
    """``run_dir/checkpoints/best-checkpoint.ckpt``, else ``last.ckpt``, else the newest ``*.ckpt`` there; None if none.

    A ``best-checkpoint-v<k>.ckpt`` (Lightning's name when the file already existed) counts as best;
    the newest of those wins. A run directory still marked ``INCOMPLETE`` (its run is going on, failed
    or was killed; :mod:`ptycho_torch.run_dirs`) gives None: its checkpoints are not a finished run's.
    """
    if is_incomplete(run_dir):
        logger.warning("%s is marked %s (its training run has not finished): not using its checkpoints", run_dir, INCOMPLETE)
        return None
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        logger.info("no checkpoint directory %s", directory)
        return None
    checkpoints = [path for path in directory.glob("*.ckpt") if path.is_file()]
    if not checkpoints:
        return None
    newest_first = sorted(checkpoints, key=lambda path: path.stat().st_mtime_ns, reverse=True)
    for wanted in (BEST_CHECKPOINT.removesuffix(".ckpt"), LAST_CHECKPOINT.removesuffix(".ckpt")):
        matches = [path for path in newest_first if path.stem == wanted or path.stem.startswith(f"{wanted}-v")]
        if matches:
            return matches[0]
    return newest_first[0]
