"""File operations inside an application root that never follow a symlink.

Deploys run as root in a directory the service user may own (DESIGN: "trust
nothing unchecked"), so whatever sits in that directory may have been swapped
for a symlink, a hard link or a FIFO at any moment. Everything here works on
directory file descriptors (``dir_fd=``, ``O_NOFOLLOW``): a name is looked up
in the directory shipenv opened, never through a path someone else can
redirect. OS errors become one sentence (:func:`os_error`), with exit status 5
(:class:`~shipenv.errors.FilesystemError`), the same as ``deploy.sh``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator

from shipenv.errors import FilesystemError, RootError

#: Flags of every directory opened inside a root.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags of every control file opened inside a root: O_NONBLOCK so a planted FIFO cannot hang us.
FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def kind(mode: int) -> str:
    """What a file is, in words, for the refusals."""
    for test, word in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return word
    return "not a file"


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir_at(dir_fd: int, name: str, shown: str) -> int:
    """Open the directory ``name`` in ``dir_fd``; a symlink or anything else there is refused."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        st = lstat_at(dir_fd, name)
        raise not_made(shown, "directory", kind(st.st_mode) if st is not None else "gone") from None


def not_made(shown: str, made: str, what: str) -> RootError:
    """``shown`` is not the ``made`` ("plain file", "directory") shipenv makes, but ``what``."""
    return RootError(
        f"{shown} is not the {made} shipenv makes (it is {what}); nothing was changed.",
        hint="Check who put it there and remove it, then try again: shipenv never follows a link in the root.",
    )


def open_file_at(dir_fd: int, name: str, shown: str, flags: int, mode: int = 0o644) -> int:
    """Open the control file ``name`` in ``dir_fd``: a plain file with one link, or refused."""
    st = lstat_at(dir_fd, name)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise not_made(shown, "plain file", kind(st.st_mode))  # never open a device or a FIFO
    try:
        fd = os.open(name, flags | FILE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        st = lstat_at(dir_fd, name)
        fd = -1
        what = kind(st.st_mode) if st is not None else "gone"
    else:
        st = os.fstat(fd)
        what = "" if stat.S_ISREG(st.st_mode) else kind(st.st_mode)
        if not what and st.st_nlink != 1:
            what = f"a file with {st.st_nlink} hard links"
    if what:
        if fd >= 0:
            os.close(fd)
        raise not_made(shown, "plain file", what)
    os.set_blocking(fd, True)
    return fd


def read_all(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from the start of ``fd``."""
    chunks, size = [], 0
    while size < limit and (chunk := os.pread(fd, min(1 << 20, limit - size), size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def make_temp_dir(dir_fd: int, prefix: str) -> tuple[str, int]:
    """Create ``PREFIX<random>`` (mode 0700) in ``dir_fd``; returns its name and an fd on it."""
    for _ in range(100):
        name = prefix + secrets.token_hex(5)
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            continue
        return name, os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    raise FileExistsError(errno.EEXIST, "no free temporary name", prefix)


def remove_tree_at(dir_fd: int, name: str) -> None:
    """``rm -rf`` of ``name`` in ``dir_fd``, descending only into real directories."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as entries:
            names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for child, is_dir in names:
            if is_dir:
                remove_tree_at(fd, child)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def fd_path(fd: int) -> str:
    """A path that reaches what ``fd`` is open on whatever is renamed meanwhile (Linux ``/proc``)."""
    path = f"/proc/self/fd/{fd}"
    if not os.path.isdir(path):
        raise FilesystemError("/proc is not mounted, and deploy reaches the new release through /proc/self/fd; nothing was changed.",
                              hint="Mount it (mount -t proc proc /proc), then try again.")
    return path


@contextlib.contextmanager
def closing_fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def os_error(exc: OSError, root: str, state: str) -> FilesystemError:
    """One sentence for an OS error met while changing ``root``; ``state`` says what is still true.

    ``deploy.sh`` says the same words for the same errno (it reads the C locale's strerror).
    """
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return FilesystemError(f"The disk holding {root} is full; {state}.",
                               hint=f"Free some space, for example with 'shipenv prune --root {root} --keep 2', then try again.")
    if code == errno.EROFS:
        return FilesystemError(f"{root} is on a read-only file system; {state}.",
                               hint="Remount it read-write, or use a root on a writable file system, then try again.")
    if code in (errno.EACCES, errno.EPERM):
        return FilesystemError(f"Permission denied in {root}; {state}.",
                               hint="Run as root or as the user that owns the root, then try again.")
    if code == errno.ENAMETOOLONG:
        return FilesystemError(f"A name is too long for the file system holding {root}; {state}.",
                               hint="Use a root with a shorter path, or a file system that takes longer names.")
    if code == errno.EXDEV:
        return FilesystemError(f"{root}/releases is on another file system than {root}; {state}.",
                               hint="A release is moved into releases/ with one atomic rename: keep releases/ on the root's file system.")
    reason = exc.strerror or str(exc)
    return FilesystemError(f"Cannot change {root}: {reason}; {state}.", hint="Fix the cause, then try again.")
