"""The tar parser every reader goes through: what it accepts reads as Python's tarfile reads it, and what is damaged or hostile is one sentence.

What a user would notice: a bundle that GNU tar, busybox or Python packed
and shipenv cannot deploy (or deploys with other names, modes or bytes), a
damaged download that deploys half, and an archive of a few kilobytes that
makes a deploy read a gigabyte into memory.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shipenv.bundle import archive, tarstream
from shipenv.bundle.tarstream import HEADER_LIMIT, TarReader
from shipenv.errors import ArchiveError, RefusedArchive
from tests.chroots import root_path

Parsed = tuple[str, bytes, int, int, int, str, bytes]  # name, type, mode, size, mtime, linkname, data
HERE = Path("x.tar")


class Pieces(io.RawIOBase):
    """A decoder that hands out at most ``size`` bytes per read (chunks end anywhere), counting what it gave."""

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self._data = data
        self._size = size or len(data) or 1
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self._size, len(self._data) - self.given)
        buf[:n] = self._data[self.given : self.given + n]
        self.given += n
        return n


def ours(data: bytes, piece: int | None = None) -> list[Parsed]:
    reader = TarReader(Pieces(data, piece), HERE, "tar")
    out = [(h.name, h.type, h.mode, h.size, h.mtime, h.linkname, reader.extractfile(h).read() if h.isreg() else b"")
           for h in reader]
    assert reader.ended
    return out


def theirs(data: bytes) -> list[Parsed]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, m.type, m.mode, m.size, int(m.mtime), m.linkname, tar.extractfile(m).read() if m.isreg() else b"")  # type: ignore[union-attr]
                for m in tar]


# -- what tarfile, GNU tar and busybox write reads as tarfile reads it --------------------------------------

_PART = st.text(st.sampled_from("abcXYZ019._- éü日"), min_size=1, max_size=40).filter(lambda p: p not in (".", ".."))
_NAME = st.lists(_PART, min_size=1, max_size=6).map("/".join)
_MEMBER = st.tuples(st.sampled_from(["file", "dir", "symlink", "hardlink"]), _NAME, st.binary(max_size=1500),
                    st.integers(0, 0o7777), st.integers(0, 1 << 40), _NAME)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=st.lists(_MEMBER, min_size=1, max_size=8), fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
       piece=st.sampled_from([None, 500, 511, 513, 1000, 4096]))
def test_what_tarfile_writes_reads_as_tarfile_reads_it(members: list[tuple[str, str, bytes, int, int, str]], fmt: int,
                                                       piece: int | None) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for kind, name, data, mode, mtime, link in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, mtime
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
            if kind == "file":
                info.size = len(data)
            else:
                info.linkname = link if kind != "dir" else ""
            try:
                tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
            except ValueError:  # ustar cannot hold it (a long name, a late mtime): nothing to compare
                assume(False)
    data = raw.getvalue()
    assert ours(data, piece) == theirs(data)


def _tree(base: Path, long: bool) -> Path:
    root = base / "app-1.0"
    deep = root / ("d" * 60) / ("é" * 30) / "sub" if long else root / "lib"
    deep.mkdir(parents=True)
    (deep / ("name-" * 25 if long else "name.py")).write_bytes(b"x" * 700)
    (root / "empty").write_bytes(b"")
    (root / "block").write_bytes(os.urandom(512))
    (root / "tool").write_bytes(b"#!/bin/sh\n")
    (root / "tool").chmod(0o755)
    os.symlink(os.path.relpath(next(deep.iterdir()), root), root / "link")
    os.link(root / "block", root / "block-again")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (1577836800, 1577836800), follow_symlinks=False)
    return root


@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix", "ustar", "v7"])
def test_gnu_tar_archives_read_as_tarfile_reads_them(tmp_path: Path, fmt: str) -> None:
    root = _tree(tmp_path, long=fmt in ("gnu", "oldgnu", "posix"))
    data = subprocess.run(["tar", f"--format={fmt}", "-cf", "-", "-C", str(root.parent), root.name], capture_output=True, check=True).stdout
    found = ours(data, 4096)
    assert found == theirs(data)
    assert {kind for _, kind, *_ in found} >= {tarfile.REGTYPE if fmt != "v7" else tarfile.AREGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE}


def test_busybox_archives_read_as_tarfile_reads_them(tmp_path: Path) -> None:
    root = _tree(tmp_path, long=True)
    busybox = root_path("busybox") / "bin" / "busybox"  # static: it runs on the host as it is
    data = subprocess.run([str(busybox), "tar", "-cf", "-", "-C", str(root.parent), root.name], capture_output=True, check=True).stdout
    assert ours(data) == theirs(data)
    assert any(len(name) > 100 for name, *_ in ours(data))  # a GNU long name


# -- crafted headers ---------------------------------------------------------------------------------------


_FIELDS = {"size": 124, "mode": 100, "mtime": 136}


def header(name: str = "app-1.0/f", size: int = 0, kind: bytes = tarfile.REGTYPE, fields: dict[str, bytes] | None = None) -> bytes:
    """One ustar header block, ``fields`` (``{"size": raw bytes}``) written over it and the checksum redone."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    buf = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    for field, value in (fields or {}).items():
        buf[_FIELDS[field] : _FIELDS[field] + len(value)] = value
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE, fields: dict[str, bytes] | None = None) -> bytes:
    return header(name, len(data), kind, fields) + data + bytes(-len(data) % 512)


def record(key: str, value: bytes) -> bytes:
    """One pax record; its length counts its own digits."""
    rest = b" %s=%s\n" % (key.encode(), value)
    length = len(rest) + 1
    while len(str(length)) + len(rest) != length:
        length = len(str(length)) + len(rest)
    return b"%d" % length + rest


def pax(records: dict[str, bytes], kind: bytes = tarfile.XHDTYPE) -> bytes:
    return member("././@PaxHeader", b"".join(record(k, v) for k, v in records.items()), kind)


END = bytes(1024)
FINE = member("app-1.0/a", b"hello\n")


def error_of(data: bytes, piece: int | None = None) -> str:
    with pytest.raises(ArchiveError) as info:
        ours(data, piece)
    return info.value.message


def test_the_first_header_decides_whether_it_is_tar_at_all() -> None:
    bad = bytearray(FINE)
    bad[0] ^= 1  # the checksum no longer adds up
    assert error_of(bytes(bad) + END) == "x.tar is corrupt (the tar stream does not hold a tar archive: bad checksum)."
    assert error_of(b"") == "x.tar is corrupt (the tar stream does not hold a tar archive: empty file)."
    assert error_of(FINE[:300]) == "x.tar is corrupt (the tar stream does not hold a tar archive: truncated header)."


def test_a_bad_checksum_later_is_damage_not_the_end() -> None:
    bad = bytearray(member("app-1.0/b", b"x"))
    bad[10] ^= 1
    assert error_of(FINE + bytes(bad) + END) == "x.tar is corrupt (bad checksum in the tar header at byte 1024)."


def test_signed_checksums_of_old_tars_are_taken() -> None:
    buf = bytearray(header("app-1.0/é"))  # bytes above 127: the signed sum differs
    signed = sum(b - 256 if b > 127 else b for b in buf[:148] + buf[156:]) + 256
    buf[148:156] = b"%06o\0 " % signed
    assert [n for n, *_ in ours(bytes(buf) + END)] == ["app-1.0/é"]


@pytest.mark.parametrize("field, value, why", [
    ("size", b"\xff" + bytes(10) + b"\x01", "a negative size"),
    ("size", b"-0000001234\0", "invalid header"),
    ("size", b"0000_001234\0", "invalid header"),
    ("mode", b"0000+644", "invalid header"),
    ("mtime", b"\x80" + b"\xff" * 11, "the mtime of 'app-1.0/b' is out of range"),
])
def test_numbers_are_octal_or_base_256_and_nothing_else(field: str, value: bytes, why: str) -> None:
    assert error_of(FINE + header("app-1.0/b", fields={field: value}) + END) == f"x.tar is corrupt ({why} in the tar header at byte 1024)."


def test_base_256_numbers_are_read() -> None:
    big = header("app-1.0/b", fields={"mtime": b"\x80" + (1 << 40).to_bytes(11, "big")}) + END
    assert [m for _, _, _, _, m, _, _ in ours(big)] == [1 << 40]
    huge = header("app-1.0/b", fields={"size": b"\x80" + (1 << 80).to_bytes(11, "big")})
    reader = TarReader(Pieces(huge + FINE + END), HERE, "tar")
    first = next(reader)
    assert first.size == 1 << 80  # RECORD's size decides before a byte is read (reader.py)
    with pytest.raises(ArchiveError, match="truncated"):
        reader.extractfile(first).read()


def test_an_extended_header_above_the_limit_is_refused_before_it_is_read() -> None:
    for kind in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, b"X"):
        raw = Pieces(header("././@PaxHeader", HEADER_LIMIT + 1, kind) + bytes(HEADER_LIMIT + 1024), 512)
        with pytest.raises(RefusedArchive) as info:
            list(TarReader(raw, HERE, "tar"))
        assert info.value.message == "Refused x.tar: an extended tar header is larger than any bundle needs; nothing was deployed."
        assert raw.given == 512  # the header block, and nothing of what it declares
    at_limit = pax({"comment": b"c" * (HEADER_LIMIT - 16)})
    assert len(at_limit) == 512 + HEADER_LIMIT  # the limit itself is fine
    assert [n for n, *_ in ours(at_limit + FINE + END)] == ["app-1.0/a"]


def test_pax_records_replace_header_fields() -> None:
    long = "app-1.0/" + "é" * 200
    data = pax({"path": long.encode(), "mtime": b"1577836800.25", "uid": b"7", "linkpath": b"ignored-for-a-file"}) + FINE + END
    assert ours(data) == [(long, tarfile.REGTYPE, 0o644, 6, 1577836800, "ignored-for-a-file", b"hello\n")]
    assert ours(data) == theirs(data)


def test_a_pax_size_larger_than_the_member_runs_into_the_end() -> None:
    assert error_of(pax({"size": b"5000"}) + FINE + END) == "x.tar is truncated: its tar data ends before the archive does."


@pytest.mark.parametrize("records, why", [
    ({"path": b"app-1.0/a\0/etc/passwd"}, "a pax header names a path with a NUL byte"),
    ({"size": b"-5"}, "the pax size of 'app-1.0/a' is not a number"),
    ({"mtime": b"nan"}, "the pax mtime of 'app-1.0/a' is not a number"),
])
def test_pax_values_that_cannot_be(records: dict[str, bytes], why: str) -> None:
    assert error_of(FINE + pax(records) + FINE + END) == f"x.tar is corrupt ({why} in the tar header at byte 1024)."


@pytest.mark.parametrize("body", [b"99 path=app-1.0/a\n", b"12 path=a\n", b"x path=a\n", b"7 path\n", b"5 =a\n"])
def test_a_pax_record_that_does_not_parse_is_damage(body: bytes) -> None:
    assert error_of(FINE + member("././@PaxHeader", body, tarfile.XHDTYPE) + FINE + END) == "x.tar is corrupt (invalid pax header in the tar header at byte 1024)."


def test_a_global_header_applies_to_every_later_member_unless_one_says_otherwise() -> None:
    data = (FINE + pax({"mtime": b"1000"}, tarfile.XGLTYPE) + member("app-1.0/b", b"b")
            + pax({"mtime": b"2000"}) + member("app-1.0/c", b"c") + pax({"mtime": b""}) + member("app-1.0/d", b"d")
            + member("app-1.0/e", b"e") + END)
    assert [(n, m) for n, _, _, _, m, _, _ in ours(data)] == [("app-1.0/a", 0), ("app-1.0/b", 1000), ("app-1.0/c", 2000),
                                                              ("app-1.0/d", 0), ("app-1.0/e", 1000)]


def test_an_extended_header_must_be_followed_by_a_member() -> None:
    assert error_of(FINE + pax({"path": b"app-1.0/z"}) + END) == (
        "x.tar is corrupt (an extended header is followed by no member in the tar header at byte 1024).")


def test_sparse_members_are_refused() -> None:
    for data in (FINE + member("app-1.0/holes", b"", b"S") + END,
                 FINE + pax({"GNU.sparse.major": b"1", "GNU.sparse.minor": b"0", "GNU.sparse.name": b"app-1.0/holes"}) + FINE + END):
        with pytest.raises(RefusedArchive, match="entry 'app-1.0/holes' is a sparse file, which shipenv build never writes"):
            ours(data)


def test_cut_in_a_header_or_in_the_data_is_truncated() -> None:
    whole = FINE + member("app-1.0/b", os.urandom(3000)) + END
    for cut in (len(FINE) + 100, len(FINE) + 512 + 1000, len(FINE) + 512 + 3000 + 10):
        assert error_of(whole[:cut], 700) == "x.tar is truncated: its tar data ends before the archive does."


def test_the_end() -> None:
    reader = TarReader(Pieces(FINE + END + b"anything after the end"), HERE, "tar")
    assert [h.name for h in reader] == ["app-1.0/a"] and reader.ended
    early = TarReader(Pieces(FINE + FINE + END), HERE, "tar")
    assert next(early).name == "app-1.0/a" and not early.ended
    assert [h.name for h in TarReader(Pieces(FINE), HERE, "tar")] == ["app-1.0/a"]  # no end blocks: tarfile's rule


def test_a_member_is_read_once_and_only_while_it_is_current() -> None:
    reader = TarReader(Pieces(FINE + member("app-1.0/b", b"bee") + END, 700), HERE, "tar")
    first = reader.extractfile(next(reader))
    assert first.read(0) == b"" and bytes(first.view(2)) + first.read() == b"hello\n"
    stale = first
    second = reader.extractfile(next(reader))
    assert stale.read() == b"" and second.read() == b"bee"


def test_open_stream_names_the_archive_in_its_sentences(tmp_path: Path) -> None:
    bad = bytearray(member("app-1.0/b", b"x"))
    bad[10] ^= 1  # in the name: only the checksum can tell
    path = tmp_path / "app-1.0.tar.gz"
    path.write_bytes(gzip.compress(FINE + bytes(bad) + END))
    with pytest.raises(ArchiveError) as info, archive.open_stream(path) as tar:
        list(tar)
    assert info.value.message == f"{path} is corrupt (bad checksum in the tar header at byte 1024)."
    assert tarstream.Header("a", tarfile.DIRTYPE, 0, 0, 0, "").isdir()
