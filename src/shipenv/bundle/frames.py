"""The frame index of a ``.tar.zst``, and the decoder that skips the frames a deploy does not need.

:mod:`shipenv.bundle.fragments` writes a ``.tar.zst`` as independent
fragments (the head, one per cache layer, the rest, the directories), each
one or more whole zstd frames (a layer's large files have frames of their
own). It ends the file with an index of those fragments, so that a deploy
beside a release that already holds a layer's files can leave that layer's
frames compressed and hard-link the files instead (:mod:`shipenv.deploy.extract` says why that
is safe: the index is a hint, never trusted).

The index is a zstd **skippable frame**, which every zstd reader passes
over without a word (``zstd -d``, GNU tar's ``--zstd``, python-zstandard,
``deploy.sh``), so the tar stream and every other reader are unchanged.
Byte by byte (integers little-endian)::

    u32  0x184D2A5E             skippable frame magic (zstd allows 0x184D2A50-5F)
    u32  N + 12                 the frame's payload size
    N    body                   one zstd frame (content size, checksum) holding the JSON below
    u32  N                      the footer: the body's size ...
    8    "SHPNVIX1"             ... and this magic: the file's last 8 bytes

so a reader finds it from the end of the file with one ``pread`` of 12 bytes.
(zstd's contrib "seekable format" puts its seek table in a skippable frame
the same way, with a footer magic 0x8F92EAB1; ours holds what a seek table
lacks, the members of each frame, and its own magic so that seekable-format
tools do not take it for theirs.) The body::

    {"format": 1, "frames": [[offset, length, tar_offset, tar_length,
                              [[path, kind, mode, mtime], ...]], ...]}

one row per fragment in file order (the format still calls them frames): where
its compressed bytes are (its first zstd frame to the end of its last), where
its part of the tar stream is, and its members (path relative to the top,
``"."`` for the top itself; kind ``d``, ``f`` or ``l``; mode and mtime as
the tar headers give them). It is written with the same bytes for the same
archive (one compressor thread, a fixed level), so archives stay reproducible.

:func:`read_index` checks it before anything uses it, and every reader of a
``.tar.zst`` runs that check (one policy): the body at most
:data:`INDEX_LIMIT` bytes (and :data:`BODY_LIMIT` decompressed), frames
starting at 0, contiguous, each starting where a real zstd frame starts (it
may hold more than one), the
last ending where the index begins, tar offsets contiguous too, paths plain
(no ``/`` at either end, no ``..``, ``.`` or empty component) and each
listed once. An archive without an index (an older build, or one packed by
``archive.write``) is read as before; one whose index breaks a rule is
refused as corrupt.

:class:`FrameReader` decodes the head frame, then waits at a :class:`Gate`
until the reader's user says which frames to skip (it decides from the head
it just read), and decodes the rest row run by row run (each row's zstd
frames in one go: ``read_across_frames``). Whatever
decides, the frames already begun are never skipped, and a reader that
needs bytes past the head before anyone decided (a head larger than the
head frame's tail can feed) releases the gate with "skip nothing", so the
decoder and its reader never wait for each other.
"""

from __future__ import annotations

import io
import json
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

import zstandard

from shipenv.bundle import codecs as _codecs
from shipenv.bundle.codecs import CHUNK
from shipenv.errors import ArchiveError

SKIPPABLE = 0x184D2A5E
MAGIC = b"SHPNVIX1"
FOOTER = 4 + len(MAGIC)
#: The compressed body and what it may decompress to: 16,000 members take about 150 kB and 1.3 MB.
INDEX_LIMIT = 16 << 20
BODY_LIMIT = 64 << 20
_MAX_FRAMES = 1 << 16
_LEVEL = 9
_KINDS = ("d", "f", "l")


@dataclass(frozen=True)
class Listed:
    """One member as the index lists it (untrusted: the reader checks the member itself)."""

    path: str  #: relative to the top, "." for the top
    kind: str  #: "d", "f" or "l"
    mode: int
    mtime: int


@dataclass(frozen=True)
class Frame:
    """One row of the index: a fragment's compressed bytes (one or more whole zstd frames), its part of the tar stream, its members."""

    offset: int
    length: int
    tar_offset: int
    tar_length: int
    members: tuple[Listed, ...]


@dataclass(frozen=True)
class Index:
    frames: tuple[Frame, ...]


# -- writing -------------------------------------------------------------------------------


def encode(frames: Sequence[Frame]) -> bytes:
    """The index as the skippable frame that ends the archive (the module docstring has the layout)."""
    rows = [[f.offset, f.length, f.tar_offset, f.tar_length, [[m.path, m.kind, m.mode, m.mtime] for m in f.members]]
            for f in frames]
    text = json.dumps({"format": 1, "frames": rows}, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")
    body = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True, write_content_size=True).compress(text)
    return struct.pack("<II", SKIPPABLE, len(body) + FOOTER) + body + struct.pack("<I", len(body)) + MAGIC


# -- reading -------------------------------------------------------------------------------


def _bad(path: Path, why: str) -> ArchiveError:
    return _codecs.corrupt(path, f"its frame index {why}")


def read_index(fd: int, path: Path, starts: Sequence[int] | None) -> Index | None:
    """The checked index at the end of the file, or None when it has none.

    ``starts``: where its zstd frames begin (:func:`shipenv.bundle.codecs.check_zstd_frames`);
    None: each frame the index lists must begin with zstd's magic number (see :func:`read_ahead`).
    """
    size = os.fstat(fd).st_size
    tail = os.pread(fd, FOOTER, max(0, size - FOOTER))
    if len(tail) < FOOTER or tail[4:] != MAGIC:
        return None
    (length,) = struct.unpack("<I", tail[:4])
    if length > INDEX_LIMIT:
        raise _bad(path, f"is {length:,} bytes, more than any bundle needs")
    start = size - FOOTER - length - 8
    if start < 0 or struct.unpack("<II", os.pread(fd, 8, start)) != (SKIPPABLE, length + FOOTER):
        raise _bad(path, "does not end the file as a skippable frame")
    body = os.pread(fd, length, start + 8)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=False)
        text = reader.read(BODY_LIMIT + 1)
        if len(text) > BODY_LIMIT:
            raise _bad(path, f"holds more than {BODY_LIMIT:,} bytes")
        rows = json.loads(text.decode("utf-8", "surrogateescape"))["frames"]
        frames = tuple(_frame(row) for row in rows)
    except (zstandard.ZstdError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise _bad(path, f"cannot be read ({exc})") from None
    _check(path, frames, start, set(starts) if starts is not None else None, fd)
    return Index(frames)


def _frame(row: list[object]) -> Frame:
    offset, length, tar_offset, tar_length, members = row
    if not all(type(n) is int and n >= 0 for n in (offset, length, tar_offset, tar_length)) or not isinstance(members, list):
        raise ValueError(f"a frame row {row[:4]!r} is not four counts and a list")
    listed = []
    for m in members:
        p, kind, mode, mtime = m
        if not isinstance(p, str) or kind not in _KINDS or type(mode) is not int or type(mtime) is not int:
            raise ValueError(f"a member row {m!r} is not [path, kind, mode, mtime]")
        listed.append(Listed(p, kind, mode, mtime))
    assert isinstance(offset, int) and isinstance(length, int) and isinstance(tar_offset, int) and isinstance(tar_length, int)
    return Frame(offset, length, tar_offset, tar_length, tuple(listed))


def _check(path: Path, frames: tuple[Frame, ...], end: int, starts: set[int] | None, fd: int) -> None:
    if not frames or len(frames) > _MAX_FRAMES:
        raise _bad(path, f"lists {len(frames)} frames")
    pos = tar = 0
    seen: set[str] = set()
    for i, f in enumerate(frames):
        if f.offset != pos or f.tar_offset != tar:
            raise _bad(path, f"lists frame {i} at byte {f.offset} (tar byte {f.tar_offset}) where {pos} ({tar}) was due: frames overlap or leave gaps")
        real = f.offset in starts if starts is not None else os.pread(fd, 4, f.offset) == _codecs.ZSTD_MAGIC
        if not real or f.length == 0:
            raise _bad(path, f"lists frame {i} at byte {f.offset}, where no zstd frame starts")
        if f.tar_length % 512:
            raise _bad(path, f"gives frame {i} a tar length of {f.tar_length}, not whole 512-byte blocks")
        pos, tar = f.offset + f.length, f.tar_offset + f.tar_length
        for m in f.members:
            parts = m.path.split("/")
            if m.path != "." and (any(p in ("", ".", "..") for p in parts) or "\0" in m.path):
                raise _bad(path, f"lists {m.path!r}, which is not a plain relative path")
            if m.path in seen:
                raise _bad(path, f"lists {m.path!r} twice")
            seen.add(m.path)
    if pos != end:
        raise _bad(path, f"says the frames end at byte {pos}, but the index begins at {end}")


# -- decoding ------------------------------------------------------------------------------


class Gate:
    """Which frames to skip: decided once, by the reader's user, while :class:`FrameReader` waits after the head."""

    def __init__(self) -> None:
        self.index: Index | None = None  #: set when the archive has an index and the decoder can skip
        self._cond = threading.Condition()
        self._skip: frozenset[int] | None = None
        self._waiting = False

    def decide(self, skip: frozenset[int]) -> frozenset[int]:
        """Skip these frames; returns what will be skipped (nothing when the gate was released before)."""
        with self._cond:
            if self._skip is None:
                self._skip = skip
                self._cond.notify_all()
            return self._skip

    def release(self) -> None:
        """Skip nothing, unless a decision came first."""
        self.decide(frozenset())

    def starved(self) -> None:
        """The reader needs bytes past the head frame before anyone decided: skip nothing."""
        with self._cond:
            if self._waiting:
                self.release()

    def wait(self) -> frozenset[int]:
        with self._cond:
            self._waiting = True
            while self._skip is None:
                self._cond.wait()
            return self._skip


class _Window:
    """``[lo, hi)`` of a file, read with ``pread``: one run of frames for the decompressor."""

    def __init__(self, fd: int, lo: int, hi: int) -> None:
        self._fd, self._pos, self._hi = fd, lo, hi

    def read(self, n: int = -1) -> bytes:
        n = self._hi - self._pos if n < 0 else min(n, self._hi - self._pos)
        data = os.pread(self._fd, n, self._pos) if n > 0 else b""
        self._pos += len(data)
        return data


class FrameReader(io.RawIOBase):
    """The tar stream of an indexed ``.tar.zst``, less the frames the :class:`Gate` says to skip.

    The frames it decodes must give exactly the tar bytes the index says;
    the reader checks every member it gets as it would without an index.
    """

    def __init__(self, f: BinaryIO, path: Path, index: Index, gate: Gate) -> None:
        self._fd = f.fileno()
        self._path = path
        self._frames = index.frames
        self._gate = gate
        self._runs: list[tuple[int, int]] | None = None
        self.decoded = 0  #: frames decoded so far (tests and logs)
        self._open(0, 1)

    def _open(self, a: int, b: int) -> None:
        lo, hi = self._frames[a].offset, self._frames[b - 1].offset + self._frames[b - 1].length
        window = cast(IO[bytes], _Window(self._fd, lo, hi))  # it reads with read() only
        self._reader = zstandard.ZstdDecompressor().stream_reader(window, read_size=CHUNK, read_across_frames=True)
        self._run = (a, b)
        self._want = sum(f.tar_length for f in self._frames[a:b])
        self._got = 0
        self._live = True
        self.decoded += b - a

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        while True:
            if self._live:
                try:
                    n = int(self._reader.readinto(buf))
                except zstandard.ZstdError as exc:
                    raise _codecs.corrupt(self._path, exc) from exc
                self._got += n
                if self._got > self._want or (not n and self._got != self._want):
                    a, b = self._run
                    raise _bad(self._path, f"says frames {a}-{b - 1} hold {self._want} bytes of tar, but they hold "
                                           f"{'more' if n else self._got}")
                if n:
                    return n
                self._live = False
            if self._runs is None:
                self._runs = _runs(len(self._frames), self._gate.wait())
            if not self._runs:
                return 0
            self._open(*self._runs.pop(0))


def _runs(count: int, skip: frozenset[int]) -> list[tuple[int, int]]:
    """Frames 1..count-1 not in ``skip``, as runs [a, b) to decode in one go."""
    runs: list[tuple[int, int]] = []
    for i in range(1, count):
        if i in skip:
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def read_ahead(fmt: str, f: BinaryIO, path: Path, gate: Gate | None = None) -> io.RawIOBase:
    """:func:`shipenv.bundle.codecs.read_ahead`, checking a ``.tar.zst``'s index; skipping through ``gate`` when given.

    Without a gate, every block header of the file is walked first
    (:func:`shipenv.bundle.codecs.check_zstd_frames`: python-zstandard takes
    a file cut inside a frame for a clean end) and the index checked against
    the frames found. With a gate and an index, that walk would read every
    page of the frames that are to be skipped; instead each frame the index
    lists must begin with zstd's magic, and :class:`FrameReader` checks that
    the frames it decodes give exactly the tar bytes the index says, which a
    cut or a lie about offsets does not.
    """
    if fmt != "tar.zst":
        return _codecs.read_ahead(fmt, f, path)
    index = read_index(f.fileno(), path, None) if gate is not None else None
    if gate is None or index is None:
        read_index(f.fileno(), path, _codecs.check_zstd_frames(f.fileno(), path))
        return _codecs.ReadAhead(_codecs.ZstdReader(f, path, checked=True))
    gate.index = index
    return _codecs.ReadAhead(FrameReader(f, path, index, gate), starved=gate.starved, closing=gate.release)
