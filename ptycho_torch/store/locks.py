"""An exclusive lock on a data directory, so that concurrent builders produce one valid cache."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import stat
import time
import warnings
from pathlib import Path
from typing import Iterator

from ptycho_torch.store.atomic import DataDirectoryError, ensure_directory, explain_write_error

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
WARN_AFTER_SECONDS = 5.0
WARN_EVERY_SECONDS = 60.0
_POLL_SECONDS = 0.25
_HOLDER = re.compile(r"^(?:(\d+) (\S+)\n)?$")  # what a holder writes into the lock file: "<pid> <host>\n", or nothing
_LOCKS_UNSUPPORTED = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)  # e.g. Lustre mounted without flock

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None


class LockWaitWarning(UserWarning):
    """This process waits for another one building the same scan (shown with Python's default warning settings)."""


class LockTimeoutError(TimeoutError):
    """Waited ``lock_timeout`` seconds for another process's build; the message names the lock file and its holder."""


@contextlib.contextmanager
def directory_lock(directory: Path, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory/.lock`` (released by the kernel if the holder dies).

    The directory is (re)created if needed and never followed through a symlink. While waiting, a
    :class:`LockWaitWarning` naming the lock file and its holder's pid is issued after
    ``WARN_AFTER_SECONDS`` (through :mod:`warnings`, so a plain script shows it on stderr although the
    package's loggers are silent until configured), then a WARNING is logged every
    ``WARN_EVERY_SECONDS``; ``timeout_seconds`` (None: wait for ever) raises LockTimeoutError.
    If the lock file is removed (``ptycho-memmap clean``) while this process waits, it locks a new one.
    Readers never take it: a reader only uses files that were renamed into place complete.
    """
    if timeout_seconds is not None and not 0 <= timeout_seconds < float("inf"):
        raise ValueError(f"lock_timeout must be a number of seconds >= 0 or None (no limit), got {timeout_seconds!r}")
    path = Path(directory) / LOCK_NAME
    started = time.monotonic()
    while True:
        fd = _open_lock_file(path)
        try:
            _acquire(fd, path, started, timeout_seconds)
            if _still_linked(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        logger.debug("%s was removed while this process waited for it; locking it again", path)
    try:
        _record_holder(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # an unheld lock names no holder
        os.close(fd)


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` is a regular file holding nothing but what :func:`directory_lock` writes."""
    try:
        return _read_lock_text(path) is not None
    except OSError:
        return False


def lock_holder(path: Path) -> str:
    """``process <pid> on <host>`` as recorded in the lock file, or why it is unknown."""
    try:
        text = _read_lock_text(path)
    except OSError as exc:
        return f"an unknown process ({exc.strerror})"
    match = _HOLDER.match(text or "")
    if text is None or not match or match.group(1) is None:
        return "an unknown process (no pid recorded yet)"
    return f"process {match.group(1)} on host {match.group(2)}"


def _open_lock_file(path: Path) -> int:
    directory = path.parent
    ensure_directory(directory)  # again: clean may have removed it while this process waited
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataDirectoryError(
                exc.errno, f"{path} is a symbolic link; this package never writes through links; remove it (rm {path})"
            ) from exc
        raise explain_write_error(exc, directory, 0) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataDirectoryError(errno.EINVAL, f"{path} is not a regular file (a FIFO, socket or device?); remove it (rm {path})")
    return fd


def _acquire(fd: int, path: Path, started: float, timeout_seconds: float | None) -> None:
    if fcntl is None:  # pragma: no cover
        logger.warning("no fcntl on this platform: concurrent builds in %s are not serialised", path.parent)
        return
    if _try_lock(fd, path):
        return
    logger.info("waiting for another process building in %s (%s)", path.parent, lock_holder(path))
    next_warning = started + WARN_AFTER_SECONDS
    warned = False
    while True:
        now = time.monotonic()
        if timeout_seconds is not None and now - started >= timeout_seconds:
            raise LockTimeoutError(
                errno.ETIMEDOUT,
                f"gave up after {now - started:.1f} s (lock_timeout) waiting for the lock {path}, held by {lock_holder(path)} "
                "building the same scan; wait for it, end it if it is stopped or hung, or raise lock_timeout (--lock-timeout)",
            )
        if now >= next_warning:
            message = (f"still waiting after {now - started:.0f} s for the lock {path}, held by {lock_holder(path)} building "
                       "the same scan; if that process is stopped or hung, end it; pass lock_timeout= (--lock-timeout) "
                       "to give up after a limit")
            if warned:
                logger.warning(message)
            else:
                _warn_each_time(message)  # once per wait, visible with default settings
                warned = True
            next_warning = now + WARN_EVERY_SECONDS
        deadline = min(next_warning, started + timeout_seconds if timeout_seconds is not None else next_warning)
        time.sleep(max(0.0, min(_POLL_SECONDS, deadline - now)))
        if _try_lock(fd, path):
            return


def _warn_each_time(message: str) -> None:
    """A :class:`LockWaitWarning` that the default filters show every time (``warnings.warn`` would show an identical
    text only once per call site), and that ``warnings.filterwarnings`` can still silence."""
    warnings.warn_explicit(message, LockWaitWarning, __file__, _WARNING_LINE, module=__name__, registry=None)


_WARNING_LINE = _warn_each_time.__code__.co_firstlineno


def _try_lock(fd: int, path: Path) -> bool:
    """True when locked (or locks are unsupported here, with a warning), False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in _LOCKS_UNSUPPORTED:
            raise
        logger.warning(
            "the file system of %s does not support file locks (%s): concurrent builds there are not serialised; "
            "let one job build the cache first, or pass data_dir= on a file system with locks",
            path.parent, exc.strerror,
        )
    return True


def _still_linked(fd: int, path: Path) -> bool:
    """Whether the locked file is still the one at ``path`` (``clean`` may have removed it, or its directory)."""
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _record_holder(fd: int) -> None:
    """Write ``<pid> <host>`` into the lock file, for the warning of whoever waits next."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname() or 'unknown'}\n".encode(), 0)


def _read_lock_text(path: Path) -> str | None:
    """The lock file's text if it is a regular file in the holder format, else None."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, 257)
    finally:
        os.close(fd)
    text = data.decode("ascii", errors="replace")
    return text if len(data) <= 256 and _HOLDER.match(text) else None
