"""The tar stream inside a bundle archive, header by header: the one tar parser every reader goes through.

:func:`shipenv.bundle.archive.open_stream` hands the decoder's output to a
:class:`TarReader`; :mod:`shipenv.bundle.reader` iterates its :class:`Header`\\ s
and reads each file's bytes through :meth:`TarReader.extractfile`.

Why not ``tarfile``: in stream mode it cost most of a first deploy's reading
time per member (``TarInfo.frombuf`` parses twelve fields and two checksums,
``_proc_member`` and the pax parser run regular expressions, every member gets
an ``ExFileObject``, and its ``_Stream`` joins and slices its buffer on every
read), and it is lenient where a deploy must not be: a bad checksum or a pax
record that does not parse in the middle of an archive ends the archive
without a word, octal fields take signs and underscores, and a pax header is
read into memory whatever size it declares (which ``archive.py`` had to bound
by overriding a private method). This parser reads only what the reader uses
(name, type, mode, size, mtime, link target), checks what it reads, and turns
the rest of what can be wrong into one sentence. One parser, one policy: there
is no fallback to ``tarfile`` (STYLE.md).

What it accepts (what ``tarfile`` accepted from GNU tar, busybox, Python and
shipenv build):

- ustar, GNU and v7 headers; the checksum as an unsigned or a signed sum (Sun
  and NeXT); numbers in octal (spaces and NULs around them) or GNU base-256;
- the ustar ``prefix`` joined to the name (not in GNU headers, whose bytes
  there are times); an old-style directory (a regular file whose name ends
  in ``/``);
- GNU ``L``/``K`` long names and link targets; pax ``x`` (and Solaris ``X``)
  headers: ``path``, ``linkpath``, ``size``, ``mtime`` (other records, owners
  among them, are read and ignored); ``g`` global headers, whose records apply
  to every later member as ``tarfile`` applies them, an ``x`` record taking
  precedence; an empty value removes the record (POSIX);
- the end at the first all-zero block, as ``tarfile`` and GNU tar stop there;
  a stream that stops cleanly where a header would begin ends the archive too
  (a compressed stream that was cut is caught by its decoder first, a plain
  tar by ``archive.open_stream``).

What it refuses, each as one sentence:

- an extended header (``x``, ``g``, ``X``, ``L``, ``K``) declaring more than
  :data:`HEADER_LIMIT` bytes, before a byte of it is read; a GNU sparse member
  (type ``S`` or ``GNU.sparse.*`` records): :class:`RefusedArchive`;
- a bad checksum, a number that is neither octal nor base-256, a negative
  size, an mtime no file system holds, a pax record that does not parse or a
  path with a NUL byte, an extended header followed by no member:
  "ARCHIVE is corrupt (...)", or in the very first header "the zstd stream
  does not hold a tar archive: ..." (it was not a tar at all);
- a stream that stops inside a header or inside a member's data: "ARCHIVE is
  truncated ...".

Member bytes are handed out as memoryviews of the decoder's 1 MiB chunks
(:meth:`MemberFile.view`; the very buffers the decoding thread of
:class:`~shipenv.bundle.codecs.ReadAhead` filled), never joined or copied on the way: a chunk is freed
when the last view of it is, and the writer's bounded queue bounds how many
are held.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Protocol

from shipenv.bundle import codecs as _codecs
from shipenv.bundle.codecs import CHUNK
from shipenv.errors import ArchiveError, RefusedArchive

log = logging.getLogger(__name__)

BLOCK = 512
#: The largest pax extended header or GNU long name/link accepted. shipenv writes a
#: few hundred bytes at most (a long path, a long link target); the size is checked
#: before a byte of it is read, so a 36 KB archive declaring 1 GiB costs nothing.
HEADER_LIMIT = 256 << 10

REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE = b"0", b"\0", b"1", b"2"
CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = b"3", b"4", b"5", b"6", b"7"
LONGNAME, LONGLINK, SPARSE = b"L", b"K", b"S"
PAX, PAX_GLOBAL, SOLARIS_PAX = b"x", b"g", b"X"

_REGULAR = frozenset((REGTYPE, AREGTYPE, CONTTYPE))
#: Types whose size is not followed by data (tarfile's rule: everything else is skipped by its size).
_NO_DATA = frozenset((LNKTYPE, SYMTYPE, DIRTYPE, FIFOTYPE, CHRTYPE, BLKTYPE))
_EXTENDED = frozenset((LONGNAME, LONGLINK, PAX, PAX_GLOBAL, SOLARIS_PAX))
_ZEROS = bytes(BLOCK)
_OCTAL = re.compile(rb" *[0-7]* *")
_DECIMAL = re.compile(rb"[0-9]+")
_TIME = re.compile(rb"(-?[0-9]+)(?:\.[0-9]*)?")
_POSIX_MAGIC = b"ustar\x00"
_TIME_RANGE = 1 << 62  # seconds: far past any date, well inside what utime(2) takes
_EMPTY = memoryview(b"")


class Raw(Protocol):
    """The decoder's output (``codecs.read_ahead``) or a plain tar file."""

    def readinto(self, buffer: bytearray, /) -> int | None: ...


class Header:
    """One member as the archive describes it: only what the reader uses."""

    __slots__ = ("linkname", "mode", "mtime", "name", "size", "type")

    def __init__(self, name: str, type_: bytes, mode: int, size: int, mtime: int, linkname: str) -> None:
        self.name = name
        self.type = type_  #: one byte, as in the header (``tarfile``'s constants are the same bytes)
        self.mode = mode
        self.size = size
        self.mtime = mtime
        self.linkname = linkname

    def isdir(self) -> bool:
        return self.type == DIRTYPE

    def isreg(self) -> bool:
        return self.type in _REGULAR

    isfile = isreg

    def issym(self) -> bool:
        return self.type == SYMTYPE

    def islnk(self) -> bool:
        return self.type == LNKTYPE

    def __repr__(self) -> str:
        return f"Header({self.name!r}, type={self.type!r}, size={self.size})"


class _Damage(Exception):
    """Internal: what is wrong with a header, as a phrase; :class:`TarReader` makes the sentence."""


class TarReader:
    """Members in archive order, each read once: ``for header in reader``, then ``extractfile(header)``.

    :attr:`ended` tells whether the end-of-archive block was reached (rather
    than the caller stopping early).
    """

    def __init__(self, raw: Raw, path: Path, codec: str) -> None:
        self._raw = raw
        self._chunks = raw.next_chunk if isinstance(raw, _codecs.ReadAhead) else None  # its chunks as they are: no copy
        self._path = path
        self._codec = codec  #: "zstd", "gzip", "xz" or "tar", for messages
        self._view = _EMPTY
        self._pos = 0
        self._eof = False
        self.offset = 0  #: bytes of the tar stream consumed so far
        self._left = 0  # bytes of the current member's data not yet read
        self._pad = 0  # and the padding after them
        self._globals: dict[str, bytes] = {}
        self.members = 0  #: headers returned so far
        self.ended = False

    # -- the decoder's chunks ------------------------------------------------------------------

    def _fill(self) -> bool:
        if self._eof:
            return False
        if self._chunks is not None:
            view = self._chunks()  # a fresh buffer each time, as views of the last one may still be queued for writing
        else:
            buf = bytearray(CHUNK)  # a fresh chunk, for the same reason
            view = memoryview(buf)[: self._raw.readinto(buf) or 0]
        if not view:
            self._eof = True
            return False
        self._view = view
        self._pos = 0
        return True

    def _take(self, n: int) -> memoryview:
        """Up to ``n`` bytes from the current chunk (the next one when it is used up); empty at the end."""
        if self._pos >= len(self._view) and not self._fill():
            return _EMPTY
        start = self._pos
        end = min(start + n, len(self._view))
        self._pos = end
        self.offset += end - start
        return self._view[start:end]

    def _exact(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream."""
        start = self._pos
        if len(self._view) - start >= n:
            self._pos = start + n
            self.offset += n
            return bytes(self._view[start : start + n])
        parts = []
        while n:
            piece = self._take(n)
            if not piece:
                break
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    def _skip(self, n: int) -> bool:
        """Skip ``n`` bytes; False when the stream ends first."""
        while n:
            piece = self._take(n)
            if not piece:
                return False
            n -= len(piece)
        return True

    # -- members -------------------------------------------------------------------------------

    def __iter__(self) -> TarReader:
        return self

    def __next__(self) -> Header:
        header = self.next()
        if header is None:
            raise StopIteration
        return header

    def next(self) -> Header | None:
        """The next member's header (what is left of the last member's data is skipped), or None at the end."""
        if self.ended:
            return None
        if self._left or self._pad:
            if not self._skip(self._left + self._pad):
                raise self._truncated()
            self._left = self._pad = 0
        start = self.offset
        try:
            header = self._header()
        except _Damage as exc:
            raise self._corrupt(str(exc), start) from None
        if header is None:
            self.ended = True
        else:
            self.members += 1
        return header

    def extractfile(self, header: Header) -> MemberFile:
        """The bytes of ``header``, the member :meth:`next` returned last (a stream reads each once)."""
        return MemberFile(self, self.members)

    def read(self, n: int) -> memoryview:
        """Up to ``n`` (> 0) bytes of the current member's data, as a view of the decoder's chunk; empty at its end."""
        left = self._left
        if not left or n <= 0:
            return _EMPTY
        piece = self._take(n if n < left else left)
        if not piece:
            raise self._truncated()
        self._left = left - len(piece)
        return piece

    def drain(self) -> None:
        """Read the stream to its end, so the decoder checks what follows the end-of-archive block."""
        while self._fill():
            pass

    # -- one header ----------------------------------------------------------------------------

    def _header(self) -> Header | None:
        """The next member with its extended headers applied; None at the end-of-archive block."""
        pax: dict[str, bytes] = {}
        longname = longlink = None
        extended = False
        while True:
            buf = self._exact(BLOCK)
            if len(buf) < BLOCK:
                if not buf and not extended:
                    if not self.members:
                        raise _Damage("empty file")
                    return None  # no end-of-archive block, as tarfile allows: the decoder vouches for the stream
                if not self.members and not extended:
                    raise _Damage("truncated header")
                raise self._truncated()
            if buf == _ZEROS:
                if extended:
                    raise _Damage("an extended header is followed by no member")
                return None
            _check_sum(buf)
            kind = buf[156:157]
            size = _number(buf[124:136])
            if size < 0:
                raise _Damage("a negative size")
            if kind in _EXTENDED:
                if size > HEADER_LIMIT:
                    raise self._too_large(size)
                data = self._exact(size)
                if len(data) < size or not self._skip(-size % BLOCK):
                    raise self._truncated()
                extended = True
                if kind == LONGNAME:
                    longname = _text(data.split(b"\0", 1)[0])
                elif kind == LONGLINK:
                    longlink = _text(data.split(b"\0", 1)[0])
                elif kind == PAX_GLOBAL:
                    _records(data, self._globals, keep_empty=False)
                else:
                    _records(data, pax, keep_empty=True)
                continue
            name = buf[0:100].split(b"\0", 1)[0]
            if buf[257:263] == _POSIX_MAGIC and buf[345] != 0:
                name = buf[345:500].split(b"\0", 1)[0] + b"/" + name
            mode = _number(buf[100:108])
            if mode < 0:
                raise _Damage("a negative mode")
            header = Header(_text(name), kind, mode, size, _number(buf[136:148]), _text(buf[157:257].split(b"\0", 1)[0]))
            if kind == AREGTYPE and header.name.endswith("/"):
                header.type = DIRTYPE
            if longname is not None:
                header.name = longname
            if longlink is not None:
                header.linkname = longlink
            if self._globals or pax:
                self._apply({**self._globals, **pax}, header)
            if kind == SPARSE:
                raise self._sparse(header.name, header.size)
            if header.type == DIRTYPE:
                header.name = header.name.rstrip("/")
            if not -_TIME_RANGE < header.mtime < _TIME_RANGE:
                raise _Damage(f"the mtime of {header.name!r} is out of range")
            if header.type not in _NO_DATA:
                self._left, self._pad = header.size, -header.size % BLOCK
            return header

    def _apply(self, records: dict[str, bytes], header: Header) -> None:
        """The pax records that replace header fields; an empty value (an ``x`` record removing a ``g`` one) replaces nothing."""
        if any(key.startswith("GNU.sparse.") and value for key, value in records.items()):
            name = records.get("GNU.sparse.name") or records.get("path")
            raise self._sparse(_path(name) if name else header.name, header.size)
        if value := records.get("path"):
            header.name = _path(value).rstrip("/")
        if value := records.get("linkpath"):
            header.linkname = _path(value)
        if value := records.get("size"):
            if not _DECIMAL.fullmatch(value):
                raise _Damage(f"the pax size of {header.name!r} is not a number")
            header.size = int(value)
        if value := records.get("mtime"):
            match = _TIME.fullmatch(value)
            if match is None:
                raise _Damage(f"the pax mtime of {header.name!r} is not a number")
            header.mtime = int(match.group(1))

    # -- sentences -----------------------------------------------------------------------------

    def _corrupt(self, what: str, offset: int) -> ArchiveError:
        if not self.members:  # decompressed fine, but what came out is not tar
            return _codecs.corrupt(self._path, f"the {self._codec} stream does not hold a tar archive: {what}")
        return _codecs.corrupt(self._path, f"{what} in the tar header at byte {offset}")

    def _truncated(self) -> ArchiveError:
        return _codecs.truncated(self._path, self._codec)

    def _too_large(self, size: int) -> RefusedArchive:
        log.info("%s: an extended header of %d bytes, above the limit of %d", self._path, size, HEADER_LIMIT)
        return self._refused("an extended tar header is larger than any bundle needs")

    def _sparse(self, name: str, size: int) -> RefusedArchive:
        log.info("%s: a sparse member %r of %d bytes", self._path, name, size)
        return self._refused(f"entry {name!r} is a sparse file, which shipenv build never writes")

    def _refused(self, why: str) -> RefusedArchive:
        return RefusedArchive(f"Refused {self._path.name}: {why}; nothing was deployed.",
                              hint="Copy the archive again (compare it with its .sha256) or rebuild it with shipenv build.")


class MemberFile:
    """The bytes of one member, each read once, in the order of the stream."""

    __slots__ = ("_index", "_tar")

    def __init__(self, tar: TarReader, index: int) -> None:
        self._tar = tar
        self._index = index  # which member: once the stream has moved on, there is nothing left to read

    def view(self, n: int) -> memoryview:
        """Up to ``n`` (> 0) bytes as a view of the decoder's chunk (no copy); empty at the member's end."""
        if self._tar.members != self._index:
            return _EMPTY
        return self._tar.read(n)

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n`` < 0), copied."""
        if n >= 0:
            return bytes(self.view(n))
        parts = []
        while piece := self.view(CHUNK):
            parts.append(piece)
        return b"".join(parts)


# -- fields ------------------------------------------------------------------------------------


def _check_sum(buf: bytes) -> None:
    """The header's checksum: the sum of its bytes with the checksum field as spaces, unsigned or signed."""
    want = _number(buf[148:156])
    field = buf[148:156]
    unsigned = sum(buf) - sum(field) + 256
    if want == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in buf if b > 127) + 256 * sum(1 for b in field if b > 127)
    if want != signed:
        raise _Damage("bad checksum")


def _number(field: bytes) -> int:
    """An octal number (spaces and NULs around it) or GNU base-256 (first byte 0x80 positive, 0xff negative)."""
    digits = field[:-1]
    if field[-1] == 0 and digits.isdigit() and b"8" not in digits and b"9" not in digits:
        return int(digits, 8)  # what every tar writes: zero-padded digits and a NUL (isdigit: no sign, no "_")
    first = field[0]
    if first == 0o200:
        return int.from_bytes(field[1:], "big")
    if first == 0o377:
        return int.from_bytes(field[1:], "big") - (1 << (8 * (len(field) - 1)))
    digits = field.split(b"\0", 1)[0]
    if not _OCTAL.fullmatch(digits):
        raise _Damage("invalid header")
    digits = digits.strip(b" ")
    return int(digits, 8) if digits else 0


def _text(raw: bytes) -> str:
    """Names are bytes on Linux: UTF-8 where they are, the rest kept as surrogates (as tarfile and os do)."""
    return raw.decode("utf-8", "surrogateescape")


def _path(raw: bytes) -> str:
    if b"\0" in raw:
        raise _Damage("a pax header names a path with a NUL byte")
    return _text(raw)


def _records(data: bytes, into: dict[str, bytes], *, keep_empty: bool) -> None:
    """Parse pax records (``"%d %s=%s\\n" % (length, key, value)``, length counting the whole record) into ``into``.

    An empty value removes the key (POSIX): from the global records at once
    (``keep_empty`` false), and for one member by standing in for the global
    record. NUL padding after the last record is allowed; anything else that
    does not parse is damage.
    """
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0 and not data[pos:].strip(b"\0"):
            return
        space = data.find(b" ", pos, pos + 21)
        if space < 0 or not _DECIMAL.fullmatch(data, pos, space):
            raise _Damage("invalid pax header")
        stop = pos + int(data[pos:space])
        equals = data.find(b"=", space + 1, stop)
        if stop > end or stop <= space + 2 or data[stop - 1] != 0x0A or equals <= space + 1:
            raise _Damage("invalid pax header")
        key = _text(data[space + 1 : equals])
        value = data[equals + 1 : stop - 1]
        if value or keep_empty:
            into[key] = value
        else:
            into.pop(key, None)
        pos = stop
