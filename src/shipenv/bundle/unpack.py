"""The one writer of a bundle archive to disk: what :mod:`shipenv.bundle.reader` yields, made into files.

It lives in ``bundle/``, not ``deploy/``, because two sides write a bundle
out: ``shipenv deploy`` (:mod:`shipenv.deploy.extract`, which adds the hard
links to the current release through :data:`Link`) and ``verify --run``
(:mod:`shipenv.bundle.verify`), and ``bundle`` may not import ``deploy``. Both
then unpack under the same rules, in strict mode: nothing is written that the
reader has not checked first (path, type, size against RECORD, masked mode).

Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` in directories this
module made itself, so nothing is written outside ``dest``; directories are
made 0700 and get their (masked) modes at the end, deepest first, and the top
directory ends as the archive says, masked (0755 for what shipenv builds).
Owners in the archive are ignored: files belong to whoever unpacks. OSErrors
(a full disk, a name too long) propagate; the caller removes ``dest``.

Files are written by a thread of their own (:class:`_Writer`): the reading
thread parses, checks and hashes; the writer opens, writes, sets modes and
times, and makes the archive's own hard links, in archive order, with at most
16 chunks (16 MiB) queued. ``os.open`` and ``os.write`` release the GIL, so on
two cores the two overlap. Directories and symlinks are made by the reading
thread before anything below them is queued, so the writer never waits for
them; the writer is drained, and its first error raised, before
:func:`unpack` sets the directories' modes and returns.
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

from shipenv.bundle.reader import Member, Reader

Progress = Callable[[int, int], None]
#: (member, where it goes) → True when the caller made it (a hard link to an identical file) instead.
Link = Callable[[Member, Path], bool]

_CHUNK = 1 << 20
_DEPTH = 16

#: ("open", path, mode, mtime), ("data", bytes), ("close",), ("link", source, target), ("end",)
_Op = tuple[str] | tuple[str, bytes] | tuple[str, str, str] | tuple[str, str, int, int]


class _Writer:
    """Runs the file system's writes of one unpack in order, in a thread of its own; the first OSError is kept."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Op] = queue.Queue(_DEPTH)
        self.error: OSError | None = None
        self._fd = -1
        self._thread = threading.Thread(target=self._run, name="shipenv-write", daemon=True)
        self._thread.start()

    def put(self, op: _Op) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(op)

    def finish(self, *, check: bool = True) -> None:
        """Wait for every queued write; raise the first that failed (unless ``check`` is false)."""
        self._queue.put(("end",))
        self._thread.join()
        if check and self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            op = self._queue.get()
            if op[0] == "end":
                break
            if self.error is not None:
                continue  # drain: the reading thread raises the error at its next put
            try:
                self._do(op)
            except OSError as exc:
                self.error = exc
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _do(self, op: _Op) -> None:
        kind = op[0]
        if kind == "data":
            assert len(op) == 2 and isinstance(op[1], bytes)
            view = memoryview(op[1])
            while view:
                view = view[os.write(self._fd, view):]
        elif kind == "open":
            assert len(op) == 4 and isinstance(op[1], str) and isinstance(op[2], int) and isinstance(op[3], int)
            self._fd = os.open(op[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._mode, self._mtime = op[2], op[3]
        elif kind == "close":
            fd, self._fd = self._fd, -1
            try:
                os.fchmod(fd, self._mode)
                os.utime(fd, (self._mtime, self._mtime))
            finally:
                os.close(fd)
        else:
            assert len(op) == 3 and isinstance(op[1], str) and isinstance(op[2], str)
            os.link(op[1], op[2], follow_symlinks=False)


@dataclass(frozen=True)
class Stats:
    files: int
    written_bytes: int
    linked_files: int
    linked_bytes: int


def unpack(reader: Reader, dest: Path, *, link: Link | None = None, progress: Progress | None = None) -> Stats:
    """Write every member of ``reader`` under ``dest`` (which must not exist; its parent must)."""
    return _Unpack(dest, link, progress).run(reader)


class _Unpack:
    def __init__(self, dest: Path, link: Link | None, progress: Progress | None) -> None:
        self.dest = dest
        self.link = link
        self.progress = progress
        self.dirs: dict[str, int] = {"": 0o755}  # made by us → final mode
        self.files = self.written = self.linked_files = self.linked = 0
        self._last_report = 0.0

    def run(self, reader: Reader) -> Stats:
        os.mkdir(self.dest, 0o700)
        self.writer = _Writer()
        try:
            self._members(reader)
        except BaseException:
            self.writer.finish(check=False)  # the reader's refusal, not what the writer met after it
            raise
        self.writer.finish()
        for rel in sorted(self.dirs, key=lambda d: d.count("/") if d else -1, reverse=True):
            os.chmod(self.dest / rel if rel else self.dest, self.dirs[rel])
        if self.progress is not None:
            self.progress(self.files, self.written + self.linked)
        return Stats(self.files, self.written, self.linked_files, self.linked)

    def _members(self, reader: Reader) -> None:
        for member in reader.members():
            if member.kind == "dir":
                if member.rel not in self.dirs:
                    self._parents(member.rel)
                    os.mkdir(self.dest / member.rel, 0o700)
                self.dirs[member.rel] = member.mode
                continue
            self._parents(member.rel)
            target = self.dest / member.rel
            if member.kind == "file":
                self._file(member, target)
            elif member.kind == "symlink":
                os.symlink(member.target, target)
            else:
                self.writer.put(("link", str(self.dest / member.target), str(target)))
            self._done()

    def _parents(self, rel: str) -> None:
        """Make the parent directories the archive did not list (the reader checked none is a link)."""
        missing = []
        parent = posixpath.dirname(rel)
        while parent not in self.dirs:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for d in reversed(missing):
            os.mkdir(self.dest / d, 0o755)
            self.dirs[d] = 0o755

    def _file(self, member: Member, target: Path) -> None:
        src = member.stream
        assert src is not None
        if self.link is not None and self.link(member, target):
            self.linked += member.size
            self.linked_files += 1
            return  # the reader still reads and checks the archive's bytes
        self.writer.put(("open", str(target), member.mode, member.mtime))
        while chunk := src.read(_CHUNK):
            self.written += len(chunk)
            self.writer.put(("data", chunk))
        self.writer.put(("close",))

    def _done(self) -> None:
        self.files += 1
        now = time.monotonic()
        if self.progress is not None and now - self._last_report > 0.1:
            self._last_report = now
            self.progress(self.files, self.written + self.linked)
