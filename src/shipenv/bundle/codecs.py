"""The compressors and decompressors behind :mod:`shipenv.bundle.archive`.

Each side is one small interface: an encoder takes the tar stream in pieces
(``write``, then ``close``, or ``abort`` on error) and writes compressed bytes
into a sink; a decoder is a raw binary file to read the tar stream from.
Tests swap the sink or read the decoders directly.

Why these libraries, and why this way:

- ``.tar.zst``: python-zstandard, always in zstd's multi-threaded mode, even
  with one worker. Multi-threaded zstd cuts the input into jobs whose size
  depends on the level only, so its output is the same for 1 or 64 workers;
  single-threaded mode would give other bytes, and the archive would change
  with the build machine's core count.
- ``.tar.gz``: zlib-ng, pigz-style: 1 MiB blocks, each compressed by a fresh
  deflate primed with the previous block's last 32 KiB and ended on a byte
  boundary (sync flush), written in order as one gzip member that any
  ``tar -xzf`` reads. Measured on this project's 2-core machine (busy with
  other jobs) on a 437 MB bundle (numpy, pandas, pyarrow, lxml): ``tar -czf``
  20.6 s and 139.1 MB; zlib-ng level 5 on all cores 6.3 s (3.3x) and 1.019x
  the size; level 6 7.5 s and 1.016x, so 5 is the default. ``isal`` was
  3-10 times faster still, but its best level (3) came out 1.09-1.11 times
  the size of ``gzip -6``, and its levels (0-3) are not the 1-9 users know.
  zlib-ng's own threaded writer (``gzip_ng_threaded``) was not used: it keeps
  one compressor per thread, whose left-over state makes the bytes depend on
  the thread count.
- ``.tar.xz``: the standard library's lzma, ``preset = level``. It has no
  threaded encoder, so ``threads`` does not apply.

Decoders never hold more than about one chunk of output: zlib and lzma are
asked for at most the caller's buffer size (``max_length``) and zstd's stream
reader works the same way, so a small hostile archive cannot inflate into
memory. python-zstandard's reader reports a clean end when the input stops
inside a frame, so zstd archives are first walked frame by frame
(:func:`check_zstd_frames`, a few bytes per 128 KiB block) to catch that; an
xz file must end with its footer magic. Both checks run before the first byte
is unpacked, so even ``inspect``, which reads only the front, sees a cut-off
file. A gzip file has no such footer: a truncated ``.tar.gz`` is caught when
the stream is read to its end (``verify``, ``deploy``).

It runs past the house's 400 lines because it holds each of the three codecs
in both directions, with the damage checks each one needs; nothing else here
knows a compressor's quirks.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import os
import queue
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, BinaryIO, Protocol, cast

import zstandard
from zlib_ng import zlib_ng

from shipenv.errors import ArchiveError

#: Every buffer between the disk and a compressor is this big.
CHUNK = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_WINDOW = 32 << 10
_ZLIB_ERROR = cast("type[Exception]", zlib_ng.error)  # the stub calls it an instance
_RETRY = "Copy or download it again and compare it with its .sha256 file."


class Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> int: ...


class Encoder(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Plain:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes | memoryview) -> None:
        self._sink.write(data)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class Zstd:
    def __init__(self, sink: Sink, level: int, threads: int) -> None:
        self._writer = zstd_compressor(level, threads).stream_writer(cast(IO[bytes], sink), closefd=False)

    def write(self, data: bytes | memoryview) -> None:
        self._writer.write(data)

    def close(self) -> None:
        self._writer.close()  # type: ignore[no-untyped-call]  # ends the frame; the file stays open

    def abort(self) -> None:
        pass


_THREAD = threading.local()


def zstd_compressor(level: int, threads: int | None) -> zstandard.ZstdCompressor:
    """This thread's zstd compressor for ``level``, made once and reused frame after frame.

    ``threads`` >= 1 (0 counts as 1) is zstd's multi-threaded mode, for
    streams (see the module docstring); None is a single-threaded one for
    one-shot ``compress()`` calls, whose frames say their content size
    (:mod:`shipenv.bundle.fragments`' data frames). Each frame starts a new
    session of the same context, which gives the bytes a fresh one would;
    making one per frame cost a build hundreds of contexts, each with its
    worker threads and some 40 MB the kernel had to zero (5 % of a rebuild's
    CPU in ``clear_page``). A context serves one frame at a time: a thread
    writes its frames in turn.
    """
    key = (level, None if threads is None else max(1, threads))
    kept: dict[tuple[int, int | None], zstandard.ZstdCompressor] | None = getattr(_THREAD, "zstd", None)
    if kept is None:
        kept = _THREAD.zstd = {}
    found = kept.get(key)
    if found is None:
        if key[1] is None:
            found = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        else:
            found = zstandard.ZstdCompressor(level=level, threads=key[1], write_checksum=True, write_content_size=False)
        kept[key] = found
    return found


class Xz:
    def __init__(self, sink: Sink, level: int) -> None:
        self._sink = sink
        self._compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=level)

    def write(self, data: bytes | memoryview) -> None:
        out = self._compressor.compress(data)
        if out:
            self._sink.write(out)

    def close(self) -> None:
        self._sink.write(self._compressor.flush())

    def abort(self) -> None:
        pass


def gzip_header(level: int) -> bytes:
    """RFC 1952 header without a name, mtime 0, OS "unknown"; XFL says fastest/best as gzip does."""
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    return struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, xfl, 255)


def deflate_block(block: bytes, zdict: bytes, level: int) -> tuple[bytes, int, int]:
    """One block as raw deflate, ending on a byte boundary so blocks concatenate; with its CRC-32."""
    args = (level, zlib_ng.DEFLATED, -15, zlib_ng.DEF_MEM_LEVEL, zlib_ng.Z_DEFAULT_STRATEGY)
    c = zlib_ng.compressobj(*args, zdict) if zdict else zlib_ng.compressobj(*args)
    return c.compress(block) + c.flush(zlib_ng.Z_SYNC_FLUSH), zlib_ng.crc32(block), len(block)


class Gzip:
    """One gzip member whose 1 MiB blocks are compressed on ``threads`` threads and written in order.

    At most ``2 * threads`` blocks are in flight (about 3 MiB a thread).
    zlib-ng releases the GIL while it compresses.
    """

    def __init__(self, sink: Sink, level: int, threads: int) -> None:
        self._sink = sink
        self._level = level
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shipenv-gzip") if threads > 1 else None
        self._pending: deque[Future[tuple[bytes, int, int]]] = deque()
        self._buf = bytearray()
        self._zdict = b""
        self._crc = 0
        self._size = 0
        sink.write(gzip_header(level))

    def write(self, data: bytes | memoryview) -> None:
        if not self._buf and len(data) == CHUNK:
            self._submit(bytes(data))
            return
        self._buf += data
        while len(self._buf) >= CHUNK:
            with memoryview(self._buf) as view:
                block = bytes(view[:CHUNK])
            del self._buf[:CHUNK]
            self._submit(block)

    def _submit(self, block: bytes) -> None:
        zdict, self._zdict = self._zdict, block[-_GZIP_WINDOW:]
        if self._pool is None:
            self._emit(deflate_block(block, zdict, self._level))
            return
        self._pending.append(self._pool.submit(deflate_block, block, zdict, self._level))
        while len(self._pending) > 2 * self._threads:
            self._emit(self._pending.popleft().result())

    def _emit(self, done: tuple[bytes, int, int]) -> None:
        compressed, crc, length = done
        self._crc = zlib_ng.crc32_combine(self._crc, crc, length)
        self._size += length
        self._sink.write(compressed)

    def close(self) -> None:
        if self._buf:
            self._submit(bytes(self._buf))
            self._buf.clear()
        while self._pending:
            self._emit(self._pending.popleft().result())
        self._shutdown()
        # An empty final block (BFINAL=1, fixed Huffman), then CRC-32 and ISIZE.
        self._sink.write(b"\x03\x00" + struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))

    def abort(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def encoder(fmt: str, level: int | None, threads: int, sink: Sink) -> Encoder:
    if fmt == "tar":
        return Plain(sink)
    assert level is not None
    if fmt == "tar.zst":
        return Zstd(sink, level, threads)
    if fmt == "tar.gz":
        return Gzip(sink, level, threads)
    return Xz(sink, level)


# -- reading -----------------------------------------------------------------------------


def truncated(path: Path, fmt: str) -> ArchiveError:
    return ArchiveError(f"{path} is truncated: its {fmt} data ends before the archive does.", hint=_RETRY)


def corrupt(path: Path, detail: object) -> ArchiveError:
    return ArchiveError(f"{path} is corrupt ({detail}).", hint=_RETRY)


def check_zstd_frames(fd: int, path: Path) -> list[int]:
    """Walk every zstd frame and block header up to the end of the file; raise if it stops short.

    Returns where each frame (skippable ones included) starts: a frame index
    (:mod:`shipenv.bundle.frames`) may point only there.
    """
    size = os.fstat(fd).st_size
    pos = 0
    starts: list[int] = []
    while pos < size:
        starts.append(pos)
        magic = os.pread(fd, 4, pos)
        if len(magic) < 4:
            raise truncated(path, "zstd")
        number = int.from_bytes(magic, "little")
        if 0x184D2A50 <= number <= 0x184D2A5F:  # a skippable frame: magic, length, payload
            length = os.pread(fd, 4, pos + 4)
            if len(length) < 4:
                raise truncated(path, "zstd")
            pos += 8 + int.from_bytes(length, "little")
            continue
        if magic != ZSTD_MAGIC:
            raise corrupt(path, f"no zstd frame at byte {pos}")
        descriptor = os.pread(fd, 1, pos + 4)
        if not descriptor:
            raise truncated(path, "zstd")
        fhd = descriptor[0]
        single = (fhd >> 5) & 1
        # descriptor, window byte unless single-segment, dictionary id, content size
        pos += 4 + 1 + (1 - single) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
        while True:
            raw = os.pread(fd, 3, pos)
            if len(raw) < 3:
                raise truncated(path, "zstd")
            block = int.from_bytes(raw, "little")
            kind = (block >> 1) & 3
            if kind == 3:
                raise corrupt(path, f"a reserved zstd block type at byte {pos}")
            pos += 3 + (1 if kind == 1 else block >> 3)  # an RLE block holds one byte
            if block & 1:
                break
        if (fhd >> 2) & 1:
            pos += 4  # content checksum
    if pos > size:
        raise truncated(path, "zstd")
    return starts


def check_xz_footer(fd: int, path: Path) -> None:
    """An xz file ends with a stream footer ending in ``YZ`` (then only zero padding): cheap to check up front."""
    size = os.fstat(fd).st_size
    tail = os.pread(fd, 4096, max(0, size - 4096)).rstrip(b"\0")
    if not tail.endswith(b"YZ"):
        raise truncated(path, "xz")


class ZstdReader(io.RawIOBase):
    def __init__(self, f: BinaryIO, path: Path, *, checked: bool = False) -> None:
        if not checked:
            check_zstd_frames(f.fileno(), path)
        self._reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=CHUNK, read_across_frames=True, closefd=False)
        self._path = path

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        try:
            return int(self._reader.readinto(buf))
        except zstandard.ZstdError as exc:
            raise corrupt(self._path, exc) from exc


class Inflater(io.RawIOBase):
    """gzip or xz, one or more concatenated streams, at most ``len(buffer)`` bytes of output per read."""

    def __init__(self, f: BinaryIO, path: Path, fmt: str) -> None:
        self._f = f
        self._path = path
        self._fmt = fmt
        self._dec = self._new()
        self._tail = b""  # input zlib has not consumed yet

    def _new(self) -> zlib_ng._Decompress | lzma.LZMADecompressor:
        return zlib_ng.decompressobj(31) if self._fmt == "gzip" else lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    def readable(self) -> bool:
        return True

    def _wants_input(self) -> bool:
        if isinstance(self._dec, lzma.LZMADecompressor):
            return bool(self._dec.needs_input)
        return not self._tail

    def _decode(self, data: bytes, limit: int) -> bytes:
        try:
            if isinstance(self._dec, lzma.LZMADecompressor):
                return self._dec.decompress(data, limit)
            out = self._dec.decompress(self._tail + data, limit)
            self._tail = self._dec.unconsumed_tail
            return out
        except (_ZLIB_ERROR, lzma.LZMAError) as exc:
            raise corrupt(self._path, exc) from exc

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        limit = len(buf)
        while True:
            if self._dec.eof:
                data = self._next_stream()
                if data is None:
                    return 0
                self._dec, self._tail = self._new(), b""
            elif self._wants_input():
                data = self._f.read(CHUNK)
                if not data:
                    out = self._decode(b"", limit)  # whatever the decoder still holds
                    if out:
                        buf[: len(out)] = out
                        return len(out)
                    if not self._dec.eof:
                        raise truncated(self._path, self._fmt)
                    continue
            else:
                data = b""
            out = self._decode(data, limit)
            if out:
                buf[: len(out)] = out
                return len(out)

    def _next_stream(self) -> bytes | None:
        """After a stream ends: another stream (``pigz -i``, ``cat a.xz b.xz``), zero padding, or the end."""
        rest = self._dec.unused_data
        while True:
            rest = rest.lstrip(b"\0")
            if rest:
                return rest
            rest = self._f.read(CHUNK)
            if not rest:
                return None


class ReadAhead(io.RawIOBase):
    """A decoder run in a thread of its own, at most ``depth`` chunks of :data:`CHUNK` ahead of the reader.

    zstd, zlib and lzma release the GIL while they decode, so on two cores a
    deploy decompresses while it parses, hashes and writes. Memory stays
    bounded: the thread waits when ``depth`` chunks are queued. What the
    decoder raises (a corrupt or cut-off archive) is raised to the reader at the
    point of the stream where it happened. :meth:`close` stops the thread.

    A decoder that may wait for its reader (:class:`shipenv.bundle.frames.FrameReader`,
    at its gate) gives ``starved``, called whenever the reader has waited a
    tenth of a second for a chunk, and ``closing``, called before the thread
    is stopped: both let it go on, so neither side waits for the other.
    """

    def __init__(self, raw: io.RawIOBase, depth: int = 4, *, starved: Callable[[], None] | None = None,
                 closing: Callable[[], None] | None = None) -> None:
        self._raw = raw
        self._starved = starved
        self._closing = closing
        self._queue: queue.Queue[bytearray | BaseException | None] = queue.Queue(depth)
        self._stop = threading.Event()
        self._chunk = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._run, name="shipenv-decode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                buf = bytearray(CHUNK)
                n = self._raw.readinto(memoryview(buf))
                if not n:
                    self._put(None)
                    return
                del buf[n:]
                self._put(buf)
        except BaseException as exc:  # handed over: readinto raises it in the reading thread
            self._put(exc)

    def _put(self, item: bytearray | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if not self._chunk:
            if self._done:
                return 0
            item = self._get()
            if item is None or isinstance(item, BaseException):
                self._done = True
                if item is None:
                    return 0
                raise item
            self._chunk = memoryview(item)
        n = min(len(buf), len(self._chunk))
        buf[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def next_chunk(self) -> memoryview:
        """The next decoded chunk itself, not copied (the decoding thread fills a fresh buffer each time); empty at the end."""
        if self._chunk:
            chunk, self._chunk = self._chunk, memoryview(b"")
            return chunk
        if self._done:
            return memoryview(b"")
        item = self._get()
        if item is None or isinstance(item, BaseException):
            self._done = True
            if item is None:
                return memoryview(b"")
            raise item
        return memoryview(item)

    def _get(self) -> bytearray | BaseException | None:
        if self._starved is None:
            return self._queue.get()
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                self._starved()

    def close(self) -> None:
        if not self.closed:
            if self._closing is not None:
                self._closing()
            self._stop.set()
            while self._thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.1)
            self._thread.join()
            self._raw.close()
        super().close()


def read_ahead(fmt: str, f: BinaryIO, path: Path) -> io.RawIOBase:
    """:func:`decoder`, decoding in a thread of its own (:class:`ReadAhead`) when ``fmt`` is compressed; close it."""
    raw = decoder(fmt, f, path)
    return raw if fmt == "tar" else ReadAhead(raw)


def decoder(fmt: str, f: BinaryIO, path: Path) -> io.RawIOBase:
    """The tar stream inside ``f`` (``fmt`` as :func:`shipenv.bundle.archive.detect` says)."""
    if fmt == "tar.zst":
        return ZstdReader(f, path)
    if fmt == "tar.xz":
        check_xz_footer(f.fileno(), path)
        return Inflater(f, path, "xz")
    if fmt == "tar.gz":
        return Inflater(f, path, "gzip")
    return cast(io.RawIOBase, f)
