"""Deterministic tar archives of a bundle tree, and streaming readers that refuse bad data.

Writing (:func:`write`) turns a tree into ``NAME-VERSION.tar.{zst,gz,xz}`` in one
pass, file by file, through fixed-size buffers, so packing a multi-gigabyte
environment needs a few tens of megabytes whatever its size. The archive's
sha256 is computed on the bytes as they are written.

``shipenv build`` writes its ``.tar.zst`` and ``.tar.gz`` through
:mod:`shipenv.bundle.fragments` instead: the same members with the same
metadata, compressed in independent pieces (one per cache layer, so a
rebuild copies the unchanged ones), in another order: ``.shipenv/`` first
(``manifest.json`` and ``RECORD`` still right after their directories), then
each layer's files, then the rest, and **every other directory last**, after
its files. Every reader makes a missing parent itself, and the directory's
entry then sets its mode; GNU tar also sets its mtime, which no later file
changes. :func:`write` (one pass, the order below) stays for ``tar.xz``,
plain ``tar``, the OCI layers and trees packed without layers.

The same tree and ``mtime`` always give the same bytes, on any machine and with
any thread count (DESIGN.md, property 6), because nothing of the host reaches
the archive:

- entries are in one fixed order: a depth-first walk, names sorted by their
  bytes (not by locale), each directory before its contents; except that
  ``.shipenv/manifest.json`` and ``.shipenv/RECORD`` come first, right after
  their directories, so that ``inspect`` and ``deploy`` learn what a bundle is
  (and check the host) from the first few kilobytes instead of reading the
  whole archive;
- owners are 0/0 with empty names; modes are 0755 for directories and for
  files with any execute bit, 0644 for other files (never group/world
  writable, never setuid, setgid or sticky), 0777 for symlinks (as ``ln -s``
  makes them; Linux ignores it); mtimes are clamped to ``mtime``
  (``SOURCE_DATE_EPOCH``); hard links are stored as plain files, symlinks as
  symlinks; the tar format is always PAX (POSIX.1-2001, read by GNU tar,
  bsdtar and busybox), its headers the bytes Python's ``tarfile`` writes
  (:mod:`shipenv.bundle.ustar` builds them faster), without host data;
- the compressors give the same bytes whatever the number of threads
  (zstd in its multi-threaded mode, gzip in fixed blocks; see
  :mod:`shipenv.bundle.codecs`), and the gzip header holds no name and mtime 0.

Reading (:func:`open_stream`) decompresses as a stream with bounded memory and
turns every way a download can be damaged (cut short, a flipped byte, not an
archive at all) into one :class:`ArchiveError` sentence. It is the low-level
stream only: every user reads a bundle through :mod:`shipenv.bundle.reader`,
which holds the rules a member must keep.

The tar headers of a stream are parsed by :mod:`shipenv.bundle.tarstream` (the
bounds on extended headers, the refusal of sparse members, every damaged
header as one sentence); this module picks the decoder and checks the ends of
the stream. It runs past the house's 400 lines because it is the writer whole:
the order, the normalized metadata and the framing that make an archive
byte-reproducible are kept in one place, so they cannot drift apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

from shipenv.bundle import codecs as _codecs
from shipenv.bundle import frames as _frames
from shipenv.bundle import ustar
from shipenv.bundle.codecs import CHUNK, Encoder
from shipenv.bundle.tarstream import TarReader
from shipenv.errors import ArchiveError, UsageError, listing

Progress = Callable[[int, int], None]
Kind = Literal["dir", "file", "symlink", "other"]

FORMATS = ("tar.zst", "tar.gz", "tar.xz", "tar")
#: zstd's and xz's own defaults. For gzip, zlib-ng's level 5 comes within 2 % of
#: ``gzip -6``'s size and runs about a fifth faster than its level 6 (_codecs).
DEFAULT_LEVELS = {"tar.zst": 3, "tar.gz": 5, "tar.xz": 6}
LEVEL_RANGES = {"tar.zst": (1, 22), "tar.gz": (1, 9), "tar.xz": (0, 9)}

_TAR_RECORD = 20 * tarfile.BLOCKSIZE  # what GNU tar pads archives to
_ZEROS = bytes(tarfile.BLOCKSIZE)
FIRST = (".shipenv", ".shipenv/manifest.json", ".shipenv/RECORD")
_PROGRESS_EVERY = 0.1  # seconds between progress calls
_CODEC_NAMES = {"tar.zst": "zstd", "tar.gz": "gzip", "tar.xz": "xz", "tar": "tar"}


@dataclass(frozen=True)
class Packed:
    """The archive :func:`write` made."""

    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Codec:
    """How the tar stream is compressed, validated before anything is written."""

    fmt: str
    level: int | None  #: None only for an uncompressed "tar"
    threads: int  #: resolved: at least 1


class Entry(NamedTuple):
    """One member of the archive, as it will be written (paths are archive names).

    A named tuple, not a frozen dataclass: one is made per file of the tree
    before packing starts, and a tuple is made three times faster.
    """

    name: str
    kind: Kind
    mode: int
    mtime: int
    size: int = 0
    linkname: str = ""
    source: str | None = None  #: the file to read, for kind "file"


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def codec(fmt: str, level: int | None = None, threads: int = 0) -> Codec:
    """Check ``--format``/``--level``/``--threads`` and fill in the defaults.

    ``threads=0`` means every core this process may use.

    >>> codec("tar.gz", None, 4)
    Codec(fmt='tar.gz', level=5, threads=4)
    """
    if fmt not in FORMATS:
        raise UsageError(f"{fmt!r} is not an archive format; use one of {', '.join(FORMATS)}.")
    if threads < 0:
        raise UsageError(f"--threads {threads} is negative; use 0 for all cores or a positive count.",
                         hint="Leave --threads out to use every core.")
    if fmt == "tar":
        return Codec(fmt, None, 1)
    low, high = LEVEL_RANGES[fmt]
    if level is None:
        level = DEFAULT_LEVELS[fmt]
    elif not low <= level <= high:
        ranges = ", ".join(f"{f} {lo}-{hi}" for f, (lo, hi) in LEVEL_RANGES.items())
        raise UsageError(f"--level {level} is out of range for {fmt} ({low}-{high}).",
                         hint=f"Levels by format: {ranges}; leave --level out for the default ({DEFAULT_LEVELS[fmt]}).")
    if fmt == "tar.xz":
        threads = 1
    return Codec(fmt, level, threads or cpu_count())


# -- what goes in, in which order ------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """The tree as a walk the caller already made saw it, so that packing does not walk it again.

    ``rows`` hold every file, symlink and directory below the root
    (:func:`shipenv.bundle.manifest.walk_stat` with its ``dirs``), in any
    order; ``again`` are top-level names that changed since, looked at anew.
    The caller vouches that nothing else changed (the build's walk is after
    its last stage outside ``.shipenv/``).
    """

    rows: Sequence[tuple[str, str, os.stat_result]]
    again: tuple[str, ...] = ()


def plan(root: Path, arcname: str, mtime: int, listing: Listing | None = None) -> Iterator[Entry]:
    """The archive's members, in archive order, with normalized metadata.

    Sockets, FIFOs and devices come out as ``kind="other"``: :func:`write`
    refuses them, naming every one.
    """
    top = os.fspath(root)
    yield Entry(arcname, "dir", 0o755, _clamp(os.lstat(top), mtime))
    meta = os.path.join(top, FIRST[0])
    # Only a real .shipenv/ directory goes first: never a path through a symlink.
    real_meta = os.path.isdir(meta) and not os.path.islink(meta)
    first = [rel for rel in FIRST if real_meta and os.path.lexists(os.path.join(top, rel))]
    for rel in first:
        full = os.path.join(top, rel)
        yield _entry(f"{arcname}/{rel}", os.lstat(full), full, mtime)
    for rel, st, full in _walk(top, "") if listing is None else _listed(top, listing):
        if rel not in first:
            yield _entry(f"{arcname}/{rel}", st, full, mtime)


def _listed(top: str, listing: Listing) -> list[tuple[str, os.stat_result, str]]:
    """:func:`_walk`'s rows and order from a :class:`Listing`: sorted by each name's bytes, level by level."""
    again = set(listing.again)
    rows = [(rel, st, full) for rel, full, st in listing.rows if rel.partition("/")[0] not in again]
    for name in listing.again:
        full = os.path.join(top, name)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        rows.append((name, st, full))
        if stat.S_ISDIR(st.st_mode):
            rows.extend(_walk(full, name + "/"))
    # A directory's path is a prefix of its contents': sorting by the list of names is the depth-first walk.
    # With each "/" as NUL (below every byte a name can hold) one bytes string compares as that list: 8x faster.
    rows.sort(key=lambda row: os.fsencode(row[0].replace("/", "\0")))
    return rows


def _walk(directory: str, prefix: str) -> Iterator[tuple[str, os.stat_result, str]]:
    """Depth-first, names sorted by bytes, each directory before its contents; symlinks not followed."""
    with os.scandir(directory) as it:  # closed before the walk goes down: one descriptor at a time
        found = sorted(it, key=lambda e: os.fsencode(e.name))
    for e in found:
        st = e.stat(follow_symlinks=False)
        rel = prefix + e.name
        yield rel, st, e.path
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(e.path, rel + "/")


def _clamp(st: os.stat_result, mtime: int) -> int:
    return min(max(int(st.st_mtime), 0), mtime)


def _entry(name: str, st: os.stat_result, full: str, mtime: int) -> Entry:
    if stat.S_ISDIR(st.st_mode):
        return Entry(name, "dir", 0o755, _clamp(st, mtime))
    if stat.S_ISLNK(st.st_mode):
        return Entry(name, "symlink", 0o777, _clamp(st, mtime), linkname=os.readlink(full))
    if stat.S_ISREG(st.st_mode):
        mode = 0o755 if st.st_mode & 0o111 else 0o644
        return Entry(name, "file", mode, _clamp(st, mtime), size=st.st_size, source=full)
    return Entry(name, "other", 0, 0)


def header(entry: Entry) -> bytes:
    """The tar header block(s) of one entry, PAX format, owner root with no names.

    The bytes ``tarfile.TarInfo.tobuf(PAX_FORMAT)`` gives, built by :mod:`shipenv.bundle.ustar`
    in a sixth of the time (a header per member was the packing thread's largest cost).
    """
    return ustar.block(entry.name, entry.kind, entry.mode, entry.mtime, entry.size, entry.linkname)


# -- writing -------------------------------------------------------------------------------


class FileSink:
    """The destination file; hashes and counts what is written, so the archive is never read back."""

    def __init__(self, f: BinaryIO, dest: Path) -> None:
        self._f = f
        self._dest = dest
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        try:
            self._f.write(data)
        except OSError as exc:
            raise ArchiveError(
                f"Cannot write {self._dest}: {exc.strerror or exc}.",
                hint="Check the free space and permissions of the output directory.",
            ) from exc
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class TarStream:
    """Tar blocks into the encoder in whole ``CHUNK``s: the compressor sees the same pieces whatever the files.

    Headers and file contents go straight into the one chunk buffer (files
    read with ``os.readv``, no file object per member); the encoder gets the
    chunk when it is full. This thread's work is what zstd's workers wait for.
    """

    def __init__(self, out: Encoder, progress: Progress | None) -> None:
        self._out = out
        self._view = memoryview(bytearray(CHUNK))
        self._pos = 0
        self._progress = progress
        self._last_tick = 0.0
        self._probe = bytearray(1)  #: a byte past a file's end, read only if it grew
        self.total = 0  #: bytes of tar stream so far
        self.files = 0  #: non-directory entries so far
        self.bytes = 0  #: file content so far

    def write(self, data: bytes) -> None:
        n = len(data)
        self.total += n
        pos = self._pos
        if pos + n < CHUNK:  # a header, padding: the common case
            self._view[pos : pos + n] = data
            self._pos = pos + n
            return
        view = memoryview(data)
        while view:
            n = min(len(view), CHUNK - self._pos)
            self._view[self._pos : self._pos + n] = view[:n]
            self._pos += n
            view = view[n:]
            if self._pos == CHUNK:
                self._flush()

    def _flush(self) -> None:
        self._out.write(self._view[: self._pos])
        self._pos = 0

    def add(self, entry: Entry, rel: str) -> None:
        self.write(header(entry))
        if entry.kind == "file":
            assert entry.source is not None
            self._copy(entry.source, entry.size, rel)
            padding = -entry.size % tarfile.BLOCKSIZE
            if padding:
                self.write(_ZEROS[:padding])
        if entry.kind != "dir":
            self.files += 1
        self.tick()

    def _copy(self, source: str, size: int, rel: str) -> None:
        """The file's bytes, read straight into the chunk buffer; the last read asks for one byte more, to see it did not grow."""
        left = size
        grew = False
        try:
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                while True:
                    pos = self._pos
                    room = CHUNK - pos
                    if left <= room:
                        n = os.readv(fd, [self._view[pos : pos + left], self._probe])
                        if n > left:
                            grew, n = True, left
                    else:
                        n = os.readv(fd, [self._view[pos:]])
                    self._pos += n
                    left -= n
                    self.bytes += n
                    self.total += n
                    if self._pos == CHUNK:
                        self._flush()
                        self.tick()
                    if not n or not left or grew:
                        break
            finally:
                os.close(fd)
        except OSError as exc:
            raise cannot_read_member(rel, exc) from exc
        if left or grew:
            raise changed_while_packing(rel)

    def end(self) -> None:
        """Hand the encoder what is buffered: the end of one fragment (:mod:`shipenv.bundle.fragments`), not of the archive."""
        if self._pos:
            self._flush()

    def tick(self, final: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if final or now - self._last_tick >= _PROGRESS_EVERY:
            self._last_tick = now
            self._progress(self.files, self.bytes)

    def finish(self, before: int = 0) -> None:
        """End-of-archive: two zero blocks, then zeros up to a whole tar record, as GNU tar does.

        ``before`` is the tar stream that earlier fragments already hold.
        """
        self.write(end_blocks(before + self.total))
        self.end()
        self.tick(final=True)


def cannot_read_member(rel: str, exc: OSError) -> ArchiveError:
    return ArchiveError(f"Cannot read {rel} while packing: {exc.strerror or exc}.")


def changed_while_packing(rel: str) -> ArchiveError:
    """A file whose size is no longer the one its tar header (written already) gives."""
    return ArchiveError(f"{rel} changed size while it was being packed.",
                        hint="Nothing else may write into the tree during a build; run the build again.")


def end_blocks(total: int) -> bytes:
    """What ends a tar stream of ``total`` bytes: two zero blocks, padded to a whole 10240-byte record."""
    end = 2 * tarfile.BLOCKSIZE
    return bytes(end + (-(total + end) % _TAR_RECORD))


def write(
    root: Path,
    dest: Path,
    fmt: str,
    *,
    level: int | None,
    threads: int,
    mtime: int,
    arcname: str,
    progress: Progress | None = None,
) -> Packed:
    """Pack ``root`` as ``arcname/`` into ``dest`` (which must not exist yet).

    Example: ``write(tree, Path("app-2.0.0.tar.zst"), "tar.zst", level=None,
    threads=0, mtime=1577836800, arcname="app-2.0.0")``. ``progress(files,
    bytes)`` is called every tenth of a second and once at the end. On any
    error the partial ``dest`` is removed.
    """
    c = codec(fmt, level, threads)
    _check_root(root)
    f = create(dest)
    out: Encoder | None = None
    try:
        with f:
            sink = FileSink(f, dest)
            out = _codecs.encoder(c.fmt, c.level, c.threads, sink)
            tar = TarStream(out, progress)
            # The walk streams into the compressor (its workers start on the first chunk, not after
            # the whole tree was listed); what cannot be packed is collected and refused at the end.
            bad: list[str] = []
            for entry in plan(root, arcname, mtime):
                if entry.kind == "other":
                    bad.append(relative(entry, arcname))
                elif not bad:
                    tar.add(entry, relative(entry, arcname))
            _refuse_other(bad)
            tar.finish()
            out.close()
            out = None
        return Packed(dest, sink.sha256.hexdigest(), sink.size)
    except BaseException:
        if out is not None:
            out.abort()
        with contextlib.suppress(OSError):
            dest.unlink()
        raise


def members(root: Path, arcname: str, mtime: int, listing: Listing | None = None) -> list[Entry]:
    """:func:`plan` as a list, refusing a tree that is not a directory or holds anything but files, directories and symlinks."""
    _check_root(root)
    entries = list(plan(root, arcname, mtime, listing))
    _refuse_other([relative(e, arcname) for e in entries if e.kind == "other"])
    return entries


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise ArchiveError(f"Cannot pack {root}: it is not a directory.")


def _refuse_other(bad: list[str]) -> None:
    if bad:
        raise ArchiveError(
            f"Cannot pack {listing(bad)}: only files, directories and symlinks go into a bundle.",
            hint="Remove sockets, FIFOs and device files from the tree.",
        )


def relative(entry: Entry, arcname: str) -> str:
    """The entry's path inside the tree (``.`` for the top directory)."""
    return entry.name[len(arcname) + 1 :] or "."


def create(dest: Path) -> BinaryIO:
    """Open ``dest`` for writing; it must not exist yet."""
    try:
        return open(dest, "xb")
    except FileExistsError:
        raise ArchiveError(f"{dest} already exists.", hint="Remove it or choose another output.") from None
    except OSError as exc:
        raise ArchiveError(f"Cannot create {dest}: {exc.strerror or exc}.") from exc


# -- reading -------------------------------------------------------------------------------


def detect(path: Path) -> str:
    """``"tar.zst"``, ``"tar.gz"``, ``"tar.xz"`` or ``"tar"``, from the first bytes, whatever the file is called."""
    try:
        with path.open("rb") as f:
            head = f.read(tarfile.BLOCKSIZE)
    except FileNotFoundError:
        raise ArchiveError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise ArchiveError(f"{path} is a directory, not a bundle archive.") from None
    except OSError as exc:
        raise ArchiveError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    if head.startswith(_codecs.ZSTD_MAGIC):
        return "tar.zst"
    if head.startswith(_codecs.GZIP_MAGIC):
        return "tar.gz"
    if head.startswith(_codecs.XZ_MAGIC):
        return "tar.xz"
    if head[257:262] == b"ustar":
        return "tar"
    raise ArchiveError(
        f"{path} is not a bundle archive: it is not a .tar.zst, .tar.gz, .tar.xz or .tar file.",
        hint="Give the archive that shipenv build wrote, or an unpacked bundle directory.",
    )


@contextlib.contextmanager
def open_stream(path: Path, gate: _frames.Gate | None = None) -> Iterator[TarReader]:
    """The archive's members in order, each read once (:class:`~shipenv.bundle.tarstream.TarReader`).

    Damaged data raises :class:`ArchiveError` with one sentence, never a
    zstd/zlib/lzma exception; a hostile header (one larger than any bundle
    needs, a sparse member) :class:`RefusedArchive`. When the caller reads
    every member, the rest of the stream (padding, checksums, trailers) is
    read and checked on exit too; a caller that stops early (``inspect``)
    does not pay for it. A ``.tar.zst``'s frame index is checked first; with
    ``gate``, the frames its user decides to skip are never decoded
    (:mod:`shipenv.bundle.frames`).
    """
    fmt = detect(path)
    with path.open("rb") as f, contextlib.ExitStack() as stack:
        if fmt == "tar":
            _check_plain_tar(f, path)
        raw = _frames.read_ahead(fmt, f, path, gate)
        stack.callback(raw.close)  # stops the decoding thread before f closes
        tar = TarReader(raw, path, _CODEC_NAMES[fmt])
        yield tar
        if tar.ended:
            tar.drain()


def _check_plain_tar(f: BinaryIO, path: Path) -> None:
    """An uncompressed tar ends with two zero blocks; without them it was cut short."""
    size = os.fstat(f.fileno()).st_size
    end = 2 * tarfile.BLOCKSIZE
    if size < end or size % tarfile.BLOCKSIZE or os.pread(f.fileno(), end, size - end) != bytes(end):
        raise _codecs.truncated(path, "tar")
