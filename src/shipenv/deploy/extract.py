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
  puts it in place (then one ``fsync`` of ``releases/``); its writeback is
  started early, by a ``syncfs`` in the background every 64 MiB unpacked
  (:class:`shipenv.deploy.layout.EarlyWriteback`).
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

Skipping whole frames. A ``.tar.zst`` that ``shipenv build`` wrote ends with
an index of its zstd frames and the members each holds
(:mod:`shipenv.bundle.frames`). After the head (manifest, RECORD) is read,
:meth:`_Sharer.skippable` picks the frames every member of which is a file
or symlink whose RECORD row in the new release (sha256 and size, or link
target) equals the current release's, and, for a file, whose current copy
passes the proof above (real directories, same device, owner, mode, size,
mtime, ctime not after the release's top), from ``lstat``. Those frames are
never decompressed: :meth:`shipenv.bundle.reader.Reader.skip` yields their
members as ``shared``, a file is linked by :meth:`_Sharer.__call__` and the
new link checked to be the very inode that was proven, still a regular file
with the same size, mode, owner and mtime (one that is not, swapped or
changed meanwhile, is unlinked again and ends the deploy with one
sentence), and a symlink is made from RECORD's target. Why that is as safe as unpacking:

- The index is a hint, never trusted. What ends up in the release is, file
  by file, either bytes checked against the new RECORD as they streamed, or
  the current release's file, whose RECORD row equals the new one and which
  is proven untouched since it was itself checked against that digest.
  Nothing is written that RECORD did not promise.
- The reader's completeness rule holds over written and linked together:
  everything RECORD lists is in the release, and nothing twice. An index
  that lists a path in a skipped frame that the frame does not hold ends in
  "appears twice" when the frame that does hold it is read; one that leaves
  out a path a skipped frame holds ends in "RECORD lists ... the archive
  lacks". Offsets that do not fall on the file's real frames, overlap, leave
  gaps or pass the end, a frame that gives other tar bytes than the index
  says, and an index above its size bound are refused as a corrupt archive
  by every reader, before a byte is unpacked.
- A signed archive's signature covers the whole file, index included
  (:mod:`shipenv.deploy.trust` hashes it before the deploy starts and
  checks before the switch that the file did not change).
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
from shipenv.bundle.frames import Index, Listed
from shipenv.bundle.manifest import RecordEntry
from shipenv.bundle.reader import MODE_MASK, Head, Member
from shipenv.bundle.unpack import Progress, Stats
from shipenv.errors import DeployError

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
        sharer = None if share is None else _Sharer(share, share_record or {}, os.stat(dest.parent).st_dev, self.head.top)
        index = self.reader.index
        if sharer is not None and index is not None:
            self.reader.skip(sharer.skippable(index, self.head.record))
        return _unpack.unpack(self.reader, dest, link=sharer, progress=progress)


class _Sharer:
    """Hard-links a file from the current release when it is the same file there."""

    def __init__(self, share: Path, record: dict[str, RecordEntry], dev: int, top: str) -> None:
        self.share = share
        self.top = top
        self._share = os.fspath(share)
        self._proven: dict[str, int] = {}  # a shared file's inode, as skippable() proved it
        self.real = os.path.realpath(share)
        self.record = record
        self.dev = dev
        self._parents: dict[str, bool] = {}
        try:
            self.top_ctime: int | None = os.lstat(self.real).st_ctime_ns
        except OSError:
            self.top_ctime = None
        self.uid = os.geteuid()

    def unchanged(self, st: os.stat_result, mtime: int) -> bool:
        """Not touched since its release was deployed, judged from ``fstat`` alone (the module docstring says why)."""
        return (self.top_ctime is not None and st.st_ctime_ns <= self.top_ctime and st.st_uid == self.uid
                and int(st.st_mtime) == mtime)

    def _same_row(self, rel: str, entry: RecordEntry | None) -> bool:
        old = self.record.get(rel)
        return entry is not None and old is not None and (old.sha256, old.size, old.symlink) == (entry.sha256, entry.size, entry.symlink)

    def _real_parent(self, rel: str) -> bool:
        """Only through real directories of the current release: never link a host file.

        Each directory is looked at once (``lstat``: a real directory, not a
        symlink to one), after its parent.
        """
        return self._real_dir(posixpath.dirname(rel))

    def _real_dir(self, rel: str) -> bool:
        known = self._parents.get(rel)
        if known is None:
            if not rel:
                known = os.path.realpath(self.share) == self.real
            else:
                try:
                    known = self._real_dir(posixpath.dirname(rel)) and stat.S_ISDIR(os.lstat(f"{self._share}/{rel}").st_mode)
                except OSError:
                    known = False
            self._parents[rel] = known
        return known

    def skippable(self, index: Index, record: dict[str, RecordEntry]) -> list[int]:
        """The frames (past the head) whose every member the current release has, unchanged: from ``lstat`` alone.

        A hint for the decoder; each file is proven again as it is linked (:meth:`__call__`).
        """
        frames = []
        for i, frame in enumerate(index.frames[1:], 1):
            if frame.members and all(self._provable(m, record.get(m.path)) for m in frame.members):
                frames.append(i)
        return frames

    def _provable(self, listed: Listed, entry: RecordEntry | None) -> bool:
        if listed.kind == "d" or entry is None or not self._same_row(listed.path, entry):
            return False
        if listed.kind == "l":
            return entry.symlink is not None  # made again from RECORD: nothing of the current release is used
        if entry.sha256 is None or entry.symlink is not None or listed.mode & ~MODE_MASK or not self._real_parent(listed.path):
            return False
        try:
            st = os.lstat(f"{self._share}/{listed.path}")
        except OSError:
            return False
        if (stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == listed.mode and st.st_dev == self.dev
                and st.st_size == entry.size and self.unchanged(st, listed.mtime)):
            self._proven[listed.path] = st.st_ino
            return True
        return False

    def __call__(self, member: Member, target: str) -> bool:
        if member.shared and self._shared(member, target):
            return True
        if member.shared:
            raise DeployError(f"{self.share / member.rel} changed while {self.top} was being deployed beside it; nothing was deployed.",
                              hint="Deploy again: nothing may write into the current release meanwhile.")
        return self._link(member, target)

    def _shared(self, member: Member, target: str) -> bool:
        """Link the file :meth:`skippable` proved, then check that the link is that very inode, still as proved."""
        proven = self._proven.get(member.rel)
        if proven is None or member.entry is None:
            return False
        try:
            os.link(f"{self._share}/{member.rel}", target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            return False
        st = os.lstat(target)
        if (st.st_ino == proven and st.st_dev == self.dev and stat.S_ISREG(st.st_mode) and st.st_size == member.entry.size
                and stat.S_IMODE(st.st_mode) == member.mode and st.st_uid == self.uid and int(st.st_mtime) == member.mtime):
            return True
        os.unlink(target)  # replaced since it was proved: not ours to keep
        return False

    def _link(self, member: Member, target: str) -> bool:
        entry, rel = member.entry, member.rel
        if entry is None or entry.sha256 is None or not self._same_row(rel, entry) or not self._real_parent(rel):
            return False
        source = f"{self._share}/{rel}"
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != member.mode or st.st_dev != self.dev
                    or st.st_size != entry.size):
                return False
            if not self.unchanged(st, member.mtime) and not _same_bytes(fd, entry.sha256):
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
    with _reader.open_bundle(path, skipping=True) as reader:
        yield BundleReader(reader)
