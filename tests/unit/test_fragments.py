"""Archives assembled from compressed fragments (shipenv.bundle.fragments).

A rebuild copies the stored fragments of unchanged layers instead of
compressing them again; the archive must come out byte for byte the same
either way, stay readable by every reader, and keep the members deploy and
inspect look for first.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import threading
import zlib
from pathlib import Path

import pytest
import zstandard

from shipenv.bundle import archive, codecs, fragments, frames, tarstream
from shipenv.errors import ArchiveError
from tests.helpers import index_of, small_tmpfs

EPOCH = 1577836800


def make_tree(root: Path) -> Path:
    for d in (".shipenv", "bin", "lib/a", "lib/b/sub"):
        (root / d).mkdir(parents=True)
    (root / ".shipenv" / "manifest.json").write_text("{}\n")
    (root / ".shipenv" / "RECORD").write_text("rows\n")
    (root / ".shipenv" / "facts").write_text("name=app\n")
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "lib" / "a" / "one.py").write_bytes(os.urandom(3000) * 3)
    (root / "lib" / "a" / "link").symlink_to("one.py")
    (root / "lib" / "b" / "two.py").write_text("TWO = 2\n" * 500)
    (root / "lib" / "b" / "sub" / "three.txt").write_text("three\n")
    return root


def pack(root: Path, dest: Path, store: Path | None, fmt: str = "tar.zst") -> archive.Packed:
    parts = [
        fragments.Fragment(frozenset({"lib/a/one.py", "lib/a/link"}), store / "a" if store else None),
        fragments.Fragment(frozenset({"lib/b/two.py", "lib/b/sub/three.txt"}), store / "b" if store else None),
    ]
    return fragments.write(root, dest, fmt, level=None, threads=2, mtime=EPOCH, arcname="app-1.0", fragments=parts)


def members(path: Path) -> list[tarstream.Header]:
    with archive.open_stream(path) as tar:
        return list(tar)


@pytest.mark.parametrize("fmt", ["tar.zst", "tar.gz"])
def test_a_stored_fragment_gives_the_same_bytes_as_compressing_it(tmp_path: Path, fmt: str) -> None:
    root = make_tree(tmp_path / "tree")
    store = tmp_path / "store"
    first = pack(root, tmp_path / f"one.{fmt}", store, fmt)
    stored = sorted(store.rglob("*.frag"))
    assert [p.parent.name for p in stored] == ["a", "b"]
    second = pack(root, tmp_path / f"two.{fmt}", store, fmt)
    assert second.sha256 == first.sha256 and (tmp_path / f"two.{fmt}").read_bytes() == (tmp_path / f"one.{fmt}").read_bytes()
    assert pack(root, tmp_path / f"three.{fmt}", None, fmt).sha256 == first.sha256  # no store at all: the same again
    data = (tmp_path / f"one.{fmt}").read_bytes()
    for frag in stored:  # each layer's fragment is in the archive verbatim: a frame / a member of its own
        assert frag.read_bytes() in data


def test_members_in_fragment_order_with_the_head_first_and_directories_last(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    pack(root, tmp_path / "a.tar.zst", tmp_path / "store")
    names = [m.name for m in members(tmp_path / "a.tar.zst")]
    assert names == [
        "app-1.0", "app-1.0/.shipenv", "app-1.0/.shipenv/manifest.json", "app-1.0/.shipenv/RECORD", "app-1.0/.shipenv/facts",
        "app-1.0/lib/a/link", "app-1.0/lib/a/one.py",  # fragment a
        "app-1.0/lib/b/sub/three.txt", "app-1.0/lib/b/two.py",  # fragment b, in archive.plan's order
        "app-1.0/bin/tool",  # the rest
        "app-1.0/bin", "app-1.0/lib", "app-1.0/lib/a", "app-1.0/lib/b", "app-1.0/lib/b/sub",  # directories
    ]  # fmt: skip
    size = (tmp_path / "a.tar.zst").stat().st_size
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO((tmp_path / "a.tar.zst").read_bytes()), read_across_frames=True).read()
    assert len(raw) % (20 * 512) == 0 and raw.endswith(bytes(1024)) and size < len(raw)


@pytest.mark.parametrize(("fmt", "flag"), [("tar.zst", "--zstd"), ("tar.gz", "-z")])
def test_gnu_tar_unpacks_every_file_with_its_mode_and_mtime(tmp_path: Path, fmt: str, flag: str) -> None:
    root = make_tree(tmp_path / "tree")
    path = tmp_path / f"a.{fmt}"
    pack(root, path, tmp_path / "store", fmt)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", flag, "-xf", str(path), "-C", str(out)], check=True)
    top = out / "app-1.0"
    for rel in ("lib/a/one.py", "lib/b/two.py", "lib/b/sub/three.txt", "bin/tool", ".shipenv/facts"):
        assert (top / rel).read_bytes() == (root / rel).read_bytes(), rel
    assert os.readlink(top / "lib" / "a" / "link") == "one.py"
    assert (top / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (top / "lib" / "b" / "two.py").stat().st_mode & 0o777 == 0o644
    for d in (top, top / ".shipenv", top / "lib", top / "lib" / "b" / "sub"):
        st = d.stat()
        assert (st.st_mode & 0o777, int(st.st_mtime)) == (0o755, EPOCH), d


def test_other_formats_are_written_in_one_pass(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    store = tmp_path / "store"
    packed = pack(root, tmp_path / "a.tar.xz", store, fmt="tar.xz")
    single = archive.write(root, tmp_path / "b.tar.xz", "tar.xz", level=None, threads=2, mtime=EPOCH, arcname="app-1.0")
    assert packed.sha256 == single.sha256 and not store.exists()


# -- fragments compressed in parallel ---------------------------------------------------------


def big_tree(base: Path, pieces: int = 150) -> tuple[Path, list[fragments.Fragment], list[fragments.Fragment]]:
    """make_tree with fragment a over zstd's 8 MiB job size (several jobs, every worker busy), and the two fragments with and without a store."""
    root = make_tree(base / "tree")
    rng = random.Random(5)
    chunk = rng.randbytes(64 << 10)
    (root / "lib" / "a" / "big.bin").write_bytes(b"".join(chunk[rng.randrange(4096) :] for _ in range(pieces)) + rng.randbytes(512 << 10))
    (root / "lib" / "b" / "mid.bin").write_bytes(rng.randbytes(3 << 20))
    paths = [frozenset({"lib/a/one.py", "lib/a/link", "lib/a/big.bin"}), frozenset({"lib/b/two.py", "lib/b/sub/three.txt", "lib/b/mid.bin"})]
    store = base / "store"
    return root, [fragments.Fragment(p) for p in paths], [fragments.Fragment(p, store / n) for p, n in zip(paths, "ab")]


def threads_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("shipenv-pack")]


@pytest.mark.parametrize("fmt", ["tar.zst", "tar.gz"])
def test_the_bytes_do_not_depend_on_the_thread_count_or_what_the_store_holds(tmp_path: Path, fmt: str) -> None:
    root, bare, kept = big_tree(tmp_path, 150 if fmt == "tar.zst" else 30)  # gzip's blocks are 1 MiB
    store = tmp_path / "store"

    def sha(threads: int, parts: list[fragments.Fragment]) -> str:
        dest = tmp_path / f"out.{fmt}"
        packed = fragments.write(root, dest, fmt, level=None, threads=threads, mtime=EPOCH, arcname="app-1.0", fragments=parts)
        dest.unlink()
        return packed.sha256

    seen = {}
    for threads in (1, 2, 8):
        seen[f"no store, {threads} threads"] = sha(threads, bare)
        shutil.rmtree(store, ignore_errors=True)
        seen[f"empty store, {threads} threads"] = sha(threads, kept)
        seen[f"full store, {threads} threads"] = sha(threads, kept)
        for frag in (store / "b").glob("*.frag"):
            frag.unlink()
        seen[f"half the store, {threads} threads"] = sha(threads, kept)
    assert len(set(seen.values())) == 1, seen
    assert not threads_alive()


def test_a_full_output_directory_is_one_sentence_and_leaves_nothing(tmp_path: Path) -> None:
    root, bare, _kept = big_tree(tmp_path)
    with small_tmpfs(tmp_path / "tiny", "1m") as tiny:
        with pytest.raises(ArchiveError, match=r"^Cannot write .*: No space left on device\.$"):
            fragments.write(root, tiny / "a.tar.zst", "tar.zst", level=None, threads=2, mtime=EPOCH, arcname="app-1.0", fragments=bare)
        assert os.listdir(tiny) == []
    assert not threads_alive()


def test_a_fragment_that_fails_in_its_thread_is_the_archives_error(tmp_path: Path) -> None:
    """A file of fragment b grows after the walk: the error reaches the writer as one sentence and every thread ends."""
    root, _bare, kept = big_tree(tmp_path)
    entries = archive.members(root, "app-1.0", EPOCH)
    with open(root / "lib" / "b" / "mid.bin", "ab") as f:
        f.write(b"more")
    segments = fragments.split(entries, "app-1.0", kept)
    c = archive.codec("tar.zst", None, 2)
    parts = fragments.compressed(segments, c, "app-1.0", tmp_path, fragments._Progress(None))
    with pytest.raises(ArchiveError, match=r"^lib/b/mid\.bin changed size while it was being packed\.$"):
        for part in parts:
            part.close()
    parts.close()
    assert not threads_alive()
    assert len(list((tmp_path / "store" / "a").glob("*.frag"))) == 2  # a was done (mixed and data frames): kept for the next build
    left = os.listdir(tmp_path / "store" / "b")  # b's data frames (mid.bin) half-written: removed; its mixed ones may be done
    assert len(left) <= 2 and not [n for n in left if n.startswith(".")], left


def test_progress_over_fragments_only_grows_and_ends_with_the_totals(tmp_path: Path) -> None:
    root, _bare, kept = big_tree(tmp_path)
    calls: list[tuple[int, int]] = []
    fragments.write(root, tmp_path / "a.tar.zst", "tar.zst", level=None, threads=2, mtime=EPOCH, arcname="app-1.0", fragments=kept,
                    progress=lambda f, b: calls.append((f, b)))
    files = [e for e in archive.members(root, "app-1.0", EPOCH) if e.kind != "dir"]
    assert calls[-1] == (len(files), sum(e.size for e in files))
    assert calls == sorted(calls)


# -- data frames: the content of a layer's large files, in frames of their own ----------------------------------


def large_tree(base: Path) -> tuple[Path, dict[str, bytes]]:
    """make_tree with large files in fragment a: one over two pieces (PIECE), one of a whole number of blocks, one just over the threshold."""
    root = make_tree(base / "tree")
    rng = random.Random(7)
    words = rng.randbytes(1 << 16)
    large = {
        "lib/a/big.so": b"".join(words[rng.randrange(1 << 15) :][: rng.randrange(4096, 1 << 15)] for _ in range(900))[: fragments.PIECE + 300_001],
        "lib/a/blocks.bin": rng.randbytes(fragments.DATA_FRAME_MIN + 4096),  # no tar padding
        "lib/a/zz.dat": b"z" * fragments.DATA_FRAME_MIN + b"tail",  # after it, nothing: no mixed frame follows
    }
    assert len(large["lib/a/big.so"]) > fragments.PIECE
    for rel, data in large.items():
        (root / rel).write_bytes(data)
    (root / "lib" / "a" / "small.txt").write_text("small\n" * 100)  # between two large files, in walk order
    return root, large


def pack_large(root: Path, dest: Path, store: Path | None, *, arcname: str = "app-1.0", threads: int = 2) -> archive.Packed:
    paths = [frozenset({"lib/a/one.py", "lib/a/link", "lib/a/small.txt", *(f"lib/a/{n}" for n in ("big.so", "blocks.bin", "zz.dat"))}),
             frozenset({"lib/b/two.py", "lib/b/sub/three.txt"})]
    parts = [fragments.Fragment(p, store / n if store else None) for p, n in zip(paths, "ab")]
    return fragments.write(root, dest, "tar.zst", level=None, threads=threads, mtime=EPOCH, arcname=arcname, fragments=parts)


def zstd_frames(path: Path) -> list[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return codecs.check_zstd_frames(fd, path)
    finally:
        os.close(fd)


def test_large_files_round_trip_through_gnu_tar_and_shipenvs_reader(tmp_path: Path) -> None:
    root, large = large_tree(tmp_path)
    path = tmp_path / "a.tar.zst"
    pack_large(root, path, tmp_path / "store")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(path), "-C", str(out)], check=True)
    for rel in [*large, "lib/a/one.py", "lib/a/small.txt", "lib/b/two.py", ".shipenv/facts"]:
        assert (out / "app-1.0" / rel).read_bytes() == (root / rel).read_bytes(), rel
    read: dict[str, bytes] = {}
    with archive.open_stream(path) as tar:
        for header in tar:
            if header.isreg():
                read[header.name.removeprefix("app-1.0/")] = tar.extractfile(header).read()
    assert {rel: read[rel] for rel in large} == large
    assert read["lib/a/small.txt"] == b"small\n" * 100 and read["lib/b/two.py"] == (root / "lib/b/two.py").read_bytes()


def test_the_layers_row_spans_its_mixed_and_data_frames_and_deploys_reader_accepts_it(tmp_path: Path) -> None:
    root, _large = large_tree(tmp_path)
    path = tmp_path / "a.tar.zst"
    pack_large(root, path, None)
    starts = zstd_frames(path)
    index = index_of(path)  # checked against every frame start
    a = index.frames[1]
    assert {m.path for m in a.members} >= {"lib/a/big.so", "lib/a/blocks.bin", "lib/a/zz.dat"}
    inside = [s for s in starts if a.offset <= s < a.offset + a.length]
    # mixed (up to big.so's header), big.so in two pieces, mixed (blocks.bin's header), blocks.bin, mixed (small.txt, zz.dat's header), zz.dat
    assert len(inside) == 7 and inside[0] == a.offset
    assert [len([s for s in starts if f.offset <= s < f.offset + f.length]) for f in index.frames[2:]] == [1, 1, 1]  # b, the rest, dirs
    fd = os.open(path, os.O_RDONLY)
    try:  # deploy's check: each row must begin with zstd's magic
        assert frames.read_index(fd, path, None) == index
    finally:
        os.close(fd)
    gate = frames.Gate()  # and its decoder, skipping the layer's row as a deploy beside an earlier release does
    with path.open("rb") as f:
        raw = frames.read_ahead("tar.zst", f, path, gate)
        assert gate.index == index and gate.decide(frozenset({1})) == frozenset({1})
        data = b"".join(iter(lambda: raw.read(1 << 16), b""))
        raw.close()
    assert len(data) == sum(fr.tar_length for i, fr in enumerate(index.frames) if i != 1)


def test_data_frames_are_the_same_bytes_whatever_the_name_the_store_and_the_threads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, _large = large_tree(tmp_path)
    store = tmp_path / "store"

    def packed(label: str, store: Path | None, arcname: str = "app-1.0", threads: int = 2) -> bytes:
        dest = tmp_path / f"{label}.tar.zst"
        pack_large(root, dest, store, arcname=arcname, threads=threads)
        return dest.read_bytes()

    clean = packed("clean", None)
    assert packed("fill", store) == clean
    streams = sorted(store.rglob("*.frag"))
    assert len(streams) == 3  # a's mixed and data frames, b's (no large file: mixed only)
    data_stream = max(streams, key=lambda p: p.stat().st_size)  # a's data frames: nearly all the bytes
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in streams}
    assert packed("cached", store) == clean
    assert packed("one-thread", None, threads=1) == clean and packed("four-threads", None, threads=4) == clean
    # A new name: the mixed frames are compressed again (their key has the arcname), the data frames copied.
    renamed = packed("renamed", store, arcname="app-2.0")
    assert renamed == packed("renamed-clean", None, arcname="app-2.0") and renamed != clean
    assert (data_stream.stat().st_ino, data_stream.stat().st_mtime_ns) == stamp[data_stream]  # not written again
    assert len(list(store.rglob("*.frag"))) == 5  # two more mixed streams, for app-2.0
    stored, pos = data_stream.read_bytes(), 0
    lengths = [n for group in json.loads(data_stream.with_suffix(".json").read_text())["frames"] for n in group]
    assert len(lengths) == 4  # big.so in two pieces, blocks.bin, zz.dat
    for n in lengths:  # each data frame is in both archives as it is stored: no arcname in it
        assert stored[pos : pos + n] in renamed and stored[pos : pos + n] in clean
        pos += n
    assert "dropping" not in caplog.text


def test_a_large_file_that_grows_while_packed_is_one_sentence(tmp_path: Path) -> None:
    root, _large = large_tree(tmp_path)
    entries = archive.members(root, "app-1.0", EPOCH)
    with open(root / "lib" / "a" / "blocks.bin", "ab") as f:
        f.write(b"more")
    segments = fragments.split(entries, "app-1.0", [fragments.Fragment(frozenset({"lib/a/blocks.bin"}))])
    parts = fragments.compressed(segments, archive.codec("tar.zst", None, 2), "app-1.0", tmp_path, fragments._Progress(None))
    with pytest.raises(ArchiveError, match=r"^lib/a/blocks\.bin changed size while it was being packed\.$"):
        for part in parts:
            part.close()
    parts.close()
    assert not threads_alive()


def test_a_tar_gz_keeps_one_member_per_fragment(tmp_path: Path) -> None:
    root, _large = large_tree(tmp_path)
    dest = tmp_path / "a.tar.gz"
    paths = frozenset({"lib/a/one.py", "lib/a/link", "lib/a/small.txt", "lib/a/big.so", "lib/a/blocks.bin", "lib/a/zz.dat"})
    fragments.write(root, dest, "tar.gz", level=None, threads=2, mtime=EPOCH, arcname="app-1.0", fragments=[fragments.Fragment(paths)])
    data = dest.read_bytes()
    members = 0
    while data:  # each gzip member decoded on its own: the head, a, the rest, the directories
        d = zlib.decompressobj(wbits=31)
        d.decompress(data)
        data = d.unused_data
        members += 1
    assert members == 4
