"""Crash-safe file writes: temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import stat
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
def atomic_path(final: Path, expected_bytes: int = 0, fix: str | None = None) -> Iterator[Path]:
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
        raise explain_write_error(exc, final.parent, expected_bytes, fix) from exc
    except BaseException:
        _discard(tmp)
        raise


def explain_write_error(exc: OSError, directory: Path, expected_bytes: int, fix: str | None = None) -> OSError:
    """Turn ENOSPC / EFBIG / EROFS / EACCES into a DataDirectoryError that names the directory and the fix
    (``fix``: what to do instead of pointing data_dir= elsewhere, e.g. for an output the user chose)."""
    if isinstance(exc, DataDirectoryError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(directory).free if directory.exists() else 0
        return DataDirectoryError(
            exc.errno,
            f"not enough space to write in {directory}: about {_size(expected_bytes)} needed, "
            f"{_size(free)} free ({exc.strerror}); free some space or {fix or 'pass data_dir= on a larger file system'}",
        )
    if exc.errno == errno.EFBIG:
        return DataDirectoryError(
            exc.errno,
            f"cannot write a file of about {_size(expected_bytes)} in {directory} ({exc.strerror}): the file system "
            f"or a file size limit (ulimit -f) refuses it; raise the limit or {fix or 'pass data_dir= on another file system'}",
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DataDirectoryError(
            exc.errno,
            f"cannot write in {directory} ({exc.strerror}); {fix or 'pass data_dir= (or --data-dir) pointing to a writable directory'}",
        )
    return exc


def require_free_space(directory: Path, needed_bytes: int) -> None:
    """Fail early, before writing anything, when ``directory`` lacks ``needed_bytes``."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise DataDirectoryError(
            errno.ENOSPC,
            f"not enough space in {directory}: {_size(needed_bytes)} needed, {_size(free)} free; "
            "free some space or pass data_dir= on a larger file system",
        )


def ensure_directory(directory: Path) -> Path:
    """Create ``directory`` (and parents) or explain why it cannot be; a symbolic link there is refused."""
    refuse_symlinked_directory(directory)
    return make_directory(directory)


DATA_DIR_FIX = "pass data_dir= (or --data-dir) pointing to a directory"


def make_directory(directory: Path, what: str = "data directory", fix: str = DATA_DIR_FIX) -> Path:
    """``mkdir -p`` that names a dangling link or a file in the way (``what`` is named, ``fix`` said)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            dangling = next((p for p in (directory, *directory.parents) if p.is_symlink() and not p.exists()), None)
            if dangling is not None:
                raise DataDirectoryError(
                    exc.errno,
                    f"cannot create the {what} {directory}: {dangling} is a symbolic link to "
                    f"{os.readlink(dangling)}, which does not exist; fix the link (mount or create its target) or {fix}",
                ) from exc
            blocker = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), directory)
            raise DataDirectoryError(
                exc.errno,
                f"cannot create the {what} {directory}: {blocker} is a file, not a directory; {fix}",
            ) from exc
        raise explain_write_error(exc, directory, 0) from exc
    return directory


def missing_directories(directory: Path) -> list[Path]:
    """``directory`` and those of its parents that do not exist, deepest first: what creating it makes, and what
    :func:`remove_empty_directories` removes again after a failure."""
    directory = Path(directory).absolute()
    return [path for path in (directory, *directory.parents) if not path.exists() and not path.is_symlink()]


def remove_empty_directories(directories: list[Path]) -> None:
    """Remove each of ``directories`` (deepest first) that is empty; one holding anything, or a link, is kept."""
    for directory in directories:
        if not directory.is_symlink():
            with contextlib.suppress(OSError):
                directory.rmdir()  # only succeeds when empty


@contextlib.contextmanager
def removed_if_left_empty(*directories: Path) -> Iterator[None]:
    """Run the block; if it raises (or is interrupted), remove what it created of ``directories`` and their parents
    where that is still empty: a refused command leaves no empty output or data directory behind."""
    created = sorted({path for directory in directories for path in missing_directories(directory)}, key=lambda p: len(p.parts),
                     reverse=True)
    try:
        yield
    except BaseException:
        remove_empty_directories(created)
        raise


def require_writable_directory(directory: Path, fix: str | None = None) -> Path:
    """Create ``directory`` if needed (it may be a link to a directory, as a data_dir may) and prove a file can be
    created there, before any long work; the error says what to do (``fix``: instead of pointing data_dir= elsewhere)."""
    make_directory(Path(directory), fix=fix or DATA_DIR_FIX)
    probe = temporary_path(Path(directory) / "write-test")
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        raise explain_write_error(exc, Path(directory), 0, fix) from exc
    _discard(probe)
    return Path(directory)


def refuse_symlinked_directory(directory: Path) -> None:
    """Refuse to write or delete in ``directory`` when it is a symbolic link (its target is someone else's)."""
    if Path(directory).is_symlink():
        raise DataDirectoryError(
            errno.ELOOP,
            f"{directory} is a symbolic link (to {os.readlink(directory)}); this package never writes or deletes "
            f"through a link in its data directory; remove the link (rm {directory}) to let it build a real directory there",
        )


class NotRegularFileError(OSError):
    """A FIFO, socket, device or directory where this package expects one of its regular files."""


def open_regular(path: Path):
    """Open ``path`` for reading without ever blocking on a FIFO; raise NotRegularFileError unless it is a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file (a FIFO, socket, device or directory?)", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file (never blocks on a FIFO; see :func:`open_regular`)."""
    with open_regular(path) as handle:
        return handle.read()


def require_regular(path: Path) -> None:
    """Raise NotRegularFileError unless ``path`` is (or links to) a regular file; FileNotFoundError when missing."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotRegularFileError(errno.EINVAL, "not a regular file (a FIFO, socket, device or directory?)", str(path))


def is_temporary(name: str) -> bool:
    """Whether a file name is one of the temporaries :func:`temporary_path` makes."""
    return bool(_TEMPORARY.match(name))


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporaries this package left behind in ``directory`` (call only while holding its lock)."""
    refuse_symlinked_directory(directory)
    removed = []
    for path in directory.iterdir():
        if is_temporary(path.name):
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
    with contextlib.suppress(OSError):  # some file systems refuse to fsync a directory
        fsync_file(directory)


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes / 2**10:,.1f} kB"
