"""The writer of a bundle to disk: every file whole whichever thread wrote it, its writing threads end, and their errors reach the caller."""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipenv.bundle import reader as _reader
from shipenv.bundle import unpack as _unpack
from tests.helpers import (
    check_release,
    entry,
    file_member,
    link_member,
    make_tree,
    members_of,
    pack,
    small_tmpfs,
    with_record,
    write_tar,
)


def _writing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "shipenv-write"]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs."""
    with small_tmpfs(tmp_path / "tiny", "1m") as mount:
        yield mount


def test_unpacks_a_bundle_that_verifies(tmp_path: Path) -> None:
    archive = pack(make_tree(tmp_path / "t", "1.0", big=300_000), tmp_path / "dist")
    with _reader.open_bundle(archive) as reader:
        stats = _unpack.unpack(reader, tmp_path / "out")
    assert stats.files > 5 and stats.written_bytes >= 300_000
    check_release(tmp_path / "out")
    assert not _writing_threads()


def test_a_full_disk_while_writing_raises_enospc(tmp_path: Path, tiny_disk: Path) -> None:
    # The writing thread meets the full disk; the reading thread raises its error.
    archive = pack(make_tree(tmp_path / "t", "1.0", big=3_000_000), tmp_path / "dist")
    with _reader.open_bundle(archive) as reader, pytest.raises(OSError) as info:
        _unpack.unpack(reader, tiny_disk / "out")
    assert info.value.errno == errno.ENOSPC
    assert not _writing_threads()


def test_files_big_and_small_and_hard_links_to_them_are_written_whole(tmp_path: Path) -> None:
    # Files alternate between the two writers; a big one goes in pieces, a hard link waits for its source.
    sizes = [0, 1, 511, 512, 1 << 20, (1 << 20) + 1, 3 << 20, 7, 4096, 100_000]
    files = {f"lib/f{i}": os.urandom(size) for i, size in enumerate(sizes)}
    extra = [file_member(f"app-1.0/{rel}", data, 0o755 if i % 2 else 0o644) for i, (rel, data) in enumerate(files.items())]
    extra += [link_member(f"app-1.0/{rel}.link", f"app-1.0/{rel}", tarfile.LNKTYPE) for rel in files]
    members = with_record(members_of(make_tree(tmp_path / "t", "1.0")) + extra,
                          *(entry(rel, data) for rel, data in files.items()), *(entry(f"{rel}.link", data) for rel, data in files.items()))
    archive = write_tar(tmp_path / "app-1.0.tar.gz", members)
    with _reader.open_bundle(archive) as reader:
        stats = _unpack.unpack(reader, tmp_path / "out")
    check_release(tmp_path / "out")
    for i, rel in enumerate(files):
        st, link = os.stat(tmp_path / "out" / rel), os.stat(tmp_path / "out" / f"{rel}.link")
        assert st.st_ino == link.st_ino and st.st_nlink == 2
        assert stat.S_IMODE(st.st_mode) == (0o755 if i % 2 else 0o644) and st.st_mtime == 0
    assert stats.written_bytes >= sum(sizes)
    assert not _writing_threads()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077, 0o277])
def test_files_get_their_mode_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    # A umask that keeps 0755 lets files be created with their mode; any other means fchmod, with the same result.
    files = {f"lib/m{mode:o}": os.urandom(100) for mode in (0o755, 0o644, 0o600, 0o444, 0o500)}
    modes = dict(zip(files, (0o755, 0o644, 0o600, 0o444, 0o500), strict=True))
    extra = [file_member(f"app-1.0/{rel}", data, modes[rel]) for rel, data in files.items()]
    members = with_record(members_of(make_tree(tmp_path / "t", "1.0")) + extra, *(entry(rel, data) for rel, data in files.items()))
    archive = write_tar(tmp_path / "app-1.0.tar.gz", members)
    old = os.umask(umask)
    try:
        assert _unpack._umask_keeps_modes() is (not umask & 0o755)
        with _reader.open_bundle(archive) as reader:
            _unpack.unpack(reader, tmp_path / "out")
    finally:
        os.umask(old)
    for rel, mode in modes.items():
        st = os.stat(tmp_path / "out" / rel)
        assert stat.S_IMODE(st.st_mode) == mode and st.st_mtime == 0
        assert (tmp_path / "out" / rel).read_bytes() == files[rel]


def test_directories_get_the_archives_mtimes_after_their_files_as_gnu_tar_gives_them(tmp_path: Path) -> None:
    # members_of lists every directory (mtime 1577836800) before its files: the time is set once they are all written.
    # A file whose directories the archive does not list gets them made, at 0755 and the time of unpacking.
    data = b"deep\n"
    members = with_record(members_of(make_tree(tmp_path / "t", "1.0")) + [file_member("app-1.0/extra/deep/x.txt", data)],
                          entry("extra/deep/x.txt", data))
    archive = write_tar(tmp_path / "app-1.0.tar.gz", members)
    before = time.time()
    with _reader.open_bundle(archive) as reader:
        _unpack.unpack(reader, tmp_path / "out")
    out = tmp_path / "out"
    listed = [out, *(p for p in out.rglob("*") if p.is_dir() and not p.is_symlink() and "extra" not in p.parts)]
    assert len(listed) > 3
    for d in listed:
        st = d.stat()
        assert (st.st_mtime, stat.S_IMODE(st.st_mode)) == (1577836800, 0o755), d
    for d in (out / "extra", out / "extra" / "deep"):
        st = d.stat()
        assert st.st_mtime >= before - 1 and stat.S_IMODE(st.st_mode) == 0o755, d
    check_release(out)
