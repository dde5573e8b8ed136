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
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shipenv.bundle.reader import Member, Reader

Progress = Callable[[int, int], None]
#: (member, where it goes) → True when the caller made it (a hard link to an identical file) instead.
Link = Callable[[Member, Path], bool]

_CHUNK = 1 << 20


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
                os.link(self.dest / member.target, target, follow_symlinks=False)
            self._done()
        for rel in sorted(self.dirs, key=lambda d: d.count("/") if d else -1, reverse=True):
            os.chmod(self.dest / rel if rel else self.dest, self.dirs[rel])
        if self.progress is not None:
            self.progress(self.files, self.written + self.linked)
        return Stats(self.files, self.written, self.linked_files, self.linked)

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
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while chunk := src.read(_CHUNK):
                self.written += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, member.mode)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)

    def _done(self) -> None:
        self.files += 1
        now = time.monotonic()
        if self.progress is not None and now - self._last_report > 0.1:
            self._last_report = now
            self.progress(self.files, self.written + self.linked)
