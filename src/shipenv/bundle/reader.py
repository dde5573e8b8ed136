"""The one reader of bundle archives: every rule an archive must keep, checked before its bytes are used.

``deploy``, ``verify``, ``verify --run``, ``inspect`` and ``inspect --sbom`` all
read an archive through :func:`open_bundle`, so a hostile archive that one of
them refuses, the others refuse too (STYLE.md: "two readers with different
rules are two security policies"). The archive is read once, front to back,
through :func:`shipenv.bundle.archive.open_stream` (bounded extended headers,
sparse members refused, damage as one sentence).

:attr:`Reader.head` is what the first entries say: ``archive.write`` puts
``NAME-VERSION/.shipenv/manifest.json`` and ``.shipenv/RECORD`` first, so both
are known before any other member is read. :meth:`Reader.members` then yields
every member as a checked :class:`Member` (path relative to the top, kind,
size, masked mode, link target, a stream of its bytes), each checked against
RECORD **before** it is yielded, so a user writes no byte that RECORD did not
promise.

The rules (each a sentence in :class:`~shipenv.errors.RefusedArchive`):

1. The first entry is a ``NAME-VERSION/`` directory (a plain name, see
   :func:`valid_release_name`) and its first files are ``.shipenv/manifest.json``
   and ``.shipenv/RECORD``, each at most 64 MiB; RECORD parses, gives a sha256
   for every file, names no absolute path or ``..``; the manifest matches its
   RECORD entry, parses, and names ``NAME-VERSION`` itself; ``.shipenv/facts``,
   when listed, says what the manifest says.
2. No absolute path, no ``..``, nothing outside ``NAME-VERSION/``.
3. Only directories, regular files, symlinks and hard links: no devices,
   FIFOs or other tar types (sparse members are refused by ``open_stream``).
4. No setuid or setgid bit. Other modes are **masked**, not refused: group and
   other write bits and the sticky bit are removed (``mode & 0o755``), for
   files and directories alike, the top directory included; shipenv build
   never writes them, and a release that others can write is code that root
   runs and anyone can change. deploy.sh applies the same rule.
5. No path twice; nothing below an earlier symlink or file (the classic
   "symlink, then a file written through it").
6. Every file and symlink listed in RECORD, with the same type; a file's size
   in its tar header equal to RECORD's (checked before a byte of it is read,
   so a 4 GiB member that RECORD says is 1 byte never reaches the disk); its
   bytes' sha256 equal to RECORD's (checked as the stream ends); a symlink's
   target equal to RECORD's and not leaving the release, lexically or through
   other symlinks of the archive (checked at the end, against the archive's own
   symlinks, before the caller trusts the tree).
7. A hard link only to a regular file earlier in the same archive (Python's
   ``tarfile`` writes those), with RECORD's digest for its own name.
8. Everything RECORD lists is in the archive.

A deploy may skip whole zstd frames (:meth:`Reader.skip`, after the head):
each member the archive's frame index lists for them is checked here by its
RECORD row under the same rules (2, 4, 5, 6; 8 over streamed and skipped
members together), and yielded as ``shared``, for the caller to hard-link
from the current release (:mod:`shipenv.deploy.extract` says why that is safe).

Two modes. **strict** (deploy, ``verify --run``): the first problem raises
:class:`~shipenv.errors.RefusedArchive` (exit status 3), as do a truncated or
corrupt archive and a file that is no archive. **collect** (``verify``,
``inspect``): problems are gathered in :attr:`Reader.findings` and the walk
goes on, so ``verify`` reports all of them in one error; an archive whose head
cannot be read at all is an :class:`~shipenv.errors.ArchiveError`.

The module is longer than the house's 400 lines on purpose: it is one
security policy, and each rule above is checked in exactly one place here;
split in two, the rules would again be read in two places.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shipenv.bundle import archive as archive_io
from shipenv.bundle import frames as _frames
from shipenv.bundle import manifest, tarstream
from shipenv.bundle.manifest import Manifest, RecordEntry
from shipenv.bundle.tarstream import Header, MemberFile, TarReader
from shipenv.errors import ArchiveError, ManifestError, RefusedArchive, ShipenvError, VerifyError, listing

Kind = Literal["dir", "file", "symlink", "hardlink"]

#: manifest.json and RECORD are read into memory; a real RECORD is about 100 bytes a file.
HEAD_LIMIT = 64 << 20
#: Modes keep these bits: no group/other write, no sticky bit (setuid/setgid are refused).
MODE_MASK = 0o755
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_MANIFEST = manifest.MANIFEST.as_posix()
_RECORD = manifest.RECORD.as_posix()
_FACTS = manifest.FACTS.as_posix()
_KINDS = {tarstream.CHRTYPE: "a character device", tarstream.BLKTYPE: "a block device", tarstream.FIFOTYPE: "a FIFO"}
_HINT = "Copy the archive again (compare it with its .sha256) or rebuild it with shipenv build."
_MAX_HOPS = 40  # symlinks followed while resolving one path, as Linux does
_CHUNK = 1 << 20


def valid_release_name(name: str) -> bool:
    """``NAME-VERSION`` is one plain path component that shells and JSON need not quote."""
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
        """Bytes of every file RECORD lists (sizes are checked against the members)."""
        return sum(e.size or 0 for e in self.record.values())


@dataclass
class Findings:
    """What collect mode found wrong, by kind; paths are relative to the top."""

    changed: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  #: the sentences strict mode would refuse with

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.extra or self.refused)


class MemberStream:
    """The bytes of one file member, hashed as they are read; reads at most the member's size."""

    def __init__(self, raw: MemberFile | None, data: bytes | None = None) -> None:
        self._raw = raw
        self._data = data
        self._pos = 0
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.ended = False

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n`` < 0), copied."""
        if n == 0:
            return b""
        if n > 0:
            return bytes(self.view(n))
        parts = []
        while piece := self.view(_CHUNK):
            parts.append(piece)
        return b"".join(parts)

    def view(self, n: int) -> memoryview:
        """Up to ``n`` (> 0) bytes without a copy (a view of the decoder's chunk); empty at the end."""
        if self._data is not None:
            chunk = memoryview(self._data)[self._pos : self._pos + n]
            self._pos += len(chunk)
        else:
            chunk = self._raw.view(n) if self._raw is not None else memoryview(b"")
        if chunk:
            self.sha256.update(chunk)
            self.size += len(chunk)
        else:
            self.ended = True
        return chunk

    def drain(self) -> None:
        while not self.ended:
            self.view(_CHUNK)


@dataclass(frozen=True)
class Member:
    """One checked member, as the reader's users see it."""

    name: str  #: as the archive names it (for messages)
    rel: str  #: relative to NAME-VERSION/; "" for the top directory itself
    kind: Kind
    mode: int  #: masked with MODE_MASK
    mtime: int
    size: int = 0
    target: str = ""  #: a symlink's target; a hard link's source, relative to the top
    entry: RecordEntry | None = None  #: its RECORD entry (None only in collect mode, for an extra)
    stream: MemberStream | None = None  #: a file's bytes (None for a shared file: see :meth:`Reader.skip`)
    shared: bool = False  #: in a skipped frame: the caller must hard-link it from the current release


class _Skip(Exception):
    """Internal: collect mode noted a problem with this member; go on with the next."""


class Reader:
    """One pass over a bundle archive: :attr:`head` at once, then :meth:`members`."""

    def __init__(self, path: Path, tar: TarReader, *, collect: bool = False,
                 outcome: str = "nothing was deployed", gate: _frames.Gate | None = None) -> None:
        self.path = path
        self._gate = gate
        self._shared: list[Member] = []
        self.skipped_frames = 0
        self.collect = collect
        self.outcome = outcome
        self.findings = Findings()
        self._tar = tar
        self._members = iter(tar)
        self._top = ""
        self._early: list[Header] = []  # directories before manifest.json
        self._head_files: dict[str, tuple[Header, bytes]] = {}
        self._dirs: set[str] = {""}
        self._files: dict[str, str] = {}  # regular files seen → sha256 (for hard links)
        self._symlinks: dict[str, str] = {}
        self._seen: set[str] = set()  # every RECORD-able path met, refused or not
        self._open: tuple[Member, MemberStream] | None = None
        self.head = self._read_head()

    # -- problems ------------------------------------------------------------------------

    def refusal(self, reason: str) -> RefusedArchive:
        return RefusedArchive(f"Refused {self.path.name}: {reason}; {self.outcome}.", hint=_HINT)

    def _refuse(self, reason: str) -> None:
        """Strict: raise. Collect: note it (the caller decides whether the member is still usable)."""
        if not self.collect:
            raise self.refusal(reason)
        self.findings.refused.append(reason)

    def _differs(self, rel: str, reason: str) -> None:
        if not self.collect:
            raise self.refusal(reason)
        self.findings.changed.add(rel)

    def _not_a_bundle(self, reason: str) -> ShipenvError:
        if not self.collect:
            return self.refusal(reason)
        return ArchiveError(f"{self.path} is not a shipenv bundle: {reason}.", hint="Give the archive that shipenv build wrote.")

    def _name(self, rel: str) -> str:
        return f"{self._top}/{rel}" if rel else self._top

    def _parts(self, name: str, what: str = "entry") -> list[str] | None:
        if name.startswith("/"):
            self._refuse(f"{what} {name!r} is an absolute path")
            return None
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            self._refuse(f"{what} {name!r} climbs out of its directory with '..'")
            return None
        return parts

    def _rel(self, name: str, what: str = "entry") -> str | None:
        parts = self._parts(name, what)
        if parts is None:
            return None
        if not parts or parts[0] != self._top:
            self._refuse(f"{what} {name!r} is outside {self._top}/")
            return None
        return "/".join(parts[1:])

    # -- the manifest and RECORD ---------------------------------------------------------------

    def _read_head(self) -> Head:
        for member in self._members:
            if not self._top:
                parts = self._parts(member.name)
                if not parts or not valid_release_name(parts[0]):
                    raise self._not_a_bundle(f"its first entry {member.name!r} is not under a NAME-VERSION/ directory")
                self._top = parts[0]
            rel = self._rel(member.name)
            if rel is None:
                raise self._not_a_bundle(f"its entry {member.name!r} comes before {_MANIFEST}")
            if member.isdir():
                self._early.append(member)
                continue
            if rel not in (_MANIFEST, _RECORD) or not member.isreg():
                if self.collect and not self._head_files:
                    raise self._not_a_bundle(f"it holds no NAME-VERSION/{_MANIFEST} at its start, where shipenv build puts it")
                raise self._not_a_bundle(f"it does not start with {self._top}/{_MANIFEST} and {_RECORD} as shipenv build "
                                         f"writes them (found {member.name!r} first)")
            if rel in self._head_files:
                raise self._not_a_bundle(f"{member.name!r} appears twice")
            if member.size > HEAD_LIMIT:
                raise self._not_a_bundle(f"{member.name!r} is implausibly large ({member.size:,} bytes)")
            self._head_files[rel] = (member, self._tar.extractfile(member).read())
            if len(self._head_files) == 2:
                break
        if len(self._head_files) < 2:
            if self.collect and _MANIFEST not in self._head_files:
                raise self._not_a_bundle(f"it holds no NAME-VERSION/{_MANIFEST}")
            raise self._not_a_bundle(f"it holds no {_MANIFEST} and {_RECORD}: it is not a shipenv bundle")
        return self._parse_head()

    def _parse_head(self) -> Head:
        record_bytes = self._head_files[_RECORD][1]
        try:
            record = manifest.parse_record(record_bytes)
        except (ValueError, UnicodeDecodeError) as exc:
            if self.collect:
                raise VerifyError(f"The {_RECORD} of {self.path} cannot be read ({exc}).") from None
            raise self.refusal(f"its RECORD cannot be read ({exc})") from None
        for path, entry in record.items():
            if self._parts(path, "RECORD path") is None:
                record = {p: e for p, e in record.items() if p != path}
            elif entry.symlink is None and entry.sha256 is None and path != _RECORD:
                self._refuse(f"its RECORD has no sha256 for {path!r}")
        manifest_bytes = self._head_files[_MANIFEST][1]
        want = record.get(_MANIFEST)
        if want is None or want.sha256 is None:
            self._refuse(f"{self._top}/{_MANIFEST} is not listed in RECORD")
        elif hashlib.sha256(manifest_bytes).hexdigest() != want.sha256 or len(manifest_bytes) != want.size:
            self._differs(_MANIFEST, f"{self._top}/{_MANIFEST} differs from its RECORD entry")
        try:
            parsed = Manifest.parse(manifest_bytes, source=f"{self._top}/{_MANIFEST}")
        except ManifestError as exc:
            if self.collect:
                raise
            raise self.refusal(exc.message.rstrip(".")) from None
        if parsed.release != self._top:
            self._refuse(f"its top directory {self._top}/ does not match the manifest's {parsed.release}")
        facts = record.get(_FACTS)
        if facts is not None and facts.sha256 != hashlib.sha256(manifest.render_facts(parsed)).hexdigest():
            self._refuse(f"its {_FACTS} does not say what its {_MANIFEST} says")
        return Head(self._top, parsed, record, hashlib.sha256(record_bytes).hexdigest())

    # -- skipped frames ----------------------------------------------------------------------------

    @property
    def index(self) -> _frames.Index | None:
        """The archive's frame index, when the decoder can skip frames (:func:`open_bundle` with ``skipping``)."""
        return self._gate.index if self._gate is not None else None

    def skip(self, frames: Iterable[int]) -> int:
        """Leave these frames of :attr:`index` undecoded; their members come out of :meth:`members` as ``shared``.

        Call it before :meth:`members`, or never (then nothing is skipped).
        The index is not trusted: each member it lists for a skipped frame
        is checked here as if the archive held it, by its RECORD row (kind,
        size, digest, symlink target) and every rule of the module
        docstring; a path the index lists that the frame does not hold ends
        as "appears twice" when the frame that does hold it is read, and one
        the frame holds that the index leaves out ends as "RECORD lists ...
        the archive lacks". A shared file is the caller's to link from a
        file it has proven to have RECORD's bytes. Returns how many frames
        are skipped: fewer than asked when the decoder had to go on first.
        """
        assert not self.collect
        index = self.index
        if self._gate is None or index is None:
            return 0
        skipped = self._gate.decide(frozenset(i for i in frames if 0 < i < len(index.frames)))
        for i in sorted(skipped):
            for listed in index.frames[i].members:
                self._shared.append(self._vouched(listed))
        self.skipped_frames = len(skipped)
        return self.skipped_frames

    def _vouched(self, listed: _frames.Listed) -> Member:
        """A member of a skipped frame, from its RECORD row, under the same rules as one read from the stream."""
        rel = listed.path
        name = self._name(rel)
        entry = self.head.record.get(rel)
        if (listed.kind == "d" or entry is None or (listed.kind == "l") != (entry.symlink is not None)
                or (entry.symlink is None and entry.sha256 is None)):
            raise self.refusal(f"its frame index lists {name!r} in a frame it skips, but RECORD does not list it as that")
        self._claim(rel)
        self._seen.add(rel)
        if listed.mode & (stat.S_ISUID | stat.S_ISGID):
            self._refuse(f"{name!r} has the setuid or setgid bit set (mode {listed.mode:o})")
        mode = listed.mode & MODE_MASK
        if entry.symlink is not None:
            self._symlink(rel, entry.symlink, entry)
            return Member(name, rel, "symlink", mode, listed.mtime, target=entry.symlink, entry=entry, shared=True)
        self._files[rel] = entry.sha256 or ""
        return Member(name, rel, "file", mode, listed.mtime, size=entry.size or 0, entry=entry, shared=True)

    def _symlink(self, rel: str, target: str, entry: RecordEntry | None) -> None:
        self._symlinks[rel] = target
        if entry is not None and entry.symlink != target:
            self._differs(rel, f"the symlink {self._name(rel)!r} -> {target!r} differs from its RECORD entry")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            self._refuse(f"the symlink {self._name(rel)!r} points outside the release (to {target!r})")

    # -- every member ----------------------------------------------------------------------------

    def members(self) -> Iterator[Member]:
        """Every member in archive order, each checked before it is yielded; then the end-of-archive checks.

        A file's stream must be read before the next member is asked for (what
        is left unread is read and hashed then): its digest is checked when it ends.
        """
        for info in self._early:
            member = self._check(info)
            if member is not None:
                yield member
        for rel in (_MANIFEST, _RECORD):
            info, data = self._head_files[rel]
            member = self._check(info, MemberStream(None, data))
            if member is not None:
                yield member
                self._close()
        if self._gate is not None:
            self._gate.release()  # skip() came first, or nothing is skipped
        yield from self._shared
        for info in self._members:
            member = self._check(info)
            if member is not None:
                yield member
                self._close()
        self._finish()

    def _close(self) -> None:
        """The last file's stream read to its end and its digest compared with RECORD."""
        if self._open is None:
            return
        member, stream = self._open
        self._open = None
        stream.drain()
        digest = stream.sha256.hexdigest()
        self._files[member.rel] = digest
        entry = member.entry
        if entry is not None and member.rel != _RECORD and entry.sha256 is not None and (
                digest != entry.sha256 or stream.size != entry.size):
            self._differs(member.rel, f"the bytes of {member.name!r} differ from its RECORD entry")

    def _check(self, info: Header, data: MemberStream | None = None) -> Member | None:
        rel = self._rel(info.name)
        if rel is None:
            return None
        try:
            return self._checked(info, rel, data)
        except _Skip:
            self._seen.add(rel)
            return None

    def _checked(self, info: Header, rel: str, data: MemberStream | None) -> Member:
        kind: Kind
        if info.isdir():
            kind = "dir"
        elif info.isreg():
            kind = "file"
        elif info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        else:
            what = _KINDS.get(info.type, f"of tar type {info.type!r}")
            self._refuse(f"entry {info.name!r} is {what}; a bundle holds only files, directories and symlinks")
            raise _Skip
        if info.mode & (stat.S_ISUID | stat.S_ISGID):
            self._refuse(f"{info.name!r} has the setuid or setgid bit set (mode {info.mode:o})")
        mode = info.mode & MODE_MASK
        if kind == "dir":
            if rel not in self._dirs:
                self._claim(rel)
                self._dirs.add(rel)
            return Member(info.name, rel, kind, mode, int(info.mtime))
        if kind == "hardlink":
            return self._hardlink(info, rel, mode)
        self._claim(rel)
        self._seen.add(rel)
        entry = self._entry(rel)
        if kind == "symlink":
            self._symlink(rel, info.linkname, entry)
            return Member(info.name, rel, kind, mode, int(info.mtime), target=info.linkname, entry=entry)
        if entry is not None and entry.symlink is not None:
            self._differs(rel, f"{self._name(rel)!r} is a file but RECORD lists it as a symlink")
        elif entry is not None and entry.size is not None and info.size != entry.size:
            self._differs(rel, f"{self._name(rel)!r} is {info.size} bytes in the archive but RECORD says {entry.size}")
        self._files[rel] = ""
        if data is None:
            data = MemberStream(self._tar.extractfile(info))
        member = Member(info.name, rel, kind, mode, int(info.mtime), size=info.size, entry=entry, stream=data)
        self._open = (member, data)
        return member

    def _hardlink(self, info: Header, rel: str, mode: int) -> Member:
        parts = [p for p in info.linkname.split("/") if p not in ("", ".")]
        source = "/".join(parts[1:]) if parts and parts[0] == self._top and ".." not in parts else None
        if info.linkname.startswith("/") or source is None or not self._files.get(source):
            self._refuse(f"the hard link {info.name!r} points to {info.linkname!r}, which is not a file unpacked "
                         "earlier from this archive")
            raise _Skip
        self._claim(rel)
        self._seen.add(rel)
        entry = self._entry(rel)
        if entry is not None and entry.sha256 != self._files[source]:
            self._differs(rel, f"the hard link {self._name(rel)!r} differs from its RECORD entry")
        self._files[rel] = self._files[source]
        return Member(info.name, rel, "hardlink", mode, int(info.mtime), size=(entry.size or 0) if entry else 0,
                      target=source, entry=entry)

    def _claim(self, rel: str) -> None:
        """Nothing met at ``rel`` yet, and no parent of it is a symlink or a file."""
        if not rel:
            self._refuse(f"entry {self._top!r} is not a directory")
            raise _Skip
        if rel in self._dirs or rel in self._files or rel in self._symlinks:
            self._refuse(f"{self._name(rel)!r} appears twice")
            raise _Skip
        parent = posixpath.dirname(rel)
        missing: list[str] = []
        while parent not in self._dirs:
            if parent in self._symlinks:
                self._refuse(f"{self._name(rel)!r} would be written through the symlink {self._name(parent)!r}")
                raise _Skip
            if parent in self._files:
                self._refuse(f"{self._name(rel)!r} would be written below the file {self._name(parent)!r}")
                raise _Skip
            missing.append(parent)
            parent = posixpath.dirname(parent)
        self._dirs.update(missing)

    def _entry(self, rel: str) -> RecordEntry | None:
        entry = self.head.record.get(rel)
        if entry is None:
            if not self.collect:
                raise self.refusal(f"{self._name(rel)!r} is not listed in RECORD")
            self.findings.extra.append(rel)
        return entry

    # -- the end ---------------------------------------------------------------------------------

    def _finish(self) -> None:
        missing = sorted(p for p in self.head.record if p not in self._seen)
        if missing:
            if not self.collect:
                raise self.refusal(f"RECORD lists {len(missing)} file(s) the archive lacks: {listing(missing)}")
            self.findings.missing.extend(missing)
        # Lexically fine links can still escape through another link ("s -> ." and "l -> s/..").
        for rel in sorted(self._symlinks):
            if self._escapes(rel):
                self._refuse(f"the symlink {self._name(rel)!r} -> {self._symlinks[rel]!r} resolves outside the release")

    def _escapes(self, rel: str) -> bool:
        """Does ``rel`` resolve outside the top, following the archive's symlinks as the kernel would?"""
        pending = rel.split("/")
        resolved: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    return True
                resolved.pop()
                continue
            resolved.append(part)
            target = self._symlinks.get("/".join(resolved))
            if target is not None:
                hops += 1
                if hops > _MAX_HOPS:
                    return False  # a loop: it resolves to nothing at all
                if target.startswith("/"):
                    return True
                resolved.pop()
                pending = target.split("/") + pending
        return False


@contextlib.contextmanager
def open_bundle(path: Path, *, collect: bool = False, outcome: str = "nothing was deployed",
                skipping: bool = False) -> Iterator[Reader]:
    """Open ``path`` and read its head; :meth:`Reader.members` reads the rest.

    With ``skipping`` (deploy), a ``.tar.zst`` with a frame index waits after
    its head for :meth:`Reader.skip`.

    In strict mode an archive that is cut short, corrupt or not an archive is
    refused too (:class:`RefusedArchive`, exit status 3), with the same sentence.
    """
    try:
        gate = _frames.Gate() if skipping and not collect else None
        with archive_io.open_stream(path, gate) as tar:
            yield Reader(path, tar, collect=collect, outcome=outcome, gate=gate)
    except RefusedArchive:
        raise
    except ArchiveError as exc:
        if collect:
            raise
        raise RefusedArchive(exc.message, hint=exc.hint) from None
