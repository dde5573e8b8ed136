"""One deploy, rollback or prune at a time per application root.

The lock is an ``fcntl.flock`` on ``ROOT/.shipenv.lock``, the same file the
POSIX ``deploy.sh`` locks with ``flock(1)``, so the two tools exclude each
other. ``flock`` rather than a pid file: the kernel drops the lock when its
holder dies, even by ``SIGKILL``, so a crashed deploy never leaves a stale lock
behind that someone has to delete by hand. The holder writes its pid into the
file only so that the refusal can name it.

The file is opened in the root's directory descriptor with ``O_NOFOLLOW`` and
must be a plain file with one link (:func:`shipenv.deploy.fs.open_file_at`):
a service user who owns the root cannot turn the pid write into a truncation
of a file elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from shipenv.deploy import fs
from shipenv.errors import DeployError

LOCK_NAME = ".shipenv.lock"
#: How often a waiting deploy tries the lock again; ``flock`` has no timeout.
_POLL = 0.05


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def hold(root: Path, *, wait: float = 0.0, dir_fd: int | None = None,
         check: Callable[[os.stat_result], None] | None = None) -> Iterator[None]:
    """Hold the root's lock for the ``with`` block, waiting up to ``wait`` seconds.

    Raises :class:`DeployError` naming the holder's pid when the lock stays
    taken. ``root`` must exist; ``dir_fd``, when given, is open on it and is
    where the lock file is looked up; ``check`` gets the lock file's stat
    before it is locked (the root's ownership rules).
    """
    own = dir_fd is None
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if dir_fd is None else dir_fd
    try:
        fd = fs.open_file_at(root_fd, LOCK_NAME, f"{root}/{LOCK_NAME}", os.O_RDWR | os.O_CREAT)
    finally:
        if own:
            os.close(root_fd)
    try:
        if check is not None:
            check(os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    try:
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                pid = _holder(fd)
                if wait > 0:
                    raise DeployError(
                        f"Another deploy is still running on {root} (pid {pid}) after waiting {wait:g} seconds; "
                        "try again later or pass a longer --wait."
                    )
                raise DeployError(f"Another deploy is running on {root} (pid {pid}); try again or pass --wait SECONDS.")
            time.sleep(_POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            # Leave the file (another process may already be waiting on it), only
            # forget our pid so a later refusal does not name a finished process.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)
