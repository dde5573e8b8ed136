"""Archives assembled from compressed fragments, so a rebuild copies the bytes of unchanged layers.

A ``.tar.zst`` is a sequence of zstd frames and a ``.tar.gz`` of gzip members;
both formats define such streams as the concatenation of what the frames
hold, and every reader takes them (GNU tar, bsdtar, busybox tar, ``zstd -d``,
``gzip -d``, :func:`shipenv.bundle.archive.open_stream`). :func:`write` cuts
the tar stream of :func:`shipenv.bundle.archive.plan` into fragments, each
compressed on its own, in this order:

1. the head: the top directory, ``.shipenv/``, ``manifest.json`` and
   ``RECORD`` (still the first members: ``inspect`` and ``deploy`` rely on
   it), then the rest of ``.shipenv/`` (``facts``, the SBOM, ``deploy.sh``,
   the launcher's configuration), so that directory is complete early;
2. one fragment per :class:`Fragment` the caller gives (a cache layer whose
   files are still in the tree as it made them): its files and symlinks, in
   the walk's order. Its compressed bytes are kept in the fragment's
   ``store`` (the layer's cache entry), keyed by everything that changes
   them: the format, the level, the codec library's version, and every
   member's name (so the arcname), kind, mode, clamped mtime, size and link
   target. The caller vouches for the contents;
3. everything else (launchers, the manifest's neighbours, files a later
   stage replaced), in the walk's order;
4. **every other directory**, in the walk's order, then the end-of-archive
   blocks, padded to a whole 10240-byte record.

Directories come last, after their files: every reader makes a missing
parent itself (GNU tar and busybox with the umask's mode, ``shipenv deploy``
with 0755), and the directory's own entry then sets its mode (0755) and,
for GNU tar, its mtime, which no later file changes again. (Directories
first would leave GNU tar's directory mtimes at the time of extraction: the
files of a directory are spread over several fragments.)

A ``.tar.zst`` then ends with an index of its frames (where each one is,
in the file and in the tar stream, and the members it holds), in a zstd
skippable frame that every reader passes over: :mod:`shipenv.bundle.frames`
has its layout. ``shipenv deploy`` uses it to leave unchanged layers
compressed. A ``.tar.gz`` has no index: gzip's only places for data a
reader skips are a member's FEXTRA field (at most 64 KiB, less than the
index of a real bundle) and its FCOMMENT (text without NUL bytes), and
``.tar.zst`` is the default format; a ``.tar.gz`` deploy decodes every member.

The bytes do not depend on whether a fragment came from the store or was
compressed now (or there is no store, ``--no-cache``): a clean build, a
fully cached one and one without a cache give the same archive. They differ
from :func:`shipenv.bundle.archive.write`'s single pass (which ``tar.xz``,
plain ``tar`` and ``oci`` layers keep, and anything packed without layers),
whose member order is the plain walk. A stored fragment is checked by its size,
inode and mtime before it is copied, as cache entries are; one that does not
match is compressed again and replaced.

Fragments that must be compressed are compressed two at a time, each in a
thread with a compressor of its own, and written in order as they are done
(:func:`compressed`): the bytes are the same with one thread or sixty-four.

The module runs past the house's 400 lines because the store's rules (the
key, the checks before a stored fragment is used, a store that fills up
costing the store and not the build) and the order fragments are compressed
and written in are one policy: what may be copied, and when.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard
from zlib_ng import zlib_ng

from shipenv.bundle import archive
from shipenv.bundle import codecs as _codecs
from shipenv.bundle import frames as _frames
from shipenv.bundle.archive import Entry, FileSink, Packed, Progress, TarStream
from shipenv.bundle.codecs import CHUNK, Encoder
from shipenv.errors import ArchiveError

log = logging.getLogger(__name__)

FORMATS = ("tar.zst", "tar.gz")
_STORE_FORMAT = 1
#: Fragments compressed at once (:func:`compressed`): each has a zstd context of its own, 40-55 MB.
PARALLEL = 2
_SHOW_EVERY = 0.1  #: seconds between progress calls while a fragment is compressed
_KIND = {"dir": "d", "file": "f", "symlink": "l"}
_LIBRARIES = {"tar.zst": f"zstandard {zstandard.__version__} zstd {zstandard.ZSTD_VERSION}", "tar.gz": f"zlib-ng {zlib_ng.ZLIBNG_VERSION}"}


@dataclass(frozen=True)
class Fragment:
    """Files of the tree (root-relative paths) that go into a fragment of their own."""

    paths: frozenset[str]
    store: Path | None = None  #: where its compressed bytes are kept between builds


@dataclass(frozen=True)
class _Counts:
    tar: int  #: bytes of tar stream
    files: int
    bytes: int  #: of file content


@dataclass(frozen=True)
class Part:
    """One fragment compressed, in archive order: its bytes (an open file, at its start) and what it holds."""

    file: IO[bytes]
    counts: _Counts
    origin: Path  #: the stored fragment, or the directory of the temporary file it was compressed into
    entries: list[Entry]  #: its members, in order


class _Progress:
    """One ``progress(files, bytes)`` over all fragments: those written, and what the ones being compressed have read so far."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self.files = self.bytes = 0

    def add(self, counts: _Counts) -> None:
        self.files += counts.files
        self.bytes += counts.bytes
        self.show()

    def show(self, running: Iterable[_Live] = ()) -> None:
        if self._progress is not None:
            live = list(running)
            self._progress(self.files + sum(r.files for r in live), self.bytes + sum(r.bytes for r in live))


class _Stopped(Exception):
    """Internal: the archive is no longer being written (an error, an interrupt); a fragment's thread gives up."""


class _Live:
    """The progress of one fragment's thread (set there, read by the writing thread); it stops the thread when asked."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self.files = self.bytes = 0

    def __call__(self, files: int, nbytes: int) -> None:
        if self._stop.is_set():
            raise _Stopped
        self.files, self.bytes = files, nbytes


def write(
    root: Path,
    dest: Path,
    fmt: str,
    *,
    level: int | None,
    threads: int,
    mtime: int,
    arcname: str,
    fragments: Sequence[Fragment],
    progress: Progress | None = None,
) -> Packed:
    """Pack ``root`` as :func:`shipenv.bundle.archive.write` does, in fragments (see the module docstring).

    Formats other than ``tar.zst`` and ``tar.gz`` are written in one pass.
    """
    c = archive.codec(fmt, level, threads)
    if c.fmt not in FORMATS:
        return archive.write(root, dest, fmt, level=level, threads=threads, mtime=mtime, arcname=arcname, progress=progress)
    segments = split(archive.members(root, arcname, mtime), arcname, fragments)
    f = archive.create(dest)
    try:
        with f:
            sink = FileSink(f, dest)
            counter = _Progress(progress)
            index: list[_frames.Frame] = []
            tar = 0
            with contextlib.closing(compressed(segments, c, arcname, dest.parent, counter)) as parts:
                for part in parts:
                    start = sink.size
                    with part.file:
                        _copy(part, sink)
                    counter.add(part.counts)
                    index.append(_listed(part.entries, arcname, start, sink.size - start, tar, part.counts.tar))
                    tar += part.counts.tar
            if c.fmt == "tar.zst":
                sink.write(_frames.encode(index))
        return Packed(dest, sink.sha256.hexdigest(), sink.size)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise


def _listed(entries: list[Entry], arcname: str, offset: int, length: int, tar: int, tar_length: int) -> _frames.Frame:
    """One frame's row of the index: where it is and what it holds."""
    members = tuple(_frames.Listed(archive.relative(e, arcname), _KIND[e.kind], e.mode, e.mtime) for e in entries)
    return _frames.Frame(offset, length, tar, tar_length, members)


def split(entries: list[Entry], arcname: str, fragments: Sequence[Fragment]) -> list[tuple[list[Entry], Path | None]]:
    """The members of each fragment, in archive order: head, the given fragments, the rest, the directories."""
    first = {arcname, *(f"{arcname}/{rel}" for rel in archive.FIRST)}
    meta = f"{arcname}/{archive.FIRST[0]}/"
    head = [e for e in entries if e.name in first]
    head += [e for e in entries if e.kind != "dir" and e.name.startswith(meta) and e.name not in first]
    owner: dict[str, int] = {}
    for index, fragment in enumerate(fragments):
        for rel in fragment.paths:
            owner.setdefault(rel, index)
    parts: list[list[Entry]] = [[] for _ in fragments]
    rest: list[Entry] = []
    dirs: list[Entry] = []
    for e in entries:
        if e.name in first or (e.kind != "dir" and e.name.startswith(meta)):
            continue
        if e.kind == "dir":
            dirs.append(e)
            continue
        found = owner.get(archive.relative(e, arcname))
        (rest if found is None else parts[found]).append(e)
    return [(head, None), *((part, fragment.store) for part, fragment in zip(parts, fragments)), (rest, None), (dirs, None)]


def compressed(segments: list[tuple[list[Entry], Path | None]], c: archive.Codec, arcname: str, spool: Path,
               counter: _Progress) -> Generator[Part, None, None]:
    """Every fragment of :func:`split`'s ``segments`` compressed, in archive order; close it when done.

    Fragments are independent, so :data:`PARALLEL` of them are compressed at
    once, each in a thread of its own with its own compressor: zstd's output
    depends on the level only, not on the worker count, and each fragment is
    one frame (one gzip member), so the bytes are those of one fragment after
    the other. Compressing one at a time left a core idle at the end of each
    (a wheel under zstd's 8 MiB job size is a single job) and while the
    packing thread read files. The workers are shared out: with two cores,
    two fragments of one worker each (a zstd context with one worker holds
    about 40 MB; with two, about 55 MB).

    A fragment is compressed into its store's file, or when it has none (or
    the store cannot be written) into an unnamed temporary file in ``spool``:
    memory stays bounded whatever the fragments' sizes, and what is not yet
    written waits on disk. A stored fragment is opened where it is kept. The
    directories' fragment is compressed last: its end-of-archive blocks pad
    the whole tar stream, whose size is known only then.
    """
    *parts, (dirs, _none) = segments
    slots = max(1, min(PARALLEL, c.threads))
    each = archive.Codec(c.fmt, c.level, -(-c.threads // slots))
    stop = threading.Event()
    pending: deque[_Stored | _Running] = deque()
    pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="shipenv-pack")
    try:
        for entries, store in parts:
            if not entries:
                continue
            name = _key(c, entries) if store is not None else ""
            stored = _load(store, name) if store is not None else None
            if stored is not None:
                pending.append(_Stored(*stored, entries))
            else:
                live = _Live(stop)
                pending.append(_Running(pool.submit(_fragment, each, entries, arcname, store, name, spool, live), live))
        tar = 0
        while pending:
            job = pending[0]
            if isinstance(job, _Stored):
                part = Part(_open(job.path), job.counts, job.path, job.entries)
            else:
                part = _wait(job.future, counter, [j.live for j in pending if isinstance(j, _Running)])
            pending.popleft()
            tar += part.counts.tar
            yield part
        yield _to_spool(c, dirs, arcname, spool, None, end=tar)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for job in pending:  # compressed but never written: their files are closed (and the spools vanish)
            if isinstance(job, _Running) and not job.future.cancelled() and job.future.exception() is None:
                job.future.result().file.close()


@dataclass(frozen=True)
class _Stored:
    path: Path
    counts: _Counts
    entries: list[Entry]


@dataclass(frozen=True)
class _Running:
    future: Future[Part]
    live: _Live


def _wait(future: Future[Part], counter: _Progress, running: list[_Live]) -> Part:
    """The fragment, once compressed; showing progress while it is not."""
    while True:
        try:
            return future.result(timeout=_SHOW_EVERY)
        except FuturesTimeout:
            counter.show(running)


def _fragment(c: archive.Codec, entries: list[Entry], arcname: str, store: Path | None, name: str, spool: Path,
              live: _Live) -> Part:
    """One fragment compressed (in a thread of the pool): kept in ``store`` when it can be, else in ``spool``."""
    if store is not None:
        kept = _to_store(c, entries, arcname, store, name, live)
        if kept is not None:
            return kept
    return _to_spool(c, entries, arcname, spool, live)


def _to_store(c: archive.Codec, entries: list[Entry], arcname: str, store: Path, name: str, live: _Live) -> Part | None:
    """Compressed into the store's file, saved under its key, and opened at its start; None when the store cannot take it."""
    try:
        store.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(dir=store, prefix=f".{name[:12]}.", delete=False)
    except OSError as exc:
        log.warning("archive: cannot keep a fragment in %s (%s)", store, exc)
        return None
    try:
        out = _StoreFile(tmp)
        counts = _compress(out, c, entries, arcname, live)
        out.flush()
        _save(store, name, Path(tmp.name), counts)
        tmp.seek(0)
        return Part(tmp, counts, store / f"{name}.frag", entries)  # the file stays open under its new name (or none, if it could not be saved)
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


def _to_spool(c: archive.Codec, entries: list[Entry], arcname: str, spool: Path, live: _Live | None,
              *, end: int | None = None) -> Part:
    """Compressed into an unnamed temporary file in ``spool`` (the archive's directory), opened at its start."""
    try:
        tmp = tempfile.TemporaryFile(dir=spool)
    except OSError as exc:
        raise _cannot_spool(spool, exc) from exc
    try:
        out = _SpoolFile(tmp, spool)
        counts = _compress(out, c, entries, arcname, live, end=end)
        out.flush()
        tmp.seek(0)
        return Part(tmp, counts, spool, entries)
    except BaseException:
        _discard(tmp)
        raise


def _discard(f: IO[bytes]) -> None:
    """Close a file given up on; what its buffer still held may not fit either (a full disk)."""
    with contextlib.suppress(OSError):
        f.close()


def _compress(sink: _codecs.Sink, c: archive.Codec, entries: list[Entry], arcname: str, progress: Progress | None,
              *, end: int | None = None) -> _Counts:
    """One frame (zstd) or member (gzip) holding ``entries``; with ``end`` (the tar bytes before it), then the end-of-archive blocks."""
    assert c.level is not None
    out: Encoder = _codecs.encoder(c.fmt, c.level, c.threads, sink)
    try:
        tar = TarStream(out, progress)
        for entry in entries:
            tar.add(entry, archive.relative(entry, arcname))
        if end is not None:
            tar.write(archive.end_blocks(end + tar.total))
        tar.end()
        out.close()
    except BaseException:
        out.abort()
        raise
    return _Counts(tar.total, tar.files, tar.bytes)


def _key(c: archive.Codec, entries: list[Entry]) -> str:
    members = [(e.name, e.kind, e.mode, e.mtime, e.size, e.linkname) for e in entries]
    text = json.dumps([_STORE_FORMAT, c.fmt, c.level, _LIBRARIES[c.fmt], members], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _load(store: Path, name: str) -> tuple[Path, _Counts] | None:
    """A stored fragment whose file is as it was written (size, inode, mtime), with its counts."""
    path = store / f"{name}.frag"
    try:
        meta = json.loads((store / f"{name}.json").read_text())
        st = path.stat()
        if [st.st_size, st.st_ino, st.st_mtime_ns] != meta["file"]:
            raise ValueError("it changed since it was stored")
        return path, _Counts(int(meta["tar"]), int(meta["files"]), int(meta["bytes"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("archive: dropping stored fragment %s (%s)", path, exc)
        for stale in (path, store / f"{name}.json"):
            with contextlib.suppress(OSError):
                stale.unlink()
        return None


def _save(store: Path, name: str, tmp: Path, counts: _Counts) -> None:
    try:
        path = store / f"{name}.frag"
        os.replace(tmp, path)
        st = path.stat()
        meta = {"file": [st.st_size, st.st_ino, st.st_mtime_ns], "tar": counts.tar, "files": counts.files, "bytes": counts.bytes}
        (store / f".{name}.json").write_text(json.dumps(meta))
        os.replace(store / f".{name}.json", store / f"{name}.json")
    except OSError as exc:
        log.warning("archive: cannot keep a fragment in %s (%s)", store, exc)


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise _cannot_read(path, exc) from exc


def _copy(part: Part, sink: FileSink) -> None:
    """A compressed fragment into the archive."""
    try:
        while data := part.file.read(CHUNK):
            sink.write(data)
    except OSError as exc:
        raise _cannot_read(part.origin, exc) from exc


def _cannot_read(path: Path, exc: OSError) -> ArchiveError:
    return ArchiveError(f"Cannot read the compressed fragment {path}: {exc.strerror or exc}.",
                        hint="Remove the cache directory (or build with --no-cache) and build again.")


def _cannot_spool(spool: Path, exc: OSError) -> ArchiveError:
    return ArchiveError(f"Cannot write a temporary file in {spool}: {exc.strerror or exc}.",
                        hint="Check the free space and permissions of the output directory.")


class _StoreFailed(Exception):
    """Internal: the store's file could not be written; the fragment is compressed again into a spool file."""


class _StoreFile:
    """The store's temporary file as a compressor's sink: a failed write gives up on keeping the fragment, not the build."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def write(self, data: bytes | memoryview, /) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            raise _StoreFailed(exc.strerror or str(exc)) from exc

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            raise _StoreFailed(exc.strerror or str(exc)) from exc


class _SpoolFile:
    """A spool file as a compressor's sink: a failed write is the archive's failure, in one sentence."""

    def __init__(self, f: IO[bytes], spool: Path) -> None:
        self._f = f
        self._spool = spool

    def write(self, data: bytes | memoryview, /) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            raise _cannot_spool(self._spool, exc) from exc

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            raise _cannot_spool(self._spool, exc) from exc
