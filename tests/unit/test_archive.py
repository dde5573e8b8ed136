"""Archive writer and readers on small trees made here.

What a user would notice: two builds of the same tree giving different
archives (a changed sha256 in CI), an archive that leaks the builder's uid or
a world-writable file, ``--level`` that does nothing, a ``.tar.gz`` that names
the build's temp file, a cut-off download unpacked without a word, and a
packer that needs gigabytes of memory for a big environment.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from shipenv.bundle import archive, manifest, tarstream
from shipenv.bundle import codecs as _codecs
from shipenv.errors import ArchiveError, UsageError

EPOCH = 1_600_000_000
FORMATS = ("tar.zst", "tar.gz", "tar.xz", "tar")
COMPRESSED = ("tar.zst", "tar.gz", "tar.xz")
LONG = "d" * 60 + "/" + "e" * 60 + "/" + "long-name-" * 5 + ".txt"


def make_tree(base: Path, *, with_manifest: bool = True, big: int = 0) -> Path:
    """A small bundle-like tree: scripts, data, symlinks, odd modes and names, a manifest."""
    root = base / "tree"
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(root / "bin" / "tool", 0o775)
    os.symlink("tool", root / "bin" / "link")
    (root / "lib" / "data.txt").write_text("data\n" * 1000)
    os.chmod(root / "lib" / "data.txt", 0o666)
    (root / "lib" / "sub" / "blob.bin").write_bytes(os.urandom(300_000) + bytes(200_000) + b"x" * big)
    (root / "lib" / "setuid").write_bytes(b"s")
    os.chmod(root / "lib" / "setuid", 0o4775)
    (root / "lib" / "private").write_bytes(b"p")
    os.chmod(root / "lib" / "private", 0o600)
    os.symlink("sub", root / "lib" / "alias")
    (root / "lib" / "café.txt").write_text("é")
    os.link(root / "lib" / "data.txt", root / "lib" / "hardlink.txt")
    (root / "old.txt").write_text("old")
    os.utime(root / "old.txt", (1000, 1000))
    (root / LONG).parent.mkdir(parents=True)
    (root / LONG).write_text("long")
    (root / ".a-first-by-name").write_text("sorts before .shipenv")
    if with_manifest:
        manifest.write(root, manifest.Manifest("demo", "1.0", manifest.ManifestPython("3.12.1"), manifest.ManifestPlatform("x86_64")))
    return root


def pack(root: Path, dest: Path, fmt: str = "tar.zst", **kw: Any) -> archive.Packed:
    options: dict[str, Any] = {"level": None, "threads": 1, "mtime": EPOCH, "arcname": "demo-1.0"}
    options.update(kw)
    return archive.write(root, dest, fmt, **options)


def members(path: Path) -> list[tarstream.Header]:
    with archive.open_stream(path) as tar:
        return list(tar)


def contents(path: Path) -> dict[str, bytes]:
    out = {}
    with archive.open_stream(path) as tar:
        for m in tar:
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


# -- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_tree_gives_same_bytes_whatever_the_thread_count(tree: Path, tmp_path: Path, fmt: str) -> None:
    one = pack(tree, tmp_path / f"one.{fmt}", fmt, threads=1)
    four = pack(tree, tmp_path / f"four.{fmt}", fmt, threads=4)
    every = pack(tree, tmp_path / f"all.{fmt}", fmt, threads=0)
    data = one.path.read_bytes()
    assert data == four.path.read_bytes() == every.path.read_bytes()
    assert one.sha256 == four.sha256 == hashlib.sha256(data).hexdigest()
    assert one.size == len(data)


def test_same_tree_copied_elsewhere_with_new_mtimes_gives_same_bytes(tree: Path, tmp_path: Path) -> None:
    first = pack(tree, tmp_path / "a.tar.zst")
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tree, copy, symlinks=True)  # new inode numbers, new mtimes, hard link broken
    os.utime(copy / "old.txt", (1000, 1000))
    second = pack(copy, tmp_path / "b.tar.zst")
    assert first.sha256 == second.sha256


def test_zstd_and_gzip_output_do_not_depend_on_how_the_stream_is_cut(tmp_path: Path) -> None:
    data = (os.urandom(50_000) + bytes(20_000)) * 60  # ~4 MiB, several gzip blocks
    outputs = {}
    for name, pieces in (("chunks", _codecs.CHUNK), ("odd", 12_345), ("whole", len(data))):
        for fmt, threads in (("tar.gz", 1), ("tar.gz", 3), ("tar.zst", 1), ("tar.zst", 3)):
            sink = io.BytesIO()
            enc = _codecs.encoder(fmt, 6, threads, sink)
            for i in range(0, len(data), pieces):
                enc.write(data[i : i + pieces])
            enc.close()
            outputs[(name, fmt, threads)] = sink.getvalue()
    for fmt in ("tar.gz", "tar.zst"):
        assert len({v for (_, f, _), v in outputs.items() if f == fmt}) == 1, fmt
    assert gzip.decompress(outputs[("odd", "tar.gz", 3)]) == data


# -- what the members look like ----------------------------------------------------------


def test_members_are_normalized(tree: Path, tmp_path: Path) -> None:
    os.utime(tree / "lib" / "data.txt", (EPOCH + 10_000, EPOCH + 10_000))
    # Read by Python's tarfile: owners and pax records are what shipenv's own reader ignores.
    with tarfile.open(pack(tree, tmp_path / "a.tar.gz", "tar.gz").path) as tar:
        found = {m.name: m for m in tar}
    for m in found.values():
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", ""), m.name
        if not m.issym():  # a symlink's mode means nothing; 0777 as ln -s makes it
            assert m.mode & 0o7022 == 0, f"{m.name} {oct(m.mode)}"
        assert m.mtime <= EPOCH
        assert set(m.pax_headers) <= {"path", "linkpath"}, m.pax_headers
    top = "demo-1.0"
    assert found[top].isdir() and found[top].mode == 0o755
    assert found[f"{top}/empty"].isdir() and found[f"{top}/empty"].mode == 0o755
    assert found[f"{top}/bin/tool"].mode == 0o755
    assert found[f"{top}/lib/data.txt"].mode == 0o644
    assert found[f"{top}/lib/private"].mode == 0o644
    assert found[f"{top}/lib/setuid"].mode == 0o755
    assert found[f"{top}/lib/data.txt"].mtime == EPOCH  # newer than SOURCE_DATE_EPOCH: clamped
    assert found[f"{top}/old.txt"].mtime == 1000  # older: kept
    assert found[f"{top}/{LONG}"].isreg()
    assert found[f"{top}/lib/café.txt"].isreg()


def test_symlinks_stay_symlinks_and_are_not_followed(tree: Path, tmp_path: Path) -> None:
    found = {m.name: m for m in members(pack(tree, tmp_path / "a.tar", "tar").path)}
    link = found["demo-1.0/bin/link"]
    assert link.issym() and link.linkname == "tool" and link.mode == 0o777
    alias = found["demo-1.0/lib/alias"]
    assert alias.issym() and alias.linkname == "sub"
    assert not any(name.startswith("demo-1.0/lib/alias/") for name in found)


def test_hard_links_are_stored_as_files(tree: Path, tmp_path: Path) -> None:
    path = pack(tree, tmp_path / "a.tar", "tar").path
    found = {m.name: m for m in members(path)}
    assert found["demo-1.0/lib/hardlink.txt"].isreg()
    data = contents(path)
    assert data["demo-1.0/lib/hardlink.txt"] == data["demo-1.0/lib/data.txt"] == b"data\n" * 1000


def test_manifest_and_record_come_first_then_sorted_depth_first(tree: Path, tmp_path: Path) -> None:
    names = [m.name for m in members(pack(tree, tmp_path / "a.tar.zst").path)]
    assert names[:4] == ["demo-1.0", "demo-1.0/.shipenv", "demo-1.0/.shipenv/manifest.json", "demo-1.0/.shipenv/RECORD"]
    rest = [n.removeprefix("demo-1.0/") for n in names[4:]]
    expected = [rel for rel, _ in manifest_order(tree) if rel not in (".shipenv", ".shipenv/manifest.json", ".shipenv/RECORD")]
    assert rest == expected
    assert rest.index(".a-first-by-name") < rest.index("bin") < rest.index("bin/link") < rest.index("lib")
    assert len(names) == len(set(names))


def manifest_order(root: Path) -> list[tuple[str, Path]]:
    """Independent statement of the order: each directory's entries sorted by bytes, directories before contents."""
    out: list[tuple[str, Path]] = []

    def visit(d: Path, prefix: str) -> None:
        for name in sorted(os.listdir(d), key=os.fsencode):
            out.append((prefix + name, d / name))
            if (d / name).is_dir() and not (d / name).is_symlink():
                visit(d / name, prefix + name + "/")

    visit(root, "")
    return out


def test_a_tree_without_manifest_is_simply_sorted(tmp_path: Path) -> None:
    root = make_tree(tmp_path, with_manifest=False)
    names = [m.name.removeprefix("demo-1.0/") for m in members(pack(root, tmp_path / "a.tar").path)][1:]
    assert names == [rel for rel, _ in manifest_order(root)]


def test_a_listing_from_an_earlier_walk_gives_the_members_a_walk_now_gives(tmp_path: Path) -> None:
    """The build packs from its own walk, with ``.shipenv/`` (written since) looked at again: same members, same order."""
    root = make_tree(tmp_path)
    (root / "lib" / "Zed").mkdir()  # sorts before "alias" by bytes, not by locale
    (root / "lib" / "Zed" / "z.py").write_text("")
    dirs: list[manifest.Stat] = []
    walked = list(manifest.walk_stat(root, dirs))
    assert {rel for rel, _f, _s in dirs} >= {"bin", "lib", "lib/sub", "lib/Zed", "empty", ".shipenv"}
    (root / ".shipenv" / "RECORD").write_text("rewritten after the walk\n")
    (root / ".shipenv" / "later.json").write_text("{}")
    listing = archive.Listing(walked + dirs, (".shipenv",))
    assert archive.members(root, "demo-1.0", EPOCH, listing) == archive.members(root, "demo-1.0", EPOCH)


def test_a_symlinked_metadata_directory_is_not_followed(tmp_path: Path) -> None:
    root = make_tree(tmp_path, with_manifest=False)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "manifest.json").write_text("{}")
    os.symlink(tmp_path / "elsewhere", root / ".shipenv")
    found = {m.name: m for m in members(pack(root, tmp_path / "a.tar").path)}
    assert found["demo-1.0/.shipenv"].issym()
    assert "demo-1.0/.shipenv/manifest.json" not in found


@pytest.mark.parametrize("fmt, flag", [("tar.zst", "--zstd"), ("tar.gz", "-z"), ("tar.xz", "-J"), ("tar", "")])
def test_system_tar_unpacks_it_identically(tree: Path, tmp_path: Path, fmt: str, flag: str) -> None:
    path = pack(tree, tmp_path / f"a.{fmt}", fmt).path
    out = tmp_path / "un packed"
    out.mkdir()
    subprocess.run(["tar", *([flag] if flag else []), "-xf", str(path), "-C", str(out)], check=True)
    unpacked = out / "demo-1.0"
    assert (unpacked / "bin" / "link").is_symlink()
    assert os.access(unpacked / "bin" / "tool", os.X_OK)
    for rel, full in manifest.walk(tree):
        if not full.is_symlink():
            assert (unpacked / rel).read_bytes() == full.read_bytes(), rel


# -- options reach the compressor ------------------------------------------------------------


@pytest.mark.parametrize("fmt, low, high", [("tar.zst", 1, 19), ("tar.gz", 1, 9), ("tar.xz", 0, 9)])
def test_level_changes_the_output(tmp_path: Path, fmt: str, low: int, high: int) -> None:
    root = tmp_path / "text"
    root.mkdir()
    rng = random.Random(7)
    words = [hashlib.sha256(str(i).encode()).hexdigest()[: rng.randint(2, 9)] for i in range(5000)]
    text = " ".join(rng.choice(words) for _ in range(300_000)).encode()
    (root / "words.txt").write_bytes(text)
    fast = pack(root, tmp_path / f"fast.{fmt}", fmt, level=low)
    best = pack(root, tmp_path / f"best.{fmt}", fmt, level=high)
    assert best.size < fast.size
    assert contents(fast.path) == contents(best.path)


def test_zstd_gets_level_threads_and_checksum(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real = _codecs.zstandard.ZstdCompressor

    def recording(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(_codecs.zstandard, "ZstdCompressor", recording)
    monkeypatch.setattr(_codecs, "_THREAD", threading.local())  # no compressor kept from an earlier test
    pack(tree, tmp_path / "a.tar.zst", level=7, threads=3)
    pack(tree, tmp_path / "b.tar.zst", level=None, threads=0)
    assert seen[0]["level"] == 7 and seen[0]["threads"] == 3 and seen[0]["write_checksum"]
    assert seen[1]["level"] == 3 and seen[1]["threads"] == archive.cpu_count()


def test_a_kept_zstd_context_gives_a_fresh_ones_bytes_even_after_an_abandoned_frame(tmp_path: Path) -> None:
    """Each thread reuses one compressor frame after frame (codecs.zstd_compressor): the bytes must not show it."""
    data = random.Random(7).randbytes(3 << 20) + bytes(1 << 20)

    def frame(enc_data: bytes, finish: bool = True) -> bytes:
        out = io.BytesIO()
        enc = _codecs.encoder("tar.zst", 3, 1, out)
        enc.write(enc_data)
        if finish:
            enc.close()
        else:
            enc.abort()
        return out.getvalue()

    first = frame(data)
    frame(data[: 1 << 20], finish=False)  # a frame given up half-way (an error while packing)
    again = frame(data)
    fresh = zstandard_frame(data)
    assert first == again == fresh


def zstandard_frame(data: bytes) -> bytes:
    out = io.BytesIO()
    compressor = _codecs.zstandard.ZstdCompressor(level=3, threads=1, write_checksum=True, write_content_size=False)
    with compressor.stream_writer(out, closefd=False) as w:
        w.write(data)
    return out.getvalue()


def test_gzip_gets_level_and_threads(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pools: list[int] = []
    levels: set[int] = set()
    real_pool, real_compressobj = _codecs.ThreadPoolExecutor, _codecs.zlib_ng.compressobj

    class RecordingPool(real_pool):  # type: ignore[misc, valid-type]
        def __init__(self, max_workers: int, **kw: Any) -> None:
            pools.append(max_workers)
            super().__init__(max_workers, **kw)

    def compressobj(level: int, *args: Any) -> Any:
        levels.add(level)
        return real_compressobj(level, *args)

    monkeypatch.setattr(_codecs, "ThreadPoolExecutor", RecordingPool)
    monkeypatch.setattr(_codecs.zlib_ng, "compressobj", compressobj)
    pack(tree, tmp_path / "a.tar.gz", "tar.gz", level=4, threads=3)
    assert pools == [3] and levels == {4}


def test_xz_gets_the_preset(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    presets: list[int] = []
    real = _codecs.lzma.LZMACompressor

    def recording(**kwargs: Any) -> Any:
        presets.append(kwargs["preset"])
        return real(**kwargs)

    monkeypatch.setattr(_codecs.lzma, "LZMACompressor", recording)
    pack(tree, tmp_path / "a.tar.xz", "tar.xz", level=2, threads=4)
    assert presets == [2]


def test_codec_defaults_and_limits() -> None:
    assert archive.codec("tar.zst") == archive.Codec("tar.zst", 3, archive.cpu_count())
    assert archive.codec("tar.gz", None, 2) == archive.Codec("tar.gz", 5, 2)
    assert archive.codec("tar.xz", 9, 8).threads == 1  # lzma has no threaded encoder
    for fmt, level in (("tar.zst", 23), ("tar.gz", 0), ("tar.xz", 10), ("tar.gz", 10)):
        with pytest.raises(UsageError, match=f"--level {level} is out of range for {fmt}"):
            archive.codec(fmt, level)
    with pytest.raises(UsageError, match="negative"):
        archive.codec("tar.zst", None, -1)
    with pytest.raises(UsageError, match="not an archive format"):
        archive.codec("zip")


def test_gzip_header_names_no_file_and_no_time(tree: Path, tmp_path: Path) -> None:
    data = pack(tree, tmp_path / "a.tar.gz", "tar.gz").path.read_bytes()
    assert data[:3] == b"\x1f\x8b\x08"
    assert data[3] == 0, "FLG: no FNAME, FCOMMENT, FEXTRA"
    assert data[4:8] == b"\0\0\0\0", "MTIME"
    assert data[9] == 255, "OS: unknown, not the build host's"
    assert gzip.decompress(data)[:100].startswith(b"demo-1.0/")
    subprocess.run(["gzip", "-t", str(tmp_path / "a.tar.gz")], check=True)


# -- writing fails cleanly -------------------------------------------------------------------


def test_unsupported_files_fail_and_leave_nothing(tree: Path, tmp_path: Path) -> None:
    os.mkfifo(tree / "lib" / "pipe")
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(ArchiveError, match=r"Cannot pack lib/pipe: only files, directories and symlinks"):
        pack(tree, dest, "tar.gz", threads=2)
    assert not dest.exists()


def test_existing_destination_is_left_alone(tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "a.tar.zst"
    dest.write_text("precious")
    with pytest.raises(ArchiveError, match="already exists"):
        pack(tree, dest)
    assert dest.read_text() == "precious"


def test_bad_level_writes_nothing(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        pack(tree, tmp_path / "a.tar.zst", level=99)
    assert not (tmp_path / "a.tar.zst").exists()


def test_an_error_in_the_middle_removes_the_partial_archive(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def progress(files: int, nbytes: int) -> None:
        calls.append(files)
        if nbytes:
            raise KeyboardInterrupt

    monkeypatch.setattr(archive, "_PROGRESS_EVERY", 0.0)
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(KeyboardInterrupt):
        pack(tree, dest, "tar.gz", threads=2, progress=progress)
    assert calls and not dest.exists()


@pytest.mark.parametrize("change", [b"grown", b""])
@pytest.mark.parametrize("size", [10, _codecs.CHUNK - 600, 3 * _codecs.CHUNK])
def test_a_file_that_changes_size_while_it_is_packed_is_an_error(tmp_path: Path, change: bytes, size: int) -> None:
    """Grown or cut short between the walk and its read: one sentence naming it, never a tar stream that lies."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "f.bin").write_bytes(os.urandom(size))
    entries = archive.members(root, "x-1", EPOCH)
    with open(root / "f.bin", "r+b") as f:
        if change:
            f.seek(0, os.SEEK_END)
            f.write(change)
        else:
            f.truncate(size - 5)
    tar = archive.TarStream(_codecs.Plain(io.BytesIO()), None)
    tar.add(entries[0], ".")
    with pytest.raises(ArchiveError, match=r"^f\.bin changed size while it was being packed\.$"):
        tar.add(entries[1], "f.bin")


def test_progress_ends_with_the_totals(tree: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    pack(tree, tmp_path / "a.tar.zst", progress=lambda f, b: calls.append((f, b)))
    files = [p for _, p in manifest_order(tree) if p.is_symlink() or not p.is_dir()]
    assert calls[-1] == (len(files), sum(p.lstat().st_size for p in files if not p.is_symlink()))
    assert calls == sorted(calls)


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_reads_magic_not_names(tree: Path, tmp_path: Path, fmt: str) -> None:
    path = pack(tree, tmp_path / "no-suffix", fmt).path
    assert archive.detect(path) == fmt


def test_detect_refuses_what_is_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "notes.tar.gz").write_text("hello")
    (tmp_path / "empty.tar.zst").write_bytes(b"")
    for name in ("notes.tar.gz", "empty.tar.zst"):
        with pytest.raises(ArchiveError, match=r"is not a bundle archive"):
            archive.detect(tmp_path / name)
    with pytest.raises(ArchiveError, match="does not exist"):
        archive.detect(tmp_path / "missing.tar.zst")
    with pytest.raises(ArchiveError, match="is a directory"):
        archive.detect(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tree: Path, tmp_path: Path, fmt: str) -> None:
    data = contents(pack(tree, tmp_path / f"a.{fmt}", fmt).path)
    for rel, full in manifest.walk(tree):
        if not full.is_symlink():
            assert data[f"demo-1.0/{rel}"] == full.read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_archives_raise_one_sentence(tmp_path: Path, fmt: str) -> None:
    root = make_tree(tmp_path, big=3_000_000)
    data = pack(root, tmp_path / f"a.{fmt}", fmt).path.read_bytes()
    cuts = {len(data) // 3, len(data) // 2, len(data) - 1000, len(data) - 30, len(data) - 9, len(data) - 1}
    for cut in sorted(cuts):
        bad = tmp_path / f"cut-{cut}.{fmt}"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArchiveError) as info:
            contents(bad)
        message = str(info.value)
        assert "truncated" in message or "corrupt" in message, (cut, message)
        assert message.count(".") <= 3 and "\n" not in message


def _decoding_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "shipenv-decode"]


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_the_decoding_thread_stops_when_the_reader_does(tmp_path: Path, fmt: str) -> None:
    # Read to the end, stopped after one member (as inspect does), and stopped by damage.
    path = pack(make_tree(tmp_path, big=3_000_000), tmp_path / f"a.{fmt}", fmt).path
    assert len(contents(path)) > 3
    with archive.open_stream(path) as tar:
        assert next(iter(tar)).name == "demo-1.0"
        assert _decoding_threads()
    bad = tmp_path / f"cut.{fmt}"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArchiveError, match=r"is (corrupt|truncated)"):
        contents(bad)
    assert not _decoding_threads()


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_a_flipped_byte_is_caught(tree: Path, tmp_path: Path, fmt: str) -> None:
    data = bytearray(pack(tree, tmp_path / f"a.{fmt}", fmt).path.read_bytes())
    data[len(data) // 2] ^= 0x55
    bad = tmp_path / f"bad.{fmt}"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"is (corrupt|truncated)"):
        contents(bad)


def test_zstd_frame_walk_catches_every_cut(tmp_path: Path) -> None:
    import zstandard

    data = zstandard.ZstdCompressor(level=3, threads=1, write_checksum=True).compress(os.urandom(400_000) + bytes(300_000))
    whole = tmp_path / "whole.zst"
    whole.write_bytes(data)
    with whole.open("rb") as f:
        _codecs.check_zstd_frames(f.fileno(), whole)
    for cut in [*range(1, len(data), 4099), *range(len(data) - 12, len(data))]:
        part = tmp_path / "part.zst"
        part.write_bytes(data[:cut])
        with part.open("rb") as f, pytest.raises(ArchiveError, match="truncated"):
            _codecs.check_zstd_frames(f.fileno(), part)


def test_gzip_and_xz_readers_take_concatenated_streams(tmp_path: Path) -> None:
    import lzma

    plain = tmp_path / "a.tar"
    pack(make_tree(tmp_path / "t"), plain, "tar")
    raw = plain.read_bytes()
    half = len(raw) // 2
    (tmp_path / "cat.tar.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    (tmp_path / "cat.tar.xz").write_bytes(lzma.compress(raw[:half]) + lzma.compress(raw[half:]))
    expected = contents(plain)
    assert contents(tmp_path / "cat.tar.gz") == expected
    assert contents(tmp_path / "cat.tar.xz") == expected


def test_a_gzip_bomb_is_read_with_bounded_buffers(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(bytes(200 << 20), 9))  # 200 MiB of zeros in ~200 KB
    sizes = set()
    buf = bytearray(1 << 16)
    with bomb.open("rb") as f:
        reader = _codecs.decoder("tar.gz", f, bomb)
        while n := reader.readinto(memoryview(buf)):
            sizes.add(n)
    assert max(sizes) <= 1 << 16


# -- big files -------------------------------------------------------------------------------


def test_a_sparse_file_and_a_random_one_round_trip_with_their_sizes(tmp_path: Path) -> None:
    """A file that is mostly a hole, of a size no block divides, is packed and read back whole.

    How much memory packing and reading a big tree takes is a figure in
    ``benchmarks/run.py`` (group ``big``), not an assertion here.
    """
    root = tmp_path / "big"
    (root / "data").mkdir(parents=True)
    block = os.urandom(1 << 20)
    (root / "data" / "random.bin").write_bytes(block)
    sparse = (64 << 20) + 12345
    with open(root / "data" / "sparse.bin", "wb") as f:
        f.truncate(sparse)
    packed = archive.write(root, tmp_path / "big.tar.zst", "tar.zst", level=1, threads=0, mtime=0, arcname="big-1.0")
    with archive.open_stream(packed.path) as tar:
        sizes = {m.name: m.size for m in tar if m.isfile()}
    assert sizes == {"big-1.0/data/random.bin": 1 << 20, "big-1.0/data/sparse.bin": sparse}
