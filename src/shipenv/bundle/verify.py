"""``shipenv inspect`` and ``shipenv verify``: what a bundle says it is, and whether it still is.

Both take an archive or an unpacked bundle directory. An archive is read as a
stream and never unpacked: ``inspect`` stops after the first entries, where
:func:`shipenv.bundle.archive.write` puts ``manifest.json`` and ``RECORD``; ``verify``
hashes each member as it passes. Only ``verify --run`` writes the bundle to
disk, into a temporary directory whose path has a space, and removes it after.

``verify`` checks three things and reports all problems found in one error:

1. Every file, symlink and its target against ``.shipenv/RECORD``: what is
   missing, what changed, what was added. An archive is read through
   :mod:`shipenv.bundle.reader` in collect mode, so every rule that makes
   ``shipenv deploy`` refuse it (unsafe paths, devices, setuid bits, sizes
   that differ from RECORD, links leaving the bundle) is reported too, all
   at once; ``--run`` then unpacks it through the same reader, strict.
2. A relocation audit that needs no knowledge of the build host (the
   manifest records none of its paths): no ELF file may search an absolute
   RPATH/RUNPATH, no symlink may point outside the bundle, and no executable
   in ``bin/`` or ``.shipenv/`` may start with ``#!`` naming an absolute
   interpreter other than the shells every POSIX host has. Scripts elsewhere
   are not run by path (the stdlib carries ``#! /usr/local/bin/python`` in
   ``cgi.py``), so they are not held to this.
3. With ``run``, that a command works in a copy moved to a new place.

It runs past the house's 400 lines because ``inspect``, the audit rules and
``--run`` share its report types; the reading itself is :mod:`shipenv.bundle.reader`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from elftools.common.exceptions import ELFError

from shipenv.bundle import archive, elf, manifest, reader, unpack
from shipenv.bundle.manifest import Manifest, RecordEntry
from shipenv.errors import UsageError, VerifyError, listing
from shipenv.model import ElfInfo

Progress = Callable[[int, int], None]

_CHUNK = 1 << 20
_MANIFEST = manifest.MANIFEST.as_posix()
_RECORD = manifest.RECORD.as_posix()
#: ELF members are parsed from memory up to this size, from a temporary file above it.
_ELF_IN_MEMORY = 32 << 20
#: Interpreters every POSIX host has at these paths; a bundle's scripts may name them.
SYSTEM_INTERPRETERS = frozenset({"/bin/sh", "/bin/bash", "/bin/dash", "/usr/bin/sh", "/usr/bin/bash", "/usr/bin/env", "/bin/env"})
_RUN_TAIL = 20  # lines of a failed --run command's output that are shown


@dataclass(frozen=True)
class VerifyReport:
    name: str  #: NAME-VERSION
    files: int  #: entries of RECORD, all of which matched


@dataclass(frozen=True)
class Seen:
    """What a bundle holds at one path."""

    kind: Literal["file", "symlink", "other"]
    sha256: str | None = None
    size: int | None = None
    target: str | None = None


@dataclass(frozen=True)
class Mismatch:
    missing: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.missing or self.changed or self.extra)


def compare(record: Mapping[str, RecordEntry], seen: Mapping[str, Seen]) -> Mismatch:
    """What differs between RECORD and what was found, each list sorted."""
    changed = []
    for path in sorted(record.keys() & seen.keys()):
        want, got = record[path], seen[path]
        if want.symlink is not None:
            ok = got.kind == "symlink" and got.target == want.symlink
        elif want.sha256 is None:  # RECORD itself: it cannot hold its own digest
            ok = got.kind == "file"
        else:
            ok = got.kind == "file" and got.sha256 == want.sha256 and got.size == want.size
        if not ok:
            changed.append(path)
    return Mismatch(
        missing=tuple(sorted(record.keys() - seen.keys())),
        changed=tuple(changed),
        extra=tuple(sorted(seen.keys() - record.keys())),
    )


# -- the relocation audit --------------------------------------------------------------------


def elf_findings(rel: str, info: ElfInfo) -> list[str]:
    """Absolute search paths or NEEDED entries: the loader would look on the host, not in the bundle."""
    found = [f"{rel} (RPATH {p})" for p in info.rpath if p.startswith("/")]
    found += [f"{rel} (RUNPATH {p})" for p in info.runpath if p.startswith("/")]
    found += [f"{rel} (NEEDED {n})" for n in info.needed if n.startswith("/")]
    return found


def shebang_finding(rel: str, mode: int, head: bytes) -> str | None:
    """An executable in ``bin/`` or ``.shipenv/`` whose ``#!`` names an interpreter outside the bundle."""
    if not head.startswith(b"#!") or not mode & 0o111 or not rel.startswith(("bin/", ".shipenv/")):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    interpreter = words[0].decode("utf-8", "replace") if words else ""
    if interpreter.startswith("/") and interpreter not in SYSTEM_INTERPRETERS:
        return f"{rel} (#!{interpreter})"
    return None


def symlink_finding(rel: str, target: str) -> str | None:
    """A symlink that leaves the bundle works only where its target happens to exist."""
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        return f"{rel} (-> {target})"
    return None


def _elf_of(rel: str, stream: IO[bytes]) -> list[str]:
    try:
        info = elf.read_stream(stream)
    except (ELFError, OSError, ValueError, KeyError, AssertionError):
        return []  # not an ELF the loader would use either
    return elf_findings(rel, info)


# -- reading a bundle --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
    top: str  #: NAME-VERSION for an archive; the directory's name for a tree
    manifest: Manifest
    record: dict[str, RecordEntry]


def _exists(bundle: Path) -> None:
    if not os.path.lexists(bundle):
        raise UsageError(f"{bundle} does not exist.", hint="Give a bundle archive or an unpacked bundle directory.")


def _parse_head(label: Path, manifest_bytes: bytes | None, record_bytes: bytes | None, top: str) -> _Head:
    if manifest_bytes is None:
        raise VerifyError(f"{label} is not a shipenv bundle: it has no {_MANIFEST}.", hint="Give what shipenv build wrote.")
    if record_bytes is None:
        raise VerifyError(f"{label} is not a complete shipenv bundle: it has no {_RECORD}.", hint="Give what shipenv build wrote.")
    parsed = Manifest.parse(manifest_bytes, source=f"The {_MANIFEST} of {label}")
    try:
        record = manifest.parse_record(record_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerifyError(f"The {_RECORD} of {label} cannot be read ({exc}).") from None
    return _Head(top, parsed, record)


def _read_small(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() else None
    except OSError as exc:
        raise VerifyError(f"Cannot read {path}: {exc.strerror or exc}.") from exc


def _tree_head(root: Path) -> _Head:
    return _parse_head(root, _read_small(root / _MANIFEST), _read_small(root / _RECORD), root.name)


def _archive_head(path: Path) -> _Head:
    """manifest.json and RECORD from the front of the archive (the reader's head); stops reading there."""
    with reader.open_bundle(path, collect=True) as bundle:
        head = bundle.head
    return _Head(head.top, head.manifest, head.record)


@dataclass(frozen=True)
class ArchiveInfo:
    """What ``inspect`` shows about an archive file (``archive.Packed`` is what ``write`` wrote)."""

    format: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Inspection:
    """What ``shipenv inspect`` shows: the manifest, RECORD's totals and, for an archive, the archive."""

    manifest: Manifest
    size: int  #: bytes of every file RECORD lists
    files: int
    archive: ArchiveInfo | None

    def as_dict(self) -> dict[str, Any]:
        """The manifest's JSON object plus ``size``, ``files`` and ``archive`` (``inspect --json``)."""
        packed = None if self.archive is None else dict(vars(self.archive))
        return dict(self.manifest.to_dict(), size=self.size, files=self.files, archive=packed)


def inspect(bundle: Path) -> Inspection:
    """The bundle's manifest, plus the size and count of its files and, for an archive, the archive's.

    >>> inspect(Path("dist/app-2.0.0.tar.zst")).manifest.platform.glibc_floor  # doctest: +SKIP
    '2.36'
    """
    _exists(bundle)
    if bundle.is_dir():
        head = _tree_head(bundle)
        packed = None
    else:
        fmt = archive.detect(bundle)
        head = _archive_head(bundle)
        packed = ArchiveInfo(fmt, bundle.stat().st_size, _sha256(bundle))
    return Inspection(head.manifest, sum(e.size or 0 for e in head.record.values()), len(head.record), packed)


def read_sbom(bundle: Path) -> str:
    """The bundle's ``.shipenv/sbom.cdx.json``, checked against its RECORD entry."""
    from shipenv.bundle.sbom import SBOM

    _exists(bundle)
    want = SBOM.as_posix()
    if bundle.is_dir():
        head, data = _tree_head(bundle), _read_small(bundle / want)
    else:
        data = None
        with reader.open_bundle(bundle, collect=True) as walk:
            head = _Head(walk.head.top, walk.head.manifest, walk.head.record)
            for member in walk.members():
                if member.rel == want and member.kind == "file" and member.stream is not None:
                    if member.size > 4 * reader.HEAD_LIMIT:
                        raise VerifyError(f"{member.name} in {bundle} is implausibly large for an SBOM ({member.size:,} bytes).")
                    data = member.stream.read()
                    break
    entry = head.record.get(want)
    if data is None or entry is None:
        raise VerifyError(f"{bundle} has no SBOM ({want}); it was built by a shipenv that did not write one.", hint="Rebuild it with this shipenv.")
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise VerifyError(f"The SBOM of {bundle} differs from its RECORD entry: the bundle was changed after it was built.")
    return data.decode("utf-8")


def _sha256(path: Path) -> str:
    return manifest.hash_file(path)[0]


# -- verify -------------------------------------------------------------------------------------


class _Tally:
    """Counts files and bytes checked; calls ``progress`` at most ten times a second, and at the end."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.files = 0
        self.bytes = 0
        self._last = 0.0

    def add(self, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.bytes += nbytes
        now = time.monotonic()
        if self.progress is not None and now - self._last >= 0.1:
            self._last = now
            self.progress(self.files, self.bytes)

    def done(self) -> None:
        if self.progress is not None:
            self.progress(self.files, self.bytes)


def _scan_tree(root: Path, tally: _Tally) -> tuple[dict[str, Seen], list[str]]:
    seen: dict[str, Seen] = {}
    audit: list[str] = []
    for rel, full in manifest.walk(root):
        st = full.lstat()
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(full)
            seen[rel] = Seen("symlink", target=target)
            audit += filter(None, [symlink_finding(rel, target)])
            tally.add(1)
        elif stat.S_ISREG(st.st_mode):
            digest, size = manifest.hash_file(full)
            seen[rel] = Seen("file", digest, size)
            with full.open("rb") as f:
                head = f.read(4096)
                if head.startswith(b"\x7fELF"):
                    f.seek(0)
                    audit += _elf_of(rel, f)
            audit += filter(None, [shebang_finding(rel, st.st_mode, head)])
            tally.add(1, size)
        else:
            seen[rel] = Seen("other")
    return seen, audit


def _hash_member(member: reader.Member, tally: _Tally) -> list[str]:
    """Read one member as it streams past (the reader hashes it), and audit it."""
    stream = member.stream
    assert stream is not None
    first = stream.read(_CHUNK)
    tally.add(0, len(first))
    findings = list(filter(None, [shebang_finding(member.rel, member.mode, first)]))
    if not first.startswith(b"\x7fELF"):
        while chunk := stream.read(_CHUNK):
            tally.add(0, len(chunk))
    else:
        with tempfile.SpooledTemporaryFile(max_size=_ELF_IN_MEMORY) as spool:
            chunk = first
            while chunk:
                spool.write(chunk)
                chunk = stream.read(_CHUNK)
                tally.add(0, len(chunk))
            spool.seek(0)
            findings += _elf_of(member.rel, spool)
    tally.add(1)
    return findings


def _scan_archive(path: Path, tally: _Tally) -> tuple[_Head, reader.Findings, list[str]]:
    """One pass over the archive through the reader in collect mode: (head, its findings, audit findings)."""
    audit: list[str] = []
    with reader.open_bundle(path, collect=True) as walk:
        for member in walk.members():
            if member.kind == "file":
                audit += _hash_member(member, tally)
            elif member.kind == "symlink":
                audit += filter(None, [symlink_finding(member.rel, member.target)])
                tally.add(1)
            elif member.kind == "hardlink":
                tally.add(1)
        head = _Head(walk.head.top, walk.head.manifest, walk.head.record)
        return head, walk.findings, audit


def verify(bundle: Path, *, run: str | None = None, progress: Progress | None = None) -> VerifyReport:
    """Check every file of a bundle against its RECORD and audit it; optionally run ``run`` in a moved copy.

    Raises :class:`VerifyError` naming what is missing, changed or extra, and
    what still depends on absolute paths.
    """
    _exists(bundle)
    tally = _Tally(progress)
    is_dir = bundle.is_dir()
    refused: list[str] = []
    if is_dir:
        head = _tree_head(bundle)
        seen, audit = _scan_tree(bundle, tally)
        mismatch = compare(head.record, seen)
    else:
        archive.detect(bundle)
        head, findings, audit = _scan_archive(bundle, tally)
        mismatch = Mismatch(tuple(sorted(findings.missing)), tuple(sorted(findings.changed)), tuple(sorted(findings.extra)))
        refused = findings.refused
    tally.done()
    name = head.manifest.release
    problems = _describe(mismatch, audit, refused)
    if problems:
        if mismatch or refused:
            hint = "Copy the bundle again from the build's output, or rebuild it: it changed after the build."
        else:
            hint = "Rebuild the bundle; if shipenv build made it like this, please report it as a bug."
        raise VerifyError(f"{bundle} {'; and it '.join(problems)}.", hint=hint)
    if run is not None:
        _run_moved(bundle, name, is_dir, run)
    return VerifyReport(name, len(head.record))


def _describe(mismatch: Mismatch, audit: list[str], refused: list[str]) -> list[str]:
    problems = []
    if mismatch:
        parts = [
            f"{len(items)} {what} ({listing(list(items))})"
            for what, items in (("changed", mismatch.changed), ("missing", mismatch.missing), ("extra", mismatch.extra))
            if items
        ]
        problems.append(f"does not match its manifest: {', '.join(parts)}")
    if refused:
        problems.append(f"would be refused by shipenv deploy: {listing(refused)}")
    if audit:
        problems.append(f"depends on paths outside itself: {listing(sorted(audit))}")
    return problems


# -- --run ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def moved_copy(bundle: Path, name: str, is_dir: bool) -> Iterator[Path]:
    """The bundle unpacked (or copied) to a fresh temporary path with a space in it; removed after."""
    base = Path(tempfile.mkdtemp(prefix="shipenv verify "))
    try:
        dest = base / "moved copy" / name
        if is_dir:
            shutil.copytree(bundle, dest, symlinks=True)
        else:
            _extract(bundle, dest.parent)
        yield dest
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _extract(path: Path, dest: Path) -> None:
    """Unpack an archive that :func:`verify` has just checked, through the same reader in strict mode."""
    dest.mkdir(parents=True)
    with reader.open_bundle(path, outcome="nothing was run") as bundle:
        unpack.unpack(bundle, dest / bundle.head.top)


def _run_moved(bundle: Path, name: str, is_dir: bool, command: str) -> None:
    with moved_copy(bundle, name, is_dir) as root:
        proc = subprocess.run(["sh", "-c", command], cwd=root, capture_output=True, check=False)
        if proc.returncode != 0:
            output = (proc.stderr or proc.stdout).decode("utf-8", "replace").rstrip().splitlines()
            tail = "\n".join(f"  {line}" for line in output[-_RUN_TAIL:]) or "  (no output)"
            raise VerifyError(
                f"{command!r} exited with status {proc.returncode} in a copy of {name} moved to {root.parent}; it printed:\n{tail}",
                hint="The bundle's files match its manifest; the command itself fails in the moved copy.",
            )
