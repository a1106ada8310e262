"""Training run directories: created exclusively, marked until the run finishes, never reused (torch-free).

``new_run_dir(output_dir)`` makes ``output_dir/run_<UTC YYYYmmdd_HHMMSS>`` with ``os.mkdir`` (no
``exist_ok``): two runs starting in the same second get ``run_<stamp>`` and ``run_<stamp>_1``, never
one shared directory. From the start of fitting until it ends normally the directory holds a file
``INCOMPLETE`` (:func:`mark_incomplete`, :func:`mark_finished`; ``model.training.build_trainer``
does both), and :func:`ptycho_torch.lightning_utils.find_best_checkpoint` ignores a directory that
has it, so the checkpoints of a run that failed or was killed are never taken for a finished run's.
:func:`discard_failed_run` removes a failed run's directory when it holds no checkpoint, and
otherwise keeps the checkpoints (marked).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from pathlib import Path

from ptycho_torch.store.atomic import DataDirectoryError, explain_write_error, make_directory

logger = logging.getLogger(__name__)

__all__ = ["INCOMPLETE", "discard_failed_run", "is_incomplete", "mark_finished", "mark_incomplete", "new_run_dir"]

INCOMPLETE = "INCOMPLETE"
_INCOMPLETE_TEXT = (
    "This training run has not finished (it is running, failed or was stopped); "
    "find_best_checkpoint ignores this directory. Its checkpoints, if any, are kept for inspection.\n"
)
_MAX_SUFFIX = 1000


def new_run_dir(output_dir, now: float | None = None) -> Path:
    """A new, empty ``output_dir/run_<UTC stamp>[_k]`` created exclusively; ``output_dir`` is created if needed."""
    output_dir = Path(output_dir)
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(now))
    _make_output_dir(output_dir)
    for attempt in range(_MAX_SUFFIX):
        run_dir = output_dir / (f"run_{stamp}" if attempt == 0 else f"run_{stamp}_{attempt}")
        try:
            os.mkdir(run_dir)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _output_error(exc, output_dir) from exc
        return run_dir
    raise FileExistsError(errno.EEXIST, f"cannot create a new run directory in {output_dir}: run_{stamp} to "
                          f"run_{stamp}_{_MAX_SUFFIX - 1} all exist; {OUTPUT_DIR_FIX}")


def is_incomplete(run_dir) -> bool:
    """Whether ``run_dir`` belongs to a run that has not finished (see :func:`new_run_dir`)."""
    return (Path(run_dir) / INCOMPLETE).exists()


def mark_incomplete(run_dir) -> None:
    """Mark ``run_dir`` as the directory of a run in progress (its checkpoints are not to be used yet)."""
    (Path(run_dir) / INCOMPLETE).write_text(_INCOMPLETE_TEXT)


def mark_finished(run_dir) -> None:
    """Remove the ``INCOMPLETE`` mark: the run finished and its checkpoints may be used."""
    with contextlib.suppress(FileNotFoundError):
        (Path(run_dir) / INCOMPLETE).unlink()


def discard_failed_run(run_dir) -> None:
    """After a failed run: remove ``run_dir`` if it holds no checkpoint; otherwise keep it, still marked incomplete."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or run_dir.is_symlink():
        return
    checkpoints = sorted(run_dir.glob("checkpoints/*.ckpt"))
    if checkpoints:
        logger.warning("the run did not finish; %s keeps its %d checkpoint(s), marked %s (find_best_checkpoint ignores it)",
                       run_dir, len(checkpoints), INCOMPLETE)
        return
    shutil.rmtree(run_dir, ignore_errors=True)  # created by this run (os.mkdir, no exist_ok): only its own files


OUTPUT_DIR_FIX = "choose another output directory (--output-dir)"


def _make_output_dir(output_dir: Path) -> None:
    try:
        make_directory(output_dir, "output directory", OUTPUT_DIR_FIX)
    except DataDirectoryError:
        raise
    except OSError as exc:
        raise _output_error(exc, output_dir) from exc


def _output_error(exc: OSError, output_dir: Path) -> OSError:
    explained = explain_write_error(exc, output_dir, 0)
    if isinstance(explained, DataDirectoryError):  # its text names data_dir=; here it is the output directory
        return DataDirectoryError(exc.errno, f"cannot write in the output directory {output_dir} ({exc.strerror}); {OUTPUT_DIR_FIX}")
    return explained
