"""Unpack a bundle archive safely, checking every byte against its RECORD as it streams.

The archive is read once, front to back (``archive.open_stream``), and never
trusted: a server deploys what CI uploaded, and a tar file can name any path,
link anywhere and carry device nodes. What may come out of it is exactly what
``shipenv build`` puts in: directories, regular files and symlinks under one
top directory ``NAME-VERSION/``, each file listed in ``.shipenv/RECORD`` with
its sha256. ``archive.write`` puts ``manifest.json`` and ``RECORD`` first, so
both are known before any other byte is written (:meth:`BundleReader.head`):
the caller checks the host and the releases against them, then asks for the
rest (:meth:`BundleReader.extract`).

Refused, each with one sentence: absolute paths; ``..``; entries outside
``NAME-VERSION/``; a path that goes through an earlier symlink entry (the
classic "symlink, then a file written through it"); symlinks that resolve
outside the release; device nodes, FIFOs and anything else that is not a
file, directory or symlink; setuid/setgid bits; the same path twice; files
missing from RECORD, differing from it, or listed in it but absent.

Hard links are accepted only to a regular file unpacked earlier from the same
archive (``tarfile`` writes one for a file whose inode it already stored), and
checked against RECORD under their own name. A hard link naming anything else
(``/etc/passwd``, a file of another release) is refused: linking cannot write
outside the release, but it would let a release share an inode with a host
file, so that the release's ``chmod`` or an in-place edit changes both.

Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` in directories this
module made itself, so nothing is ever written outside ``dest``. Owners in the
archive are ignored: files belong to whoever deploys.

A file whose sha256 and mode equal those of the same path in the current
release is hard-linked from there instead of written (``share``): deploying a
new version of a large environment then writes only what changed. The linked
file is hashed too, and the archive's bytes for it are still read and checked,
so a release verifies on its own and survives deleting the other one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import posixpath
import re
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shipenv.bundle import archive as archive_io
from shipenv.bundle import manifest
from shipenv.bundle.manifest import Manifest, RecordEntry
from shipenv.errors import ManifestError, RefusedArchive, listing

Progress = Callable[[int, int], None]

_CHUNK = 1 << 20
#: manifest.json and RECORD are read into memory; a real RECORD is ~100 bytes a file.
_HEAD_LIMIT = 64 << 20
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_MANIFEST = manifest.MANIFEST.as_posix()
_RECORD = manifest.RECORD.as_posix()
_FACTS = manifest.FACTS.as_posix()
_KINDS = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


def valid_release_name(name: str) -> bool:
    """``NAME-VERSION`` must be one plain path component that shells and JSON need not quote."""
    return bool(_NAME_RE.fullmatch(name)) and ".." not in name


@dataclass(frozen=True)
class Head:
    """What the first two files of a bundle archive say about it."""

    top: str  #: NAME-VERSION, the archive's top directory and the release's name
    manifest: Manifest
    record: dict[str, RecordEntry]
    record_sha256: str  #: identifies the content: RECORD holds every file's digest

    @property
    def size(self) -> int:
        return sum(e.size or 0 for e in self.record.values())


@dataclass(frozen=True)
class Stats:
    files: int
    written_bytes: int
    linked_files: int
    linked_bytes: int


class _Refused(Exception):
    """Internal: a reason to refuse, turned into a DeployError naming the archive."""


def refusal(archive: Path, reason: str) -> RefusedArchive:
    return RefusedArchive(
        f"Refused {archive.name}: {reason}; nothing was deployed.",
        hint="Copy the archive again (compare it with its .sha256) or rebuild it with shipenv build.",
    )


def _parts(name: str, what: str = "entry") -> list[str]:
    if name.startswith("/"):
        raise _Refused(f"{what} {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(f"{what} {name!r} climbs out of its directory with '..'")
    return parts


class BundleReader:
    """One pass over a bundle archive: :meth:`head` first, then optionally :meth:`extract`."""

    def __init__(self, path: Path, tar: tarfile.TarFile) -> None:
        self.path = path
        self._tar = tar
        self._members = iter(tar)
        self._top = ""
        self._pending_dirs: list[tarfile.TarInfo] = []
        self._head_members: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
        self.head = self._read_head()

    # -- the manifest and RECORD -------------------------------------------------

    def _rel(self, name: str, what: str = "entry") -> str:
        parts = _parts(name, what)
        if not parts or parts[0] != self._top:
            raise _Refused(f"{what} {name!r} is outside {self._top}/")
        return "/".join(parts[1:])

    def _read_head(self) -> Head:
        try:
            return self._read_head_inner()
        except _Refused as exc:
            raise refusal(self.path, str(exc)) from None

    def _read_head_inner(self) -> Head:
        for member in self._members:
            if not self._top:
                parts = _parts(member.name)
                if not parts or not valid_release_name(parts[0]):
                    raise _Refused(f"its first entry {member.name!r} is not under a NAME-VERSION/ directory")
                self._top = parts[0]
            rel = self._rel(member.name)
            if member.isdir():
                self._pending_dirs.append(member)
                continue
            if rel not in (_MANIFEST, _RECORD) or not member.isreg():
                raise _Refused(
                    f"it does not start with {self._top}/{_MANIFEST} and {_RECORD} as shipenv build writes them "
                    f"(found {member.name!r} first)"
                )
            if rel in self._head_members:
                raise _Refused(f"{member.name!r} appears twice")
            if member.size > _HEAD_LIMIT:
                raise _Refused(f"{member.name!r} is implausibly large ({member.size:,} bytes)")
            f = self._tar.extractfile(member)
            assert f is not None
            self._head_members[rel] = (member, f.read())
            if len(self._head_members) == 2:
                break
        if len(self._head_members) < 2:
            raise _Refused(f"it holds no {_MANIFEST} and {_RECORD}: it is not a shipenv bundle")

        record_bytes = self._head_members[_RECORD][1]
        try:
            record = manifest.parse_record(record_bytes)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Refused(f"its RECORD cannot be read ({exc})") from None
        for path, entry in record.items():
            _parts(path, "RECORD path")
            if entry.symlink is None and entry.sha256 is None and path != _RECORD:
                raise _Refused(f"its RECORD has no sha256 for {path!r}")
        manifest_bytes = self._head_members[_MANIFEST][1]
        self._check_bytes(_MANIFEST, manifest_bytes, record)
        try:
            parsed = Manifest.parse(manifest_bytes, source=f"{self._top}/{_MANIFEST}")
        except ManifestError as exc:
            raise _Refused(exc.message.rstrip(".")) from None
        if parsed.release != self._top:
            raise _Refused(f"its top directory {self._top}/ does not match the manifest's {parsed.release}")
        facts = record.get(_FACTS)
        if facts is not None and facts.sha256 != hashlib.sha256(manifest.render_facts(parsed)).hexdigest():
            raise _Refused(f"its {_FACTS} does not say what its {_MANIFEST} says")
        return Head(self._top, parsed, record, hashlib.sha256(record_bytes).hexdigest())

    def _check_bytes(self, rel: str, data: bytes, record: dict[str, RecordEntry]) -> None:
        entry = record.get(rel)
        if entry is None or entry.sha256 is None:
            raise _Refused(f"{self._top}/{rel} is not listed in RECORD")
        if hashlib.sha256(data).hexdigest() != entry.sha256 or len(data) != entry.size:
            raise _Refused(f"{self._top}/{rel} differs from its RECORD entry")

    # -- the rest ----------------------------------------------------------------

    def extract(self, dest: Path, *, share: Path | None = None, share_record: dict[str, RecordEntry] | None = None,
                progress: Progress | None = None) -> Stats:
        """Unpack everything into ``dest`` (which must not exist; its parent must).

        OSErrors (a full disk) propagate; the caller removes ``dest``.
        """
        try:
            return _Extraction(self, dest, share, share_record or {}, progress).run()
        except _Refused as exc:
            raise refusal(self.path, str(exc)) from None


class _Extraction:
    def __init__(self, reader: BundleReader, dest: Path, share: Path | None,
                 share_record: dict[str, RecordEntry], progress: Progress | None) -> None:
        self.reader = reader
        self.head = reader.head
        self.top = reader.head.top
        self.dest = dest
        self.share = share
        self.share_real = os.path.realpath(share) if share is not None else ""
        self.share_record = share_record
        self.progress = progress
        self.dirs: dict[str, int] = {"": 0o755}  # made by us → final mode
        self.symlinks: set[str] = set()
        self.files: dict[str, str] = {}  # regular files → sha256, for hard links inside the archive
        self.files_done = 0
        self.written = 0
        self.linked_files = 0
        self.linked = 0
        self._shared_parents: dict[str, bool] = {}
        self._last_report = 0.0

    def run(self) -> Stats:
        os.mkdir(self.dest, 0o700)
        self.dev = os.stat(self.dest).st_dev
        for member in self.reader._pending_dirs:
            self._directory(member)
        for rel, (member, data) in self.reader._head_members.items():
            self._regular(member, rel, io.BytesIO(data))
        for member in self.reader._members:
            self._member(member)
        self._finish()
        return Stats(self.files_done, self.written, self.linked_files, self.linked)

    def _name(self, rel: str) -> str:
        return f"{self.top}/{rel}" if rel else self.top

    def _member(self, member: tarfile.TarInfo) -> None:
        rel = self.reader._rel(member.name)
        if member.isdir():
            self._directory(member)
        elif member.isreg():
            f = self.reader._tar.extractfile(member)
            assert f is not None
            self._regular(member, rel, f)
        elif member.issym():
            self._symlink(member, rel)
        elif member.islnk():
            self._hardlink(member, rel)
        else:
            kind = _KINDS.get(member.type, f"of tar type {member.type!r}")
            raise _Refused(f"entry {member.name!r} is {kind}; a bundle holds only files, directories and symlinks")

    def _claim(self, rel: str) -> None:
        """Check that nothing was unpacked at ``rel`` yet and make its parent directories."""
        if not rel:
            raise _Refused(f"entry {self.top!r} is not a directory")
        if rel in self.dirs or rel in self.files or rel in self.symlinks:
            raise _Refused(f"{self._name(rel)!r} appears twice")
        parent = posixpath.dirname(rel)
        missing: list[str] = []
        while parent not in self.dirs:
            if parent in self.symlinks:
                raise _Refused(f"{self._name(rel)!r} would be written through the symlink {self._name(parent)!r}")
            if parent in self.files:
                raise _Refused(f"{self._name(rel)!r} would be written below the file {self._name(parent)!r}")
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for d in reversed(missing):
            os.mkdir(self.dest / d, 0o755)
            self.dirs[d] = 0o755

    def _mode(self, member: tarfile.TarInfo) -> int:
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            raise _Refused(f"{member.name!r} has the setuid or setgid bit set (mode {member.mode:o})")
        return member.mode & 0o777

    def _directory(self, member: tarfile.TarInfo) -> None:
        rel = self.reader._rel(member.name)
        mode = self._mode(member)
        if rel in self.dirs:  # a directory entry after its files: fine, only the mode is new
            self.dirs[rel] = mode
            return
        self._claim(rel)
        os.mkdir(self.dest / rel, 0o700)
        self.dirs[rel] = mode

    def _entry(self, rel: str) -> RecordEntry:
        entry = self.head.record.get(rel)
        if entry is None:
            raise _Refused(f"{self._name(rel)!r} is not listed in RECORD")
        return entry

    def _regular(self, member: tarfile.TarInfo, rel: str, src: IO[bytes]) -> None:
        mode = self._mode(member)
        self._claim(rel)
        entry = self._entry(rel)
        if entry.symlink is not None:
            raise _Refused(f"{self._name(rel)!r} is a file but RECORD lists it as a symlink")
        target = self.dest / rel
        digest = hashlib.sha256()
        size = 0
        if rel != _RECORD and self._link_shared(rel, entry, mode, target):
            while chunk := src.read(_CHUNK):  # the archive must still match its RECORD
                digest.update(chunk)
                size += len(chunk)
            self.linked += size
            self.linked_files += 1
        else:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)
            self.written += size
        if rel != _RECORD and (digest.hexdigest() != entry.sha256 or size != entry.size):
            raise _Refused(f"the bytes of {self._name(rel)!r} differ from its RECORD entry")
        self.files[rel] = digest.hexdigest()
        self._done(size)

    def _link_shared(self, rel: str, entry: RecordEntry, mode: int, target: Path) -> bool:
        """Hard-link ``rel`` from the current release when it is the same file there."""
        if self.share is None:
            return False
        old = self.share_record.get(rel)
        if old is None or old.sha256 != entry.sha256 or old.size != entry.size:
            return False
        parent = posixpath.dirname(rel)
        if parent not in self._shared_parents:
            # Only through real directories of the current release: never link a host file.
            real = os.path.realpath(os.path.join(self.share, parent))
            self._shared_parents[parent] = real == os.path.join(self.share_real, parent).rstrip("/")
        if not self._shared_parents[parent]:
            return False
        source = self.share / rel
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode or st.st_dev != self.dev or st.st_size != entry.size:
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

    def _symlink(self, member: tarfile.TarInfo, rel: str) -> None:
        self._claim(rel)
        entry = self._entry(rel)
        if entry.symlink != member.linkname:
            raise _Refused(f"the symlink {self._name(rel)!r} -> {member.linkname!r} differs from its RECORD entry")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), member.linkname))
        if member.linkname.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise _Refused(f"the symlink {self._name(rel)!r} points outside the release (to {member.linkname!r})")
        os.symlink(member.linkname, self.dest / rel)
        self.symlinks.add(rel)
        self._done(0)

    def _hardlink(self, member: tarfile.TarInfo, rel: str) -> None:
        try:
            source = self.reader._rel(member.linkname, "hard link target")
        except _Refused:
            source = None
        if source is None or source not in self.files:
            raise _Refused(
                f"the hard link {member.name!r} points to {member.linkname!r}, which is not a file unpacked "
                "earlier from this archive"
            )
        self._claim(rel)
        entry = self._entry(rel)
        if entry.sha256 != self.files[source]:
            raise _Refused(f"the hard link {self._name(rel)!r} differs from its RECORD entry")
        os.link(self.dest / source, self.dest / rel, follow_symlinks=False)
        self.files[rel] = self.files[source]
        self._done(0)

    def _done(self, size: int) -> None:
        self.files_done += 1
        now = time.monotonic()
        if self.progress is not None and now - self._last_report > 0.1:
            self._last_report = now
            self.progress(self.files_done, self.written + self.linked)

    def _finish(self) -> None:
        unpacked = self.files.keys() | self.symlinks
        missing = sorted(p for p in self.head.record if p not in unpacked)
        if missing:
            raise _Refused(f"RECORD lists {len(missing)} file(s) the archive lacks: {listing(missing)}")
        # Lexically fine links can still escape through another link ("s -> ." and "l -> s/..").
        real_dest = os.path.realpath(self.dest)
        for rel in sorted(self.symlinks):
            real = os.path.realpath(self.dest / rel)
            if real != real_dest and not real.startswith(real_dest + "/"):
                target = os.readlink(self.dest / rel)
                raise _Refused(f"the symlink {self._name(rel)!r} -> {target!r} resolves outside the release")
        for rel in sorted(self.dirs, key=lambda d: d.count("/") if d else -1, reverse=True):
            os.chmod(self.dest / rel if rel else self.dest, self.dirs[rel])
        if self.progress is not None:
            self.progress(self.files_done, self.written + self.linked)


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[BundleReader]:
    """Open ``path`` and read its manifest and RECORD; the rest is read by ``extract``."""
    with archive_io.open_stream(path) as tar:
        yield BundleReader(path, tar)
