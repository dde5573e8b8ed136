"""Deploy's unpacking: the one reader, the one writer, and what only a deploy adds to them.

An archive is read by :mod:`shipenv.bundle.reader` in strict mode (every
refusal rule is listed in its docstring: absolute paths, ``..``, entries
outside ``NAME-VERSION/``, devices, setuid/setgid, paths through symlinks,
links leaving the release, members whose type, size or bytes differ from
RECORD, modes masked to ``0o755``) and written by
:mod:`shipenv.bundle.unpack`, which ``verify --run`` uses too. The reader
checks every member against RECORD before the writer sees it, so no byte that
RECORD did not promise is written.

What a deploy adds:

- :func:`space_needed`: what RECORD says the new release will take on disk,
  less what is hard-linked from the current release, checked against the free
  space of the release's file system before the first byte is written
  (``releases.deploy`` turns a shortfall into one sentence).
- Durability: no file is fsynced here; ``releases.deploy`` flushes the whole
  release with one ``syncfs(2)`` of its file system before the rename that
  puts it in place (then one ``fsync`` of ``releases/``).
- Sharing: a file whose sha256, size and mode equal those of the same path
  in the current release is hard-linked from there instead of written.
  Deploying a new version of a large environment then writes only what
  changed. The archive's bytes for it are still read and checked, so a
  release verifies on its own and survives deleting the other one; the old
  file is linked only through real directories of the current release,
  never to a host file.

Why the current release's file is not read again before it is linked
(:meth:`_Sharer.unchanged`). When that release was deployed, every byte of
the file was checked against the same RECORD digest it is compared with now.
What could have changed it since, and what shows that nothing did, from
``fstat`` alone:

- Who can write it: the file must be a regular file on the same device,
  owned by the user deploying now, with exactly the (masked, at most 0755)
  mode the archive gives it: no group or other write bit, so only its owner
  (the one who deploys, who could as well edit the new release afterwards)
  and root can write to it.
- Whether they did: writing to a file sets its mtime to the present, and
  the archive's mtime (the build's fixed 2020-01-01 for what shipenv builds)
  is in the past. Setting the mtime back (``utime``), like any write,
  ``truncate``, ``chmod`` or new hard link, sets the file's ctime to the
  present, and no one, not even root, can set a ctime back short of changing
  the system clock. A deploy changes the top directory's mode after the last
  file is written and then renames it into ``releases/``, which makes the
  directory's ctime later than every file's. So a file with the archive's
  size and mtime whose ctime is not later than its release's top
  directory's has not been written since that release was put in place,
  unless its owner or root reset its mtime on purpose and then changed the
  top directory too (or did it within the same clock tick as the rename);
  they can edit the new release as easily. A file that
  fails any of this (edited, touched, or linked into a later release that was
  then removed, which sets its ctime) is hashed as before, and written fresh
  when its bytes differ.
- What still catches the rest: ``shipenv verify`` of a release hashes every
  file against RECORD, and a shared file is one inode, so an edit that
  somehow kept size, mode and ctime shows in both releases at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path

from shipenv.bundle import reader as _reader
from shipenv.bundle import unpack as _unpack
from shipenv.bundle.manifest import RecordEntry
from shipenv.bundle.reader import Head, Member
from shipenv.bundle.unpack import Progress, Stats

__all__ = ["BLOCK", "BundleReader", "Head", "Stats", "open_bundle", "space_needed"]

_CHUNK = 1 << 20
#: Each file is counted in whole blocks of this size: what most file systems allocate.
BLOCK = 4096


def space_needed(head: Head, share_record: dict[str, RecordEntry]) -> int:
    """Bytes the release will need: every file RECORD lists in whole 4 KiB blocks, less those shared.

    deploy.sh counts the same way (it shares nothing, so it subtracts nothing).
    """
    total = 0
    for rel, entry in head.record.items():
        if entry.symlink is not None:
            continue
        old = share_record.get(rel)
        if old is not None and old.sha256 is not None and (old.sha256, old.size) == (entry.sha256, entry.size):
            continue
        total += -(-(entry.size or 0) // BLOCK) * BLOCK
    return total


class BundleReader:
    """A bundle archive opened for deploy: :attr:`head` at once, then :meth:`extract`."""

    def __init__(self, reader: _reader.Reader) -> None:
        self.reader = reader
        self.path = reader.path
        self.head = reader.head

    def extract(self, dest: Path, *, share: Path | None = None, share_record: dict[str, RecordEntry] | None = None,
                progress: Progress | None = None) -> Stats:
        """Unpack everything into ``dest`` (which must not exist; its parent must).

        OSErrors (a full disk) propagate; the caller removes ``dest``.
        """
        sharer = None if share is None else _Sharer(share, share_record or {}, os.stat(dest.parent).st_dev)
        return _unpack.unpack(self.reader, dest, link=sharer, progress=progress)


class _Sharer:
    """Hard-links a file from the current release when it is the same file there."""

    def __init__(self, share: Path, record: dict[str, RecordEntry], dev: int) -> None:
        self.share = share
        self.real = os.path.realpath(share)
        self.record = record
        self.dev = dev
        self._parents: dict[str, bool] = {}
        try:
            self.top_ctime: int | None = os.lstat(self.real).st_ctime_ns
        except OSError:
            self.top_ctime = None
        self.uid = os.geteuid()

    def unchanged(self, st: os.stat_result, member: Member) -> bool:
        """Not touched since its release was deployed, judged from ``fstat`` alone (the module docstring says why)."""
        return (self.top_ctime is not None and st.st_ctime_ns <= self.top_ctime and st.st_uid == self.uid
                and int(st.st_mtime) == member.mtime)

    def __call__(self, member: Member, target: Path) -> bool:
        entry, rel = member.entry, member.rel
        old = self.record.get(rel)
        if entry is None or entry.sha256 is None or old is None or (old.sha256, old.size) != (entry.sha256, entry.size):
            return False
        parent = posixpath.dirname(rel)
        if parent not in self._parents:
            # Only through real directories of the current release: never link a host file.
            real = os.path.realpath(os.path.join(self.share, parent))
            self._parents[parent] = real == os.path.join(self.real, parent).rstrip("/")
        if not self._parents[parent]:
            return False
        source = self.share / rel
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != member.mode or st.st_dev != self.dev
                    or st.st_size != entry.size):
                return False
            if not self.unchanged(st, member) and not _same_bytes(fd, entry.sha256):
                return False  # edited in place since it was deployed: write a fresh copy
        finally:
            os.close(fd)
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            return False  # too many links, or protected_hardlinks: write it instead
        return True


def _same_bytes(fd: int, sha256: str) -> bool:
    digest = hashlib.sha256()
    with os.fdopen(os.dup(fd), "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == sha256


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[BundleReader]:
    """Open ``path`` and read its manifest and RECORD (strict: the first problem is refused, exit status 3)."""
    with _reader.open_bundle(path) as reader:
        yield BundleReader(reader)
