"""The frame index of a .tar.zst, and deploys that leave the current release's layers compressed (shipenv.bundle.frames).

The bundles are the synthetic ones of tests/helpers.py, packed by
``fragments.write`` (as ``shipenv build`` packs) with three layers: ``same``
(30 files and a symlink, the same in both versions), ``mixed`` (one file
that changes, one that does not) and ``shared.txt``. A deploy of 2.0 beside
1.0 must decode the head, ``mixed``, the rest and the directories, and no
other frame; the release must be the one a deploy without 1.0 makes.
Every lie an index can tell ends in a refusal with one sentence and a root
left as it was.
"""

from __future__ import annotations

import dataclasses
import os
import random
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from shipenv.bundle import codecs, fragments, frames, manifest
from shipenv.bundle import reader as _reader
from shipenv.bundle import unpack as _unpack
from shipenv.deploy import extract
from shipenv.deploy import releases as deploy
from shipenv.errors import DeployError, RefusedArchive
from tests.helpers import HOST, check_release, index_of, make_tree, rewrite_index, snapshot

EPOCH = 1577836800
SAME = [f"lib/same/m{i:02d}.py" for i in range(30)]
LARGE = "lib/same/big.so"


def bundle(base: Path, version: str, *, large: bool = False) -> Path:
    """With ``large``, ``same`` also holds a file whose content takes two data frames of its own (fragments.PIECE)."""
    root = make_tree(base / "trees", version)
    for i, rel in enumerate(SAME):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"M = {i}\n" * 50)
    (root / "lib" / "same" / "link").symlink_to("m00.py")
    if large:
        (root / LARGE).write_bytes(random.Random(3).randbytes(1 << 16) * (fragments.PIECE >> 16) + b"end")
    (root / "lib" / "mixed").mkdir()
    (root / "lib" / "mixed" / "changes.py").write_text(f"V = {version!r}\n")
    (root / "lib" / "mixed" / "stays.py").write_text("S = 1\n" * 40)
    manifest.write(root, manifest.read(root))
    parts = [
        fragments.Fragment(frozenset([*SAME, "lib/same/link", *([LARGE] if large else [])])),
        fragments.Fragment(frozenset({"lib/mixed/changes.py", "lib/mixed/stays.py"})),
        fragments.Fragment(frozenset({"lib/shared.txt"})),
    ]
    (base / "dist").mkdir(exist_ok=True)
    dest = base / "dist" / f"{root.name}.tar.zst"
    return fragments.write(root, dest, "tar.zst", level=None, threads=1, mtime=EPOCH, arcname=root.name, fragments=parts).path


def tree(path: Path) -> dict[str, tuple[object, ...]]:
    """Every path of a release with its type, mode, and bytes or link target."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[str(full.relative_to(path))] = ("l", os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                found[str(full.relative_to(path))] = ("f", stat.S_IMODE(st.st_mode), full.read_bytes())
            else:
                found[str(full.relative_to(path))] = ("d", stat.S_IMODE(st.st_mode))
    return found


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    return bundle(tmp_path / "one", "1.0")


@pytest.fixture
def v2(tmp_path: Path) -> Path:
    return bundle(tmp_path / "two", "2.0")


@pytest.fixture
def root(tmp_path: Path, v1: Path) -> Path:
    """A root where 1.0 is deployed and current."""
    deploy.deploy(v1, tmp_path / "srv", host=HOST)
    return tmp_path / "srv"


def frame_of(index: frames.Index, rel: str) -> int:
    return next(i for i, f in enumerate(index.frames) if any(m.path == rel for m in f.members))


# -- the index ---------------------------------------------------------------------------------------------------


def test_the_index_lists_every_frame_and_member_and_every_zstd_reader_passes_over_it(v2: Path, tmp_path: Path) -> None:
    index = index_of(v2)
    assert [len(f.members) for f in index.frames][1:4] == [31, 2, 1]  # the layers, after the head
    assert index.frames[0].members[0] == frames.Listed(".", "d", 0o755, EPOCH)
    assert frames.Listed("lib/same/link", "l", 0o777, EPOCH) in index.frames[1].members
    assert all(m.kind == "d" for m in index.frames[-1].members)
    with _reader.open_bundle(v2) as reader:
        listed = {m.rel or "." for m in reader.members()}
    assert listed == {m.path for f in index.frames for m in f.members}
    plain = subprocess.run(["zstd", "-dc", str(v2)], capture_output=True, check=True).stdout
    assert len(plain) == sum(f.tar_length for f in index.frames)
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(v2), "-C", str(out)], check=True)
    check_release(out / "app-2.0")


def test_an_archive_without_an_index_is_read_as_before(tmp_path: Path, v2: Path) -> None:
    data = v2.read_bytes()
    length = int.from_bytes(data[-frames.FOOTER:-len(frames.MAGIC)], "little")
    bare = tmp_path / "app-2.0.tar.zst"
    bare.write_bytes(data[: len(data) - frames.FOOTER - length - 8])
    deploy.deploy(bundle(tmp_path / "one", "1.0"), tmp_path / "srv", host=HOST)
    result = deploy.deploy(bare, tmp_path / "srv", host=HOST)
    assert (result.skipped_frames, result.shared_files) == (0, 0) and result.linked_bytes > 0
    check_release(result.path)


# -- deploys that skip ---------------------------------------------------------------------------------------------


def test_v2_beside_v1_decodes_only_the_frames_that_changed(tmp_path: Path, root: Path, v2: Path) -> None:
    index = index_of(v2)
    result = deploy.deploy(v2, root, host=HOST)
    assert result.skipped_frames == 2 and result.shared_files == 32  # "same" (30 files, a link) and shared.txt
    assert "; 32 files hard-linked without unpacking)." in result.message
    release = root / "releases" / "app-2.0"
    for rel in (SAME[0], "lib/shared.txt"):  # linked, never decompressed
        assert (release / rel).stat().st_ino == (root / "releases" / "app-1.0" / rel).stat().st_ino
    assert {frame_of(index, SAME[0]), frame_of(index, "lib/shared.txt")} == {1, 3}
    # The same release as a deploy with nothing to share: bytes, modes, link targets, directories.
    alone = deploy.deploy(v2, tmp_path / "alone", host=HOST)
    assert alone.skipped_frames == 0
    assert tree(release) == tree(alone.path)
    check_release(release)


def test_a_layer_with_data_frames_is_one_row_and_is_skipped_whole(tmp_path: Path) -> None:
    v1, v2 = bundle(tmp_path / "one", "1.0", large=True), bundle(tmp_path / "two", "2.0", large=True)
    index = index_of(v2)
    fd = os.open(v2, os.O_RDONLY)
    try:
        starts = codecs.check_zstd_frames(fd, v2)
        assert frames.read_index(fd, v2, None) == index  # the check deploy runs: each row begins at a zstd frame
    finally:
        os.close(fd)
    row = index.frames[frame_of(index, LARGE)]
    assert len([s for s in starts if row.offset <= s < row.offset + row.length]) == 4  # mixed, two data frames, mixed
    root = tmp_path / "srv"
    deploy.deploy(v1, root, host=HOST)
    result = deploy.deploy(v2, root, host=HOST)
    assert result.skipped_frames == 2 and result.shared_files == 33  # "same" (now with big.so) and shared.txt
    release = root / "releases" / "app-2.0"
    assert (release / LARGE).stat().st_ino == (root / "releases" / "app-1.0" / LARGE).stat().st_ino
    alone = deploy.deploy(v2, tmp_path / "alone", host=HOST)
    assert alone.skipped_frames == 0 and tree(release) == tree(alone.path)
    check_release(release)


def test_a_v1_file_edited_after_its_deploy_is_written_fresh(root: Path, v2: Path) -> None:
    old = root / "releases" / "app-1.0" / SAME[3]
    old.write_text(old.read_text().replace("M = 3", "M = 9"))  # the same size, and the mtime set back
    os.utime(old, (EPOCH, EPOCH))
    result = deploy.deploy(v2, root, host=HOST)
    assert result.skipped_frames == 1 and result.shared_files == 1  # shared.txt only: "same" was decoded
    new = root / "releases" / "app-2.0" / SAME[3]
    assert new.read_text() == "M = 3\n" * 50 and new.stat().st_ino != old.stat().st_ino
    check_release(new.parents[2])


def test_a_v1_file_replaced_by_a_symlink_is_written_fresh(root: Path, v2: Path) -> None:
    old = root / "releases" / "app-1.0" / SAME[4]
    old.unlink()
    old.symlink_to("/etc/passwd")
    result = deploy.deploy(v2, root, host=HOST)
    assert result.skipped_frames == 1
    new = root / "releases" / "app-2.0" / SAME[4]
    assert not new.is_symlink() and new.read_text() == "M = 4\n" * 50
    check_release(new.parents[2])


def test_verify_and_a_deploy_into_an_empty_root_decode_everything(tmp_path: Path, v2: Path) -> None:
    with _reader.open_bundle(v2, collect=True) as reader:
        assert reader.index is None and len(list(reader.members())) > 40
    result = deploy.deploy(v2, tmp_path / "empty", host=HOST)
    assert (result.skipped_frames, result.shared_files, result.linked_bytes) == (0, 0, 0)


def test_a_reader_that_never_decides_reads_everything(v2: Path) -> None:
    with _reader.open_bundle(v2, skipping=True) as reader:
        assert reader.index is not None
        names = [m.rel for m in reader.members()]
        assert reader.skip([1, 2, 3]) == 0  # too late: everything was decoded
    assert SAME[0] in names


def test_a_decoder_whose_reader_needs_more_than_the_head_goes_on(v2: Path) -> None:
    # Read the raw tar stream past the head before anyone decides: the gate lets the decoder go on.
    gate = frames.Gate()
    with v2.open("rb") as f:
        raw = frames.read_ahead("tar.zst", f, v2, gate)
        data = b"".join(iter(lambda: raw.read(1 << 16), b""))
        raw.close()
    assert gate.index is not None and len(data) == sum(fr.tar_length for fr in gate.index.frames)
    assert gate.decide(frozenset({1})) == frozenset()


# -- lies and damage -----------------------------------------------------------------------------------------------


def _claims_a_path_of_a_decoded_frame(fs: list[frames.Frame]) -> list[frames.Frame]:
    """``stays.py`` (unchanged, but in the decoded ``mixed`` frame) listed in ``same`` instead."""
    stays = next(m for m in fs[2].members if m.path == "lib/mixed/stays.py")
    fs[1] = dataclasses.replace(fs[1], members=(*fs[1].members, stays))
    fs[2] = dataclasses.replace(fs[2], members=tuple(m for m in fs[2].members if m != stays))
    return fs


def _omits_a_path(fs: list[frames.Frame]) -> list[frames.Frame]:
    fs[1] = dataclasses.replace(fs[1], members=tuple(m for m in fs[1].members if m.path != SAME[5]))
    return fs


def _overlapping(fs: list[frames.Frame]) -> list[frames.Frame]:
    fs[2] = dataclasses.replace(fs[2], offset=fs[2].offset - 1, length=fs[2].length + 1)
    return fs


def _past_the_end(fs: list[frames.Frame]) -> list[frames.Frame]:
    fs[-1] = dataclasses.replace(fs[-1], length=fs[-1].length + 10**6)
    return fs


def _head_tar_length(fs: list[frames.Frame]) -> list[frames.Frame]:
    fs[0] = dataclasses.replace(fs[0], tar_length=fs[0].tar_length + 512)
    return [fs[0], *(dataclasses.replace(f, tar_offset=f.tar_offset + 512) for f in fs[1:])]


def _twice(fs: list[frames.Frame]) -> list[frames.Frame]:
    fs[3] = dataclasses.replace(fs[3], members=(*fs[3].members, fs[1].members[0]))
    return fs


def _climbs(fs: list[frames.Frame]) -> list[frames.Frame]:
    fs[3] = dataclasses.replace(fs[3], members=(*fs[3].members, frames.Listed("lib/../../etc/passwd", "f", 0o644, EPOCH)))
    return fs


LIES = [
    ("claims-a-path-it-does-not-hold", _claims_a_path_of_a_decoded_frame, "Refused app-2.0.tar.zst: 'app-2.0/lib/mixed/stays.py' appears twice"),
    ("omits-a-path", _omits_a_path, f"Refused app-2.0.tar.zst: RECORD lists 1 file(s) the archive lacks: {SAME[5]}"),
    ("offsets-overlap", _overlapping, "is corrupt (its frame index lists frame 2 at byte"),
    ("past-the-end", _past_the_end, "is corrupt (its frame index says the frames end at byte"),
    ("tar-length-lies", _head_tar_length, "is corrupt (its frame index says frames 0-0 hold"),
    ("a-path-twice", _twice, "is corrupt (its frame index lists 'lib/same/link' twice)"),
    ("a-path-that-climbs", _climbs, "is corrupt (its frame index lists 'lib/../../etc/passwd', which is not a plain relative path)"),
]


@pytest.mark.parametrize(("change", "sentence"), [row[1:] for row in LIES], ids=[row[0] for row in LIES])
def test_an_index_that_lies_is_refused_and_nothing_changes(tmp_path: Path, root: Path, v2: Path,
                                                           change: Callable[[list[frames.Frame]], list[frames.Frame]],
                                                           sentence: str) -> None:
    (tmp_path / "bad").mkdir()
    lying = rewrite_index(v2, tmp_path / "bad" / v2.name, change)
    before = snapshot(root)
    with pytest.raises(RefusedArchive) as info:
        deploy.deploy(lying, root, host=HOST)
    assert sentence in info.value.message, info.value.message
    assert snapshot(root) == before and os.readlink(root / "current") == "releases/app-1.0"


def test_an_index_larger_than_its_bound_is_refused(tmp_path: Path, root: Path, v2: Path) -> None:
    big = tmp_path / "app-2.0.tar.zst"
    footer = (frames.INDEX_LIMIT + 1).to_bytes(4, "little") + frames.MAGIC  # in a skippable frame of its own
    big.write_bytes(v2.read_bytes() + struct.pack("<II", frames.SKIPPABLE, len(footer)) + footer)
    with pytest.raises(RefusedArchive, match=r"its frame index is 16,777,217 bytes, more than any bundle needs"):
        deploy.deploy(big, root, host=HOST)
    with pytest.raises(RefusedArchive, match=r"its frame index is 16,777,217 bytes"):  # every reader checks it
        with _reader.open_bundle(big):
            pass


def test_a_decoded_frame_cut_short_under_an_index_that_hides_it_is_refused(tmp_path: Path, root: Path, v2: Path) -> None:
    # 100 bytes cut from the middle of "mixed" (decoded), the index shifted to match: every frame still starts with
    # zstd's magic where the index says, but that frame no longer gives the tar bytes the index promises.
    fs = list(index_of(v2).frames)
    data = v2.read_bytes()
    cut = fs[2].offset + fs[2].length // 2
    fs[2] = dataclasses.replace(fs[2], length=fs[2].length - 100)
    fs[3:] = [dataclasses.replace(f, offset=f.offset - 100) for f in fs[3:]]
    end = fs[-1].offset + fs[-1].length
    (tmp_path / "cut").mkdir()
    cut_file = tmp_path / "cut" / v2.name
    cut_file.write_bytes((data[:cut] + data[cut + 100:])[:end] + frames.encode(fs))
    before = snapshot(root)
    with pytest.raises(RefusedArchive, match=r"is corrupt \("):
        deploy.deploy(cut_file, root, host=HOST)
    assert snapshot(root) == before


def test_a_shared_file_swapped_after_it_was_proven_is_not_kept(tmp_path: Path, root: Path, v2: Path) -> None:
    old = root / "releases" / "app-1.0"
    with _reader.open_bundle(v2, skipping=True) as reader:
        share_record = manifest.parse_record((old / manifest.RECORD).read_bytes())
        sharer = extract._Sharer(old, share_record, os.stat(tmp_path).st_dev, "app-2.0")
        assert reader.index is not None
        assert sharer.skippable(reader.index, reader.head.record) == [1, 3]
        reader.skip([1, 3])
        victim = old / SAME[7]
        swapped = tmp_path / "swapped"
        swapped.write_bytes(victim.read_bytes())  # the same bytes, size, mode and mtime: another inode
        swapped.chmod(stat.S_IMODE(victim.stat().st_mode))
        os.utime(swapped, (EPOCH, EPOCH))
        os.replace(swapped, victim)
        with pytest.raises(DeployError, match=r"m07.py changed while app-2.0 was being deployed beside it; nothing was deployed\."):
            _unpack.unpack(reader, tmp_path / "out", link=sharer)
    assert not (tmp_path / "out" / SAME[7]).exists()
