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
- Sharing: a file whose sha256, size and mode equal those of the same path
  in the current release is hard-linked from there instead of written.
  Deploying a new version of a large environment then writes only what
  changed. The archive's bytes for it are still read and checked, so a
  release verifies on its own and survives deleting the other one; the old
  file is hashed too, and linked only through real directories of the
  current release, never to a host file.
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
            digest = hashlib.sha256()
            with os.fdopen(os.dup(fd), "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != entry.sha256:
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


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[BundleReader]:
    """Open ``path`` and read its manifest and RECORD (strict: the first problem is refused, exit status 3)."""
    with _reader.open_bundle(path) as reader:
        yield BundleReader(reader)
