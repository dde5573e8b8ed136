"""Tar headers without tarfile (shipenv.bundle.ustar) are tarfile's bytes, to the bit.

What a user would notice: an archive whose sha256 changed with a shipenv
upgrade although the tree did not (the header builder drifting from the
tarfile-written headers every earlier archive has), or a name that GNU tar
reads back wrong. Each case is compared with ``tarfile.TarInfo.tobuf``, the
builder shipenv used before, as :func:`reference` calls it.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shipenv.bundle import archive, codecs, ustar

TYPES = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}
LIMIT = 8**11  # the first size or mtime the ustar fields cannot hold


def reference(name: str, kind: str, mode: int, mtime: int, size: int = 0, linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = TYPES[kind]
    info.mode = mode
    info.mtime = mtime
    info.size = size
    info.linkname = linkname
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def same(name: str, kind: str, mode: int = 0o644, mtime: int = 1577836800, size: int = 0, linkname: str = "") -> bytes:
    built = ustar.block(name, kind, mode, mtime, size, linkname)
    assert built == reference(name, kind, mode, mtime, size, linkname)
    return built


#: What os.listdir gives: ASCII, other Unicode (1-4 UTF-8 bytes), and undecodable bytes as surrogate escapes.
CHARS = st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF, exclude_categories=("Cs",)),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
)
NAMES = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=300),
    st.text(CHARS, min_size=1, max_size=200),
    st.text(st.sampled_from("a/.é\udcff日"), min_size=1, max_size=300),  # slashes, runs of them, mixed widths
)
NUMBERS = st.one_of(st.integers(0, 2**34), st.integers(LIMIT - 2, LIMIT + 2), st.integers(-(2**40), 2**50))


@settings(max_examples=500, deadline=None)
@given(
    name=NAMES,
    kind=st.sampled_from(sorted(TYPES)),
    mode=st.integers(0, 0o177777),
    mtime=NUMBERS,
    size=NUMBERS.filter(lambda n: n >= 0),
    linkname=st.one_of(st.just(""), NAMES),
)
@example(name="a" * 100, kind="file", mode=0o644, mtime=0, size=0, linkname="")
@example(name="a" * 100, kind="dir", mode=0o755, mtime=0, size=0, linkname="")  # 101 with its slash
@example(name="d//", kind="dir", mode=0o755, mtime=0, size=0, linkname="")  # its slashes kept as they are
@example(name="x", kind="file", mode=0o644, mtime=LIMIT, size=LIMIT, linkname="")
def test_every_entry_is_tarfiles_bytes(name: str, kind: str, mode: int, mtime: int, size: int, linkname: str) -> None:
    same(name, kind, mode, mtime, size, linkname)


@pytest.mark.parametrize("length", [1, 99, 100, 101, 154, 155, 156, 255, 256, 257, 1000, 5000])
@pytest.mark.parametrize("kind", sorted(TYPES))
def test_names_and_targets_at_the_field_edges(length: int, kind: str) -> None:
    """100 is the ustar name field, 155 its (unused) prefix, 256 their sum; long names need a PAX path."""
    name = ("dir/" * length)[: length - 1] + "n"
    target = ("../" * length)[: length - 1] + "t" if kind == "symlink" else ""
    built = same(name, kind, linkname=target)
    assert (len(built) > 512) == (len(name) + (kind == "dir") > 100 or len(target) > 100)


@pytest.mark.parametrize("text", ["café.txt", "日本語/ファイル", "emoji-\U0001f600", "n\udcff\udc80-bytes", "a" * 98 + "é" + "b" * 5, "ü" * 60])
def test_non_ascii_and_undecodable_names_and_targets(text: str) -> None:
    same(f"app/{text}", "file", size=3)
    same(f"app/{text}", "dir")
    same("app/link", "symlink", linkname=text)
    same(f"app/{text}", "symlink", linkname="plain")
    same("app/plain", "symlink", linkname=f"{text}/{'x' * 120}")


def test_pax_record_lengths_where_the_length_gains_a_digit() -> None:
    """A record's length counts its own digits: 99 -> 100 and 999 -> 1000 bytes are where that loop matters."""
    for total in range(90, 110):
        same("p" * (total - len(" path=\n") - 2), "file")
    for total in range(990, 1010):
        same("p" * (total - len(" path=\n") - 3), "file")


def test_sizes_and_mtimes_past_the_octal_fields() -> None:
    for value in (LIMIT - 1, LIMIT, LIMIT + 1, 2**63):
        same("big", "file", size=value)
        same("late", "file", mtime=value)
    same("early", "dir", mtime=-1)
    same("both-and-a-long-name-" * 10, "file", size=LIMIT * 4, mtime=-(2**40))


def test_a_string_no_encoding_can_write_fails_as_tarfile_fails() -> None:
    with pytest.raises(UnicodeEncodeError):
        reference("lone-\ud800", "file", 0o644, 0)
    with pytest.raises(UnicodeEncodeError):
        ustar.block("lone-\ud800", "file", 0o644, 0)


def test_gnu_tar_reads_what_it_says(tmp_path: Path) -> None:
    """Beyond equality: the long, non-ASCII and undecodable names come back as the same bytes from GNU tar."""
    names = ["short", "l" * 150, "d" * 120 + "/" + "f" * 120, "café", "\udcff\udcfe-raw"]
    stream = io.BytesIO()
    for n in names:
        stream.write(ustar.block(f"top/{n}", "file", 0o644, 1577836800, 0))
    stream.write(archive.end_blocks(stream.tell()))
    (tmp_path / "a.tar").write_bytes(stream.getvalue())
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "a.tar"), "-C", str(out)], check=True)
    found = [os.path.relpath(os.path.join(d, f), out / "top") for d, _, files in os.walk(out / "top") for f in files]
    assert sorted(found) == sorted(names)


def test_a_real_tree_packs_to_what_tarfile_headers_give(tmp_path: Path) -> None:
    """The whole plain tar stream of a tree: tarfile's headers, the contents, the padding, the end blocks.

    Files are of sizes that put their ends on, before and after the 1 MiB chunk
    boundaries the stream is cut at, so every branch of the reading loop runs.
    """
    root = tmp_path / "tree"
    (root / "a" / ("deep-" * 30)).mkdir(parents=True)
    sizes = [0, 1, 511, 512, 513, codecs.CHUNK - 512, codecs.CHUNK - 1, codecs.CHUNK, codecs.CHUNK + 1, 3 * codecs.CHUNK + 700]
    for i, size in enumerate(sizes):
        (root / "a" / f"f{i:02d}").write_bytes(os.urandom(size))
    (root / "a" / ("deep-" * 30) / ("é-long-name-" * 3)).write_text("x")
    (root / "a" / "link").symlink_to("t" * 200)
    os.chmod(root / "a" / "f01", 0o755)
    entries = archive.members(root, "app-1.0", 1577836800)
    expected = io.BytesIO()
    for e in entries:
        expected.write(reference(e.name, e.kind, e.mode, e.mtime, e.size, e.linkname))
        if e.kind == "file":
            assert e.source is not None
            data = Path(e.source).read_bytes()
            expected.write(data + bytes(-len(data) % 512))
    expected.write(archive.end_blocks(expected.tell()))
    packed = archive.write(root, tmp_path / "a.tar", "tar", level=None, threads=1, mtime=1577836800, arcname="app-1.0")
    assert packed.path.read_bytes() == expected.getvalue()
