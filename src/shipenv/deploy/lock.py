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

:func:`locked` is how every command that changes a root begins: the root
opened and checked (:mod:`shipenv.deploy.layout`), ``current`` read, the lock
held, the history checked and a killed run's leftovers removed, in the order
deploy.sh checks them, so both refuse a broken root with the same sentence.
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
from shipenv.deploy.layout import CURRENT, RELEASES, Root, check_history, clean_stale, current_release, open_root
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


def no_releases(shown: Path) -> DeployError:
    return DeployError(f"{shown} holds no releases (no {shown / RELEASES}).", hint=f"Deploy one first: shipenv deploy ARCHIVE --root {shown}")


@contextlib.contextmanager
def locked(path: Path, *, wait: float, deploying: bool = False) -> Iterator[tuple[Root, str]]:
    """The opened root, locked, its leftovers removed, and what stays true if the command stops now.

    Every command that changes a root (deploy, rollback, prune) starts here.

    deploy.sh checks in the same order (who owns the root, ``releases/``,
    ``current``, the lock), so both refuse a root with the same sentence.
    """
    shown = Path(os.path.abspath(path))
    prefix = "nothing was deployed and " if deploying else ""
    state = f"{prefix}{shown / CURRENT} was not created" if deploying else "nothing was changed"
    with contextlib.ExitStack() as stack:
        try:
            root = stack.enter_context(open_root(shown, create=deploying))
            if root.releases_fd < 0:
                raise no_releases(shown)
            current = current_release(root)
            state = f"{prefix}{shown / CURRENT} " + (f"still points to {current}" if current else "was not created")
            if deploying and os.fstat(root.releases_fd).st_dev != os.fstat(root.fd).st_dev:
                # A release moves in with one atomic rename, never a copy across file systems.
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(shown / RELEASES))
            stack.enter_context(hold(shown, wait=wait, dir_fd=root.fd, check=lambda st: root.check_owner(st, LOCK_NAME)))
            check_history(root)  # before anything changes, not when the switch is already made
            clean_stale(root)
        except FileNotFoundError as exc:
            raise (fs.os_error(exc, str(shown), state) if deploying else no_releases(shown)) from None
        except OSError as exc:
            raise fs.os_error(exc, str(shown), state) from None
        yield root, state
