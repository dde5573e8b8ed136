"""Where a fragment's compressed streams are kept: in its layer's cache entry, so a rebuild copies them, or in a spool file.

:mod:`shipenv.bundle.fragments` compresses an archive in fragments, and a
cache layer's fragment as up to two streams: its mixed frames (every tar
header, and the content of the small files) and, in a ``.tar.zst``, its data
frames (the content of its large files). Each stream is kept in the
fragment's store (``fragments/`` in the layer's cache entry), as a ``.frag``
file of concatenated frames and a ``.json`` with their lengths (by group) and
what they hold, both named by :func:`key`: everything that changes the
stream's bytes. The caller vouches for the contents. The mixed frames are
keyed by the format, the level, the codec library's version, how the fragment
is cut into frames, and every member's name (so the arcname), kind, mode,
clamped mtime, size and link target; the data frames by the same settings
and each large file's path inside the tree, size and clamped mtime, but
**not the arcname**, which is in the headers only, so a build under a new
version's name copies them.

A stored stream is checked by its size, inode and mtime (and its frames'
lengths against its members) before it is copied, as cache entries are
(:func:`load`); one that does not match is dropped, compressed again and
replaced.

A store keeps the mixed streams of the last :data:`KEEP_MIXED` names only.
Every build under a new version's name (every CI build) stores one more for
each layer, and only a build under one of the last few names could copy one
again; left alone they were the one part of a cache that grew with every
build while the entry stayed in use (18 names had made pandas's store 99 MB),
which LRU pruning (``shipenv cache --prune``) cannot reach. So storing a mixed
stream drops the others beyond the newest :data:`KEEP_MIXED` by last use (its
``.json``'s mtime, set when it is stored or copied), except one used in the
last :data:`IN_USE` seconds: a build running now may be about to copy it. Data
frames are kept: one stream per layer serves every name.

A stream is compressed straight into its store's file (:func:`compress`): a
store that cannot take it (a full disk, a file where its directory should
be) costs the store and not the build, with a warning, and the stream is
compressed again into a spool file. A stream without a store (``--no-cache``,
the head, the rest, the directories) goes into a spool file at once: an
unnamed temporary file in the archive's directory (:func:`to_spool`), which
vanishes when closed; one that cannot be written is the archive's failure.
Either way memory stays bounded whatever the fragments' sizes: what is not
yet written into the archive waits on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import zstandard
from zlib_ng import zlib_ng

from shipenv.bundle import archive
from shipenv.bundle import codecs as _codecs
from shipenv.bundle.archive import Entry, FileSink
from shipenv.bundle.codecs import CHUNK
from shipenv.errors import ArchiveError

log = logging.getLogger(__name__)

_FORMAT = 2
#: Mixed streams (each for one arcname) a store keeps when it stores another, the newest by last use.
KEEP_MIXED = 3
#: Seconds within which a stream used or stored is kept whatever :data:`KEEP_MIXED` says: a build may be copying it.
IN_USE = 600.0
_KINDS = ("mixed", "data")
_LIBRARIES = {"tar.zst": f"zstandard {zstandard.__version__} zstd {zstandard.ZSTD_VERSION}", "tar.gz": f"zlib-ng {zlib_ng.ZLIBNG_VERSION}"}


@dataclass(frozen=True)
class Counts:
    """What a stream holds: its bytes of tar stream, its files, and their bytes of content."""

    tar: int  #: bytes of tar stream
    files: int
    bytes: int  #: of file content

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tar + other.tar, self.files + other.files, self.bytes + other.bytes)


@dataclass(frozen=True)
class Stream:
    """A fragment's mixed frames or its data frames, compressed: an open file at its start, and its frames' lengths.

    ``groups`` cut the frames where the other stream's go in between: the
    mixed stream's group ``i`` (the members up to and including the header of
    the fragment's ``i``-th large file) is followed by the data stream's
    group ``i`` (that file's content, in pieces).
    """

    file: IO[bytes]
    origin: Path  #: the stored file, or the directory of the temporary file it was compressed into
    groups: list[list[int]]
    counts: Counts

    def copy(self, n: int, sink: FileSink) -> None:
        """The next ``n`` bytes of the stream into ``sink``, a chunk at a time."""
        try:
            while n:
                data = self.file.read(min(CHUNK, n))
                if not data:
                    raise ArchiveError(f"Cannot read the compressed fragment {self.origin}: it is shorter than when it was stored.",
                                       hint=_REMOVE_CACHE)
                sink.write(data)
                n -= len(data)
        except OSError as exc:
            raise _cannot_read(self.origin, exc) from exc


@dataclass(frozen=True)
class Stored:
    """A stream found in the store, checked, not yet opened."""

    path: Path
    groups: list[list[int]]
    counts: Counts


class Work(Protocol):
    """A job's compression: its frames written into ``sink``, returning their lengths (by group) and what they hold."""

    def __call__(self, sink: _codecs.Sink) -> tuple[list[list[int]], Counts]: ...


def key(c: archive.Codec, kind: str, entries: list[Entry], large: list[Entry], arcname: str, cut: tuple[int, int]) -> str:
    """The store's name for a fragment's mixed frames (every member's name, so the arcname) or its data frames (not).

    ``cut`` is how the fragment is cut into frames: the smallest file with data frames of its own, and their largest piece
    (:data:`shipenv.bundle.fragments.DATA_FRAME_MIN`, :data:`shipenv.bundle.fragments.PIECE`).
    """
    if kind == "mixed":
        members: list[object] = [(e.name, e.kind, e.mode, e.mtime, e.size, e.linkname) for e in entries]
    else:
        members = [(archive.relative(e, arcname), e.size, e.mtime) for e in large]
    text = json.dumps([_FORMAT, kind, c.fmt, c.level, _LIBRARIES[c.fmt], *cut, members], separators=(",", ":"))
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()}"


def load(store: Path, name: str, shape: list[int]) -> Stored | None:
    """A stored stream whose file is as it was written (size, inode, mtime) and whose frames fit ``shape``; its use is noted.

    The use is its ``.json``'s mtime, which :func:`_trim` goes by.
    """
    path = store / f"{name}.frag"
    try:
        meta = json.loads((store / f"{name}.json").read_text())
        st = path.stat()
        if [st.st_size, st.st_ino, st.st_mtime_ns] != meta["file"]:
            raise ValueError("it changed since it was stored")
        groups = meta["frames"]
        if ([len(g) for g in groups] != shape or not all(type(n) is int and n > 0 for g in groups for n in g)
                or sum(sum(g) for g in groups) != st.st_size):
            raise ValueError("its frames do not fit its members")
        stored = Stored(path, groups, Counts(int(meta["tar"]), int(meta["files"]), int(meta["bytes"])))
        with contextlib.suppress(OSError):
            os.utime(store / f"{name}.json")  # its last use (:func:`_trim`); the check is on the .frag's own stat
        return stored
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("archive: dropping stored fragment %s (%s)", path, exc)
        _drop(store, name)
        return None


def _drop(store: Path, name: str) -> None:
    """Remove a stored stream, its ``.json`` first: a build that finds the ``.json`` then finds the ``.frag``, or finds neither."""
    for suffix in (".json", ".frag"):
        with contextlib.suppress(OSError):
            (store / f"{name}{suffix}").unlink()


def _save(store: Path, name: str, tmp: Path, groups: list[list[int]], counts: Counts) -> None:
    try:
        path = store / f"{name}.frag"
        os.replace(tmp, path)
        st = path.stat()
        meta = {"file": [st.st_size, st.st_ino, st.st_mtime_ns], "frames": groups, "tar": counts.tar, "files": counts.files,
                "bytes": counts.bytes}
        (store / f".{name}.json").write_text(json.dumps(meta, separators=(",", ":")))
        os.replace(store / f".{name}.json", store / f"{name}.json")
    except OSError as exc:
        log.warning("archive: cannot keep a fragment in %s (%s)", store, exc)
        return
    if _kind(name) == "mixed":
        _trim(store, name)


def _kind(name: str) -> str:
    """What a stored stream's name (:func:`key`) says it holds: ``mixed`` or ``data`` (anything else: an older layout)."""
    return name.partition("-")[0]


def _trim(store: Path, kept: str) -> None:
    """Drop the mixed streams beyond the newest :data:`KEEP_MIXED` by last use, and what an older layout left.

    An older layout's streams (names without a kind) and a ``.frag`` without
    its ``.json`` (a build stopped between the two) are never loaded again.
    Nothing used in the last :data:`IN_USE` seconds goes, nor ``kept``.
    """
    now = time.time()
    mixed: list[tuple[float, str]] = []
    stale: list[tuple[float, str]] = []
    described: set[str] = set()
    frags: dict[str, float] = {}
    try:
        with os.scandir(store) as found:
            for e in found:
                stem, dot, suffix = e.name.rpartition(".")
                if not dot or stem.startswith(".") or suffix not in ("json", "frag"):
                    continue
                try:
                    used = e.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                if suffix == "frag":
                    frags[stem] = used
                    continue
                described.add(stem)
                kind = _kind(stem)
                if kind == "mixed":
                    mixed.append((used, stem))
                elif kind not in _KINDS:
                    stale.append((used, stem))
    except OSError:
        return
    mixed.sort(reverse=True)
    stale += [(used, stem) for stem, used in frags.items() if stem not in described]
    for used, stem in mixed[KEEP_MIXED:] + stale:
        if stem != kept and now - used >= IN_USE:
            _drop(store, stem)


def opened(jobs: list[Stored | Stream]) -> tuple[Stream, ...]:
    """The fragment's streams, the stored ones opened now (and closed again if another cannot be)."""
    streams: list[Stream] = []
    try:
        for job in jobs:
            streams.append(Stream(_open(job.path), job.path, job.groups, job.counts) if isinstance(job, Stored) else job)
    except BaseException:
        for job, s in zip(jobs, streams):
            if isinstance(job, Stored):
                s.file.close()
        raise
    return tuple(streams)


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise _cannot_read(path, exc) from exc


def compress(work: Work, store: Path | None, name: str, spool: Path) -> Stream:
    """One job run (in a thread of the pool): its stream kept in ``store`` when it can be, else in ``spool``."""
    if store is not None:
        kept = _to_store(work, store, name)
        if kept is not None:
            return kept
    return to_spool(work, spool)


def _to_store(work: Work, store: Path, name: str) -> Stream | None:
    """Compressed into the store's file, saved under its key, and opened at its start; None when the store cannot take it."""
    try:
        store.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(dir=store, prefix=f".{name[:12]}.", delete=False)
    except OSError as exc:
        log.warning("archive: cannot keep a fragment in %s (%s)", store, exc)
        return None
    try:
        out = _Sink(tmp, lambda exc: _StoreFailed(exc.strerror or str(exc)))
        groups, counts = work(out)
        out.flush()
        _save(store, name, Path(tmp.name), groups, counts)
        tmp.seek(0)
        return Stream(tmp, store / f"{name}.frag", groups, counts)  # the file stays open under its new name (or none, if it could not be saved)
    except _StoreFailed as exc:
        log.warning("archive: cannot keep a fragment in %s (%s)", store, exc)
        _discard(tmp)
        return None
    except BaseException:
        _discard(tmp)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)  # gone already when it was saved


def to_spool(work: Work, spool: Path) -> Stream:
    """Compressed into an unnamed temporary file in ``spool`` (the archive's directory), opened at its start."""
    try:
        tmp = tempfile.TemporaryFile(dir=spool)
    except OSError as exc:
        raise _cannot_spool(spool, exc) from exc
    try:
        out = _Sink(tmp, lambda exc: _cannot_spool(spool, exc))
        groups, counts = work(out)
        out.flush()
        tmp.seek(0)
        return Stream(tmp, spool, groups, counts)
    except BaseException:
        _discard(tmp)
        raise


def _discard(f: IO[bytes]) -> None:
    """Close a file given up on; what its buffer still held may not fit either (a full disk)."""
    with contextlib.suppress(OSError):
        f.close()


_REMOVE_CACHE = "Remove the cache directory (or build with --no-cache) and build again."


def _cannot_read(path: Path, exc: OSError) -> ArchiveError:
    return ArchiveError(f"Cannot read the compressed fragment {path}: {exc.strerror or exc}.", hint=_REMOVE_CACHE)


def _cannot_spool(spool: Path, exc: OSError) -> ArchiveError:
    return ArchiveError(f"Cannot write a temporary file in {spool}: {exc.strerror or exc}.",
                        hint="Check the free space and permissions of the output directory.")


class _StoreFailed(Exception):
    """Internal: the store's file could not be written; the fragment is compressed again into a spool file."""


class _Sink:
    """A temporary file as a compressor's sink; a failed write or flush raises what ``fail`` makes of the OSError.

    For the store's file that gives up on keeping the fragment, not the build
    (:class:`_StoreFailed`); for a spool file it is the archive's failure, in one sentence.
    """

    def __init__(self, f: IO[bytes], fail: Callable[[OSError], Exception]) -> None:
        self._f = f
        self._fail = fail

    def write(self, data: bytes | memoryview, /) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            raise self._fail(exc) from exc

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            raise self._fail(exc) from exc
