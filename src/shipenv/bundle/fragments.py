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
   ``store`` (the layer's cache entry: :mod:`shipenv.bundle.fragstore`),
   keyed by everything that changes them. The caller vouches for the
   contents. In a ``.tar.zst``, the content of each regular file of at least
   :data:`DATA_FRAME_MIN` bytes (with its tar padding) is in **data frames**
   of its own, at most :data:`PIECE` bytes of tar each, compressed one-shot
   by a single thread; everything else (every tar header, the large files'
   too, and the small files) is in **mixed frames** between them, one per run
   of members, through the same encoder as the other fragments. Every frame
   boundary is a 512-byte tar block boundary. The two kinds are stored apart,
   as two streams, the data frames keyed **without the arcname**, which is in
   the headers only. A rebuild under a new version's name (every CI build)
   thus compresses the mixed frames again and copies the data frames (42 %
   of the tar and 45 % of the compressed bytes of a 351 MB tree of numpy,
   pandas, cryptography and the like). The fragment is assembled from both
   streams as it is written into the archive, frame run by frame run, so
   nothing is stored twice; its row in the index spans all its frames;
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

The bytes do not depend on whether a fragment (or either of its streams)
came from the store or was compressed now (or there is no store,
``--no-cache``): a clean build, a fully cached one, one under a new name
whose data frames were stored by an earlier one, and one without a cache
give the same archive. They differ
from :func:`shipenv.bundle.archive.write`'s single pass (which ``tar.xz``,
plain ``tar`` and ``oci`` layers keep, and anything packed without layers),
whose member order is the plain walk. A stored stream is checked before it
is copied (:func:`shipenv.bundle.fragstore.load`); one that does not match is
compressed again and replaced.

Streams that must be compressed are compressed two at a time, each in a
thread with a compressor of its own, and written in order as they are done
(:func:`compressed`): the bytes are the same with one thread or sixty-four.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import threading
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from shipenv.bundle import archive, fragstore
from shipenv.bundle import codecs as _codecs
from shipenv.bundle import frames as _frames
from shipenv.bundle.archive import Entry, FileSink, Packed, Progress, TarStream
from shipenv.bundle.codecs import Encoder

FORMATS = ("tar.zst", "tar.gz")
#: A layer's regular file of at least this many bytes has its content in zstd frames of its own (``.tar.zst``),
#: whose bytes and stored key leave out the arcname: a new version copies them. A data frame starts without the
#: window the mixed frame before it built, which is what it costs. Measured on a 351 MB tree of 11,745 files
#: (numpy, pandas, cryptography, lxml, psycopg, ...; a rebuild under a new name, store full, 2 cores), against one
#: frame per fragment (97.40 MB archive; packing 3.2 s CPU, 2.0 s wall): 1 MiB (31 files, 42 % of the tar bytes)
#: +0.26 % archive, packing 2.1-2.3 s CPU, 1.35 s wall; 512 KiB +0.74 %, 2.2 s CPU; 256 KiB (54 %) +1.3 %,
#: 1.8-2.1 s CPU; 16 KiB about +10 %. Below 1 MiB the archive grows faster than the packing shrinks, so 1 MiB.
DATA_FRAME_MIN = 1 << 20
#: The content (and its tar padding) of such a file is cut into frames of at most this many bytes, each
#: compressed on its own by one thread in one call (``ZstdCompressor.compress``: the same bytes on any machine).
PIECE = 8 << 20
#: Fragments compressed at most at once (:func:`compressed`; one more than the cores): each has a zstd
#: context of its own, 40-55 MB. A fragment's thread spends much of its time packing tar (holding the
#: GIL) or waiting for its one zstd worker to end a frame; with two cores, three jobs kept both busier
#: than two did: a rebuild under a new name 1.7-1.8 s instead of 1.9-2.3 s, same bytes.
PARALLEL = 3
_SHOW_EVERY = 0.1  #: seconds between progress calls while a fragment is compressed
_KIND = {"dir": "d", "file": "f", "symlink": "l"}


@dataclass(frozen=True)
class Fragment:
    """Files of the tree (root-relative paths) that go into a fragment of their own."""

    paths: frozenset[str]
    store: Path | None = None  #: where its compressed bytes are kept between builds


class Segment(NamedTuple):
    """The members of one fragment (:func:`split`), where it is kept, and whether it is a cache layer's."""

    entries: list[Entry]
    store: Path | None
    layer: bool = False


@dataclass(frozen=True)
class Part:
    """One fragment compressed, in archive order: its streams (mixed, then data if it has large files) and its members."""

    streams: tuple[fragstore.Stream, ...]
    entries: list[Entry]  #: its members, in order

    @property
    def counts(self) -> fragstore.Counts:
        total = fragstore.Counts(0, 0, 0)
        for s in self.streams:
            total += s.counts
        return total

    def close(self) -> None:
        for s in self.streams:
            s.file.close()


class _Progress:
    """One ``progress(files, bytes)`` over all fragments: those written, and what the ones being compressed have read so far."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self.files = self.bytes = 0

    def add(self, counts: fragstore.Counts) -> None:
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
    listing: archive.Listing | None = None,
) -> Packed:
    """Pack ``root`` as :func:`shipenv.bundle.archive.write` does, in fragments (see the module docstring).

    Formats other than ``tar.zst`` and ``tar.gz`` are written in one pass.
    ``listing`` is the tree as the caller's own walk saw it (not walked again).
    """
    c = archive.codec(fmt, level, threads)
    if c.fmt not in FORMATS:
        return archive.write(root, dest, fmt, level=level, threads=threads, mtime=mtime, arcname=arcname, progress=progress)
    segments = split(archive.members(root, arcname, mtime, listing), arcname, fragments)
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
                    with contextlib.closing(part):
                        _copy(part, sink)
                    counts = part.counts
                    counter.add(counts)
                    index.append(_listed(part.entries, arcname, start, sink.size - start, tar, counts.tar))
                    tar += counts.tar
            if c.fmt == "tar.zst":
                sink.write(_frames.encode(index))
        return Packed(dest, sink.sha256.hexdigest(), sink.size)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise


def _listed(entries: list[Entry], arcname: str, offset: int, length: int, tar: int, tar_length: int) -> _frames.Frame:
    """One fragment's row of the index (all its frames): where it is and what it holds."""
    members = tuple(_frames.Listed(archive.relative(e, arcname), _KIND[e.kind], e.mode, e.mtime) for e in entries)
    return _frames.Frame(offset, length, tar, tar_length, members)


def split(entries: list[Entry], arcname: str, fragments: Sequence[Fragment]) -> list[Segment]:
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
    layers = [Segment(part, fragment.store, True) for part, fragment in zip(parts, fragments)]
    return [Segment(head, None), *layers, Segment(rest, None), Segment(dirs, None)]


def _large(c: archive.Codec, segment: Segment) -> list[Entry]:
    """The files of a layer's fragment whose content goes into data frames of its own (``.tar.zst`` only)."""
    if c.fmt != "tar.zst" or not segment.layer:
        return []
    return [e for e in segment.entries if e.kind == "file" and e.size >= DATA_FRAME_MIN]


def compressed(segments: list[Segment], c: archive.Codec, arcname: str, spool: Path,
               counter: _Progress) -> Generator[Part, None, None]:
    """Every fragment of :func:`split`'s ``segments`` compressed, in archive order; close it when done.

    Fragments are independent, so :data:`PARALLEL` jobs are run at once,
    each in a thread of its own with its own compressor: a fragment's mixed
    frames are one job, its data frames another (so a layer with large files
    keeps both cores busy), and each job's bytes are the same whichever thread
    runs it. The mixed frames use zstd's multi-threaded encoder, whose output
    depends on the level only, not on the worker count; a data piece is one
    one-shot call of a single-threaded compressor. Compressing one fragment
    at a time left a core idle at the end of each (a wheel under zstd's 8 MiB
    job size is a single job) and while the packing thread read files. The
    workers are shared out: with two cores, three jobs of one worker each (a
    zstd context with one worker holds about 40 MB; with two, about 55 MB):
    one job more than the cores, because a job's thread is often not
    compressing but packing tar, or waiting for its worker to end a frame.
    The pieces of one file stay in one job: the largest file of a 351 MB
    tree (a 25 MB BLAS library) takes 0.16 s, too short a pole to split.

    A job compresses into its store's file, or when there is none (or the
    store cannot be written) into an unnamed temporary file in ``spool``
    (:func:`shipenv.bundle.fragstore.compress`): memory stays bounded
    whatever the fragments' sizes, and what is not yet written waits on
    disk. A stored stream is opened where it is kept. The directories'
    fragment is compressed last: its end-of-archive blocks pad the whole tar
    stream, whose size is known only then.
    """
    *parts, dirs = segments
    slots = max(1, min(PARALLEL, c.threads + 1))
    each = archive.Codec(c.fmt, c.level, -(-c.threads // slots))
    stop = threading.Event()
    pending: deque[tuple[list[Entry], list[fragstore.Stored | _Running]]] = deque()
    pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="shipenv-pack")
    try:
        for segment in parts:
            if not segment.entries:
                continue
            large = _large(c, segment)
            jobs: list[fragstore.Stored | _Running] = []
            for kind in ("mixed", "data") if large else ("mixed",):
                shape = _shape(segment.entries, large) if kind == "mixed" else [_pieces(e.size) for e in large]
                name = fragstore.key(c, kind, segment.entries, large, arcname, (DATA_FRAME_MIN, PIECE)) if segment.store is not None else ""
                stored = fragstore.load(segment.store, name, shape) if segment.store is not None else None
                if stored is not None:
                    jobs.append(stored)
                    continue
                live = _Live(stop)
                work = _Mixed(each, segment.entries, large, arcname, live) if kind == "mixed" else _Data(each, large, arcname, live)
                jobs.append(_Running(pool.submit(fragstore.compress, work, segment.store, name, spool), live))
            pending.append((segment.entries, jobs))
        tar = 0
        while pending:
            entries, jobs = pending[0]
            running = [r.live for _e, js in pending for r in js if isinstance(r, _Running)]
            made = [_wait(job.future, counter, running) if isinstance(job, _Running) else job for job in jobs]
            part = Part(fragstore.opened(made), entries)
            pending.popleft()
            tar += part.counts.tar
            yield part
        yield Part((fragstore.to_spool(_Mixed(c, dirs.entries, [], arcname, None, end=tar), spool),), dirs.entries)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for _entries, jobs in pending:  # compressed but never written: their files are closed (and the spools vanish)
            for job in jobs:
                if isinstance(job, _Running) and not job.future.cancelled() and job.future.exception() is None:
                    job.future.result().file.close()


@dataclass(frozen=True)
class _Running:
    future: Future[fragstore.Stream]
    live: _Live


def _wait(future: Future[fragstore.Stream], counter: _Progress, running: list[_Live]) -> fragstore.Stream:
    """The job's stream, once compressed; showing progress while it is not."""
    while True:
        try:
            return future.result(timeout=_SHOW_EVERY)
        except FuturesTimeout:
            counter.show(running)


def _groups(entries: list[Entry], large: list[Entry]) -> list[list[Entry]]:
    """The members of each mixed frame: cut after every large file (whose header ends the frame, its content follows)."""
    names = {e.name for e in large}
    groups: list[list[Entry]] = [[]]
    for e in entries:
        groups[-1].append(e)
        if e.name in names:
            groups.append([])
    if len(groups) > 1 and not groups[-1]:
        groups.pop()
    return groups


def _shape(entries: list[Entry], large: list[Entry]) -> list[int]:
    """How many frames each group of the mixed stream has: one."""
    return [1] * len(_groups(entries, large))


def _pieces(size: int) -> int:
    """How many data frames a large file's content and padding take."""
    return max(1, -(-(size + -size % tarfile.BLOCKSIZE) // PIECE))


class _Mixed:
    """A fragment's mixed frames: one per :func:`_groups` group, through the (multi-threaded) encoder; with ``end``
    (the tar bytes before it), then the end-of-archive blocks."""

    def __init__(self, c: archive.Codec, entries: list[Entry], large: list[Entry], arcname: str, live: _Live | None,
                 *, end: int | None = None) -> None:
        self._c, self._entries, self._large, self._arcname, self._live, self._end = c, entries, large, arcname, live, end

    def __call__(self, sink: _codecs.Sink) -> tuple[list[list[int]], fragstore.Counts]:
        c = self._c
        assert c.level is not None
        counted = _Counted(sink)
        names = {e.name for e in self._large}
        groups = _groups(self._entries, self._large)
        lengths: list[list[int]] = []
        total = fragstore.Counts(0, 0, 0)
        for i, group in enumerate(groups):
            before = counted.size
            out: Encoder = _codecs.encoder(c.fmt, c.level, c.threads, counted)
            try:
                tar = TarStream(out, self._progress(total))
                for entry in group:
                    if entry.name in names:
                        tar.write(archive.header(entry))  # its content is in the data frames that follow
                    else:
                        tar.add(entry, archive.relative(entry, self._arcname))
                if self._end is not None and i == len(groups) - 1:
                    tar.write(archive.end_blocks(self._end + total.tar + tar.total))
                tar.end()
                out.close()
            except BaseException:
                out.abort()
                raise
            total += fragstore.Counts(tar.total, tar.files + sum(e.name in names for e in group), tar.bytes)
            lengths.append([counted.size - before])
        return lengths, total

    def _progress(self, before: fragstore.Counts) -> Progress | None:
        live = self._live
        if live is None:
            return None
        return lambda files, nbytes: live(before.files + files, before.bytes + nbytes)


class _Data:
    """A fragment's data frames: each large file's content and padding in :data:`PIECE`\\ s, each one frame.

    One-shot, single-threaded compression: the bytes of a piece depend on
    the piece and the level only, whatever thread runs it, and they do not
    depend on the arcname, so a new version copies them from the store.
    """

    def __init__(self, c: archive.Codec, large: list[Entry], arcname: str, live: _Live | None) -> None:
        self._c, self._large, self._arcname, self._live = c, large, arcname, live

    def __call__(self, sink: _codecs.Sink) -> tuple[list[list[int]], fragstore.Counts]:
        assert self._c.level is not None
        zc = _codecs.zstd_compressor(self._c.level, None)
        lengths: list[list[int]] = []
        tar = nbytes = 0
        for entry in self._large:
            group: list[int] = []
            with contextlib.closing(_read_pieces(entry, archive.relative(entry, self._arcname))) as pieces:
                for piece, content in pieces:
                    frame = zc.compress(piece)
                    sink.write(frame)
                    group.append(len(frame))
                    tar += len(piece)
                    nbytes += content
                    if self._live is not None:
                        self._live(0, nbytes)
            lengths.append(group)
        return lengths, fragstore.Counts(tar, 0, nbytes)


def _read_pieces(entry: Entry, rel: str) -> Generator[tuple[bytearray, int], None, None]:
    """The file's content and tar padding in pieces of at most :data:`PIECE`, each with how much of it is content.

    The file must have the size the walk saw: one byte more read at the end shows it did not grow.
    """
    assert entry.source is not None
    size = entry.size
    total = size + -size % tarfile.BLOCKSIZE
    try:
        fd = os.open(entry.source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise archive.cannot_read_member(rel, exc) from exc
    try:
        done = 0
        while done < total:
            piece = bytearray(min(PIECE, total - done))  # zeros: the padding is there already
            want = max(0, min(size - done, len(piece)))
            view = memoryview(piece)
            got = 0
            try:
                while got < want:
                    n = os.readv(fd, [view[got:want]])
                    if not n:
                        raise archive.changed_while_packing(rel)
                    got += n
                grew = done + len(piece) >= total and os.read(fd, 1) != b""
            except OSError as exc:
                raise archive.cannot_read_member(rel, exc) from exc
            if grew:
                raise archive.changed_while_packing(rel)
            done += len(piece)
            yield piece, want
    finally:
        os.close(fd)


class _Counted:
    """A sink that counts what goes through it: where each frame ends."""

    def __init__(self, sink: _codecs.Sink) -> None:
        self._sink = sink
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        n = self._sink.write(data)
        self.size += len(data)
        return n


def _copy(part: Part, sink: FileSink) -> None:
    """A compressed fragment into the archive: its mixed and data frames interleaved, as its members come."""
    mixed, *data = part.streams
    for i, group in enumerate(mixed.groups):
        mixed.copy(sum(group), sink)
        for d in data:
            if i < len(d.groups):
                d.copy(sum(d.groups[i]), sink)
