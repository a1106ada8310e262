"""An exclusive lock on a data directory, so that concurrent builders produce one valid cache."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Iterator

from ptycho_torch.atomic_io import explain_write_error

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_LOCKS_UNSUPPORTED = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)  # e.g. Lustre mounted without flock

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory/.lock`` (released by the kernel if the holder dies).

    Readers never take it: a reader only uses files that were renamed into place complete.
    """
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise explain_write_error(exc, Path(directory), 0) from exc
    try:
        _acquire(fd, path)
        yield
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path) -> None:
    if fcntl is None:  # pragma: no cover
        logger.warning("no fcntl on this platform: concurrent builds in %s are not serialised", path.parent)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logger.info("waiting for another process building in %s", path.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in _LOCKS_UNSUPPORTED:
            raise
        logger.warning(
            "the file system of %s does not support file locks (%s): concurrent builds there are not serialised; "
            "let one job build the cache first, or pass data_dir= on a file system with locks",
            path.parent, exc.strerror,
        )
