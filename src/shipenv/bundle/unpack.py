"""The one writer of a bundle archive to disk: what :mod:`shipenv.bundle.reader` yields, made into files.

It lives in ``bundle/``, not ``deploy/``, because two sides write a bundle
out: ``shipenv deploy`` (:mod:`shipenv.deploy.extract`, which adds the hard
links to the current release through :data:`Link`) and ``verify --run``
(:mod:`shipenv.bundle.verify`), and ``bundle`` may not import ``deploy``. Both
then unpack under the same rules, in strict mode: nothing is written that the
reader has not checked first (path, type, size against RECORD, masked mode).
A ``shared`` member (its frame was never decompressed: :meth:`Reader.skip`)
must be made by :data:`Link`; a shared symlink is made from its RECORD target.

Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` in directories this
module made itself, so nothing is written outside ``dest``; directories are
made 0700 and get their (masked) modes and their mtimes at the end, deepest
first (as GNU tar does: nothing written into a directory afterwards changes its
mtime again), and the top directory ends as the archive says, masked (0755 for
what shipenv builds). A directory the archive does not list gets 0755 and the
mtime its last entry gave it.
Owners in the archive are ignored: files belong to whoever unpacks. OSErrors
(a full disk, a name too long) propagate; the caller removes ``dest``.

Files are written by two threads of their own (:class:`_Writers`): the
reading thread parses, checks and hashes; the writers create files, write
them, set modes and times, and make the archive's own hard links. Creating an
inode is mostly kernel time (a quarter to half a millisecond on an ext4
without a journal) that releases the GIL, so two writers on two cores halve
it. A file goes to one writer whole: one queued op (``"file"``: open, every
byte, utime, close; created with its mode when the umask keeps it, else
fchmod too) for a file of up to :data:`SMALL` bytes, the views of the
decoder's chunks it arrived in, never copied; a larger one as ``"open"``,
``"data"``... ``"close"`` on the same writer, in order. Ops are handed over in
batches (up to :data:`_BATCH` ops or :data:`SMALL` bytes: one queue hand-off
and thread wake-up for many small files, not one each), and each writer holds
at most :data:`_DEPTH` batches (a few tens of MiB in all). What the order
promises:

- a directory exists before anything in it: directories and symlinks are made
  by the reading thread before anything below them is queued;
- a hard link of the archive is made after its source is complete: it is
  queued on the writer that writes the source, behind it;
- the first OSError of either writer (a full disk) reaches the caller: the
  reading thread raises it at its next op, or :func:`unpack` when it has
  drained both writers, before it sets the directories' modes and returns.
"""

from __future__ import annotations

import os
import posixpath
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shipenv.bundle.reader import MODE_MASK, Member, Reader
from shipenv.errors import ArchiveError

Progress = Callable[[int, int], None]
#: (member, the path it goes to) → True when the caller made it (a hard link to an identical file) instead.
Link = Callable[[Member, str], bool]

#: Files up to this size are queued as one op; larger ones in pieces of this size.
SMALL = 1 << 20
_DEPTH = 8
_BATCH = 32
_WRITERS = 2
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC



class _Op:
    """One queued write: ``file`` (open, write ``pieces``, fchmod, utime, close), ``open``, ``data``, ``close``, ``link`` or ``end``."""

    __slots__ = ("kind", "mode", "mtime", "path", "pieces", "target")

    def __init__(self, kind: str, path: str = "", mode: int = 0, mtime: int = 0, pieces: list[memoryview] | None = None,
                 target: str = "") -> None:
        self.kind = kind
        self.path = path
        self.mode = mode
        self.mtime = mtime
        self.pieces = pieces or []
        self.target = target


_END = _Op("end")


class _Writer:
    """Runs one queue of file system writes in order, in a thread of its own; the first OSError is kept."""

    def __init__(self, umask_keeps_modes: bool) -> None:
        self._queue: queue.Queue[list[_Op]] = queue.Queue(_DEPTH)
        self._batch: list[_Op] = []
        self._bytes = 0
        self._with_mode = umask_keeps_modes
        self.error: OSError | None = None
        self._fd = -1
        self._thread = threading.Thread(target=self._run, name="shipenv-write", daemon=True)
        self._thread.start()

    def put(self, op: _Op, nbytes: int = 0) -> None:
        batch = self._batch
        batch.append(op)
        self._bytes += nbytes
        if len(batch) >= _BATCH or self._bytes >= SMALL:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            self._queue.put(self._batch)
            self._batch = []
            self._bytes = 0

    def join(self) -> None:
        self.flush()
        self._queue.put([_END])
        self._thread.join()

    def _run(self) -> None:
        while True:
            for op in self._queue.get():
                if op is _END:
                    if self._fd >= 0:
                        os.close(self._fd)
                        self._fd = -1
                    return
                if self.error is not None:
                    continue  # drain: the reading thread raises the error at its next put
                try:
                    self._do(op)
                except OSError as exc:
                    self.error = exc

    def _do(self, op: _Op) -> None:
        kind = op.kind
        if kind == "file":
            if self._with_mode:  # no fchmod: the umask removes nothing of the mode
                fd = os.open(op.path, _FLAGS, op.mode)
                try:
                    _write(fd, op.pieces)
                    os.utime(fd, (op.mtime, op.mtime))
                finally:
                    os.close(fd)
                return
            fd = os.open(op.path, _FLAGS, 0o600)
            try:
                _write(fd, op.pieces)
                os.fchmod(fd, op.mode)
                os.utime(fd, (op.mtime, op.mtime))
            finally:
                os.close(fd)
        elif kind == "data":
            _write(self._fd, op.pieces)
        elif kind == "open":
            self._fd = os.open(op.path, _FLAGS, 0o600)
        elif kind == "close":
            fd, self._fd = self._fd, -1
            try:
                os.fchmod(fd, op.mode)
                os.utime(fd, (op.mtime, op.mtime))
            finally:
                os.close(fd)
        else:
            os.link(op.path, op.target, follow_symlinks=False)


def _write(fd: int, pieces: list[memoryview]) -> None:
    for view in pieces:
        while view:
            view = view[os.write(fd, view):]


class _Writers:
    """The writing threads of one unpack; files alternate between them, a file's ops stay on one."""

    def __init__(self) -> None:
        keeps = _umask_keeps_modes()
        self._all = [_Writer(keeps) for _ in range(_WRITERS)]
        self._next = 0

    def pick(self) -> _Writer:
        self._next = (self._next + 1) % len(self._all)
        return self._all[self._next]

    def put(self, writer: _Writer, op: _Op, nbytes: int = 0) -> None:
        """Queue ``op`` (of ``nbytes`` to write); raise the first error a writer met (the reading thread stops there)."""
        for w in self._all:
            if w.error is not None:
                raise w.error
        writer.put(op, nbytes)

    def finish(self, *, check: bool = True) -> None:
        """Wait for every queued write; raise the first that failed (unless ``check`` is false)."""
        for w in self._all:
            w.join()
        for w in self._all:
            if check and w.error is not None:
                raise w.error


def _umask_keeps_modes() -> bool:
    """Whether the umask removes no bit of :data:`MODE_MASK`, so files can be created with their mode (no fchmod).

    Read from ``/proc/self/status`` (Linux 4.7+): ``os.umask`` reads it only
    by setting it, for every thread at once. Unknown: False (fchmod, as before).
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return not int(line.split()[1], 8) & MODE_MASK
    except (OSError, ValueError, IndexError):
        pass
    return False


@dataclass(frozen=True)
class Stats:
    files: int
    written_bytes: int
    linked_files: int  #: shared files included
    linked_bytes: int
    shared_files: int = 0  #: files and symlinks of skipped frames, never decompressed (Reader.skip)
    skipped_frames: int = 0


def unpack(reader: Reader, dest: Path, *, link: Link | None = None, progress: Progress | None = None) -> Stats:
    """Write every member of ``reader`` under ``dest`` (which must not exist; its parent must)."""
    return _Unpack(dest, link, progress).run(reader)


class _Unpack:
    def __init__(self, dest: Path, link: Link | None, progress: Progress | None) -> None:
        self.dest = dest
        self.root = os.fspath(dest)  # paths are joined as str: no Path object per member
        self.link = link
        self.progress = progress
        self.dirs: dict[str, tuple[int, int | None]] = {"": (0o755, None)}  # made by us → final mode, and mtime if listed
        self.files = self.written = self.linked_files = self.linked = self.shared = 0
        self._writer_of: dict[str, _Writer] = {}  # files queued → their writer, which a hard link to one follows
        self._last_report = 0.0

    def run(self, reader: Reader) -> Stats:
        os.mkdir(self.dest, 0o700)
        self.writers = _Writers()
        try:
            self._members(reader)
        except BaseException:
            self.writers.finish(check=False)  # the reader's refusal, not what a writer met after it
            raise
        self.writers.finish()
        for rel in sorted(self.dirs, key=lambda d: d.count("/") if d else -1, reverse=True):  # deepest first: no later change in it
            path, (mode, mtime) = f"{self.root}/{rel}" if rel else self.root, self.dirs[rel]
            os.chmod(path, mode)
            if mtime is not None:
                os.utime(path, (mtime, mtime))
        if self.progress is not None:
            self.progress(self.files, self.written + self.linked)
        return Stats(self.files, self.written, self.linked_files, self.linked, self.shared, reader.skipped_frames)

    def _members(self, reader: Reader) -> None:
        root, dirs = self.root, self.dirs
        for member in reader.members():
            rel = member.rel
            if member.kind == "dir":
                if rel not in dirs:
                    self._parents(rel)
                    os.mkdir(f"{root}/{rel}", 0o700)
                dirs[rel] = (member.mode, member.mtime)
                continue
            self._parents(rel)
            target = f"{root}/{rel}"
            if member.kind == "file":
                self._file(member, target)
            elif member.kind == "symlink":
                os.symlink(member.target, target)
                self.shared += member.shared
            else:
                writer = self._writer_of.get(member.target) or self.writers.pick()
                self.writers.put(writer, _Op("link", f"{root}/{member.target}", target=target))
            self._done()

    def _parents(self, rel: str) -> None:
        """Make the parent directories the archive did not list (the reader checked none is a link)."""
        missing = []
        parent = posixpath.dirname(rel)
        while parent not in self.dirs:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for d in reversed(missing):
            os.mkdir(f"{self.root}/{d}", 0o755)
            self.dirs[d] = (0o755, None)

    def _file(self, member: Member, target: str) -> None:
        if self.link is not None and self.link(member, target):
            self.linked += member.size
            self.linked_files += 1
            self.shared += member.shared
            return  # the reader still reads and checks the archive's bytes (unless its frame was skipped)
        src = member.stream
        if member.shared or src is None:  # Link proves and links a shared file or raises; this is a bug's net
            raise ArchiveError(f"{member.name} is in a frame that was not unpacked, and it could not be linked.")
        writer = self.writers.pick()
        self._writer_of[member.rel] = writer
        if member.size <= SMALL:  # one op: the views of the chunks it arrived in (one, or two across a chunk's end)
            pieces = []
            while piece := src.view(SMALL):
                pieces.append(piece)
                self.written += len(piece)
            self.writers.put(writer, _Op("file", target, member.mode, member.mtime, pieces), member.size)
            return
        self.writers.put(writer, _Op("open", target))
        while piece := src.view(SMALL):
            self.written += len(piece)
            self.writers.put(writer, _Op("data", pieces=[piece]), len(piece))
        self.writers.put(writer, _Op("close", mode=member.mode, mtime=member.mtime))

    def _done(self) -> None:
        self.files += 1
        if self.progress is not None:
            now = time.monotonic()
            if now - self._last_report > 0.1:
                self._last_report = now
                self.progress(self.files, self.written + self.linked)
