"""Crash-safe file writes: temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}$")


class DataDirectoryError(OSError):
    """The data directory cannot be used (missing, read-only or full); the message says what to do."""


def temporary_path(final: Path) -> Path:
    """A unique hidden sibling of ``final`` that :func:`remove_stale_temporaries` recognises."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(final: Path, expected_bytes: int = 0) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto ``final``.

    On any error the temporary file is removed, so a crash or a full disk never leaves a
    half-written ``final`` that a later run could trust.
    """
    final = Path(final)
    tmp = temporary_path(final)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_directory(final.parent)
    except OSError as exc:
        _discard(tmp)
        raise explain_write_error(exc, final.parent, expected_bytes) from exc
    except BaseException:
        _discard(tmp)
        raise


def explain_write_error(exc: OSError, directory: Path, expected_bytes: int) -> OSError:
    """Turn ENOSPC / EROFS / EACCES / EFBIG into a DataDirectoryError that names the directory and the fix."""
    if isinstance(exc, DataDirectoryError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = shutil.disk_usage(directory).free if directory.exists() else 0
        return DataDirectoryError(
            exc.errno,
            f"not enough space to write in {directory}: about {_mb(expected_bytes)} needed, "
            f"{_mb(free)} free ({exc.strerror}); free some space or pass data_dir= on a larger file system",
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DataDirectoryError(
            exc.errno,
            f"cannot write in {directory} ({exc.strerror}); pass data_dir= (or --data-dir) pointing to a writable directory",
        )
    return exc


def require_free_space(directory: Path, needed_bytes: int) -> None:
    """Fail early, before writing anything, when ``directory`` lacks ``needed_bytes``."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise DataDirectoryError(
            errno.ENOSPC,
            f"not enough space in {directory}: {_mb(needed_bytes)} needed, {_mb(free)} free; "
            "free some space or pass data_dir= on a larger file system",
        )


def ensure_directory(directory: Path) -> Path:
    """Create ``directory`` (and parents) or explain why it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise explain_write_error(exc, directory, 0) from exc
    return directory


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporaries this package left behind in ``directory`` (call only while holding its lock)."""
    removed = []
    for path in directory.iterdir():
        if _TEMPORARY.match(path.name):
            _discard(path)
            removed.append(path)
    if removed:
        logger.warning("removed %d incomplete file(s) left by an interrupted build in %s", len(removed), directory)
    return removed


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.1f} MB"
