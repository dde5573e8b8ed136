"""The writer of a bundle to disk: its writing thread ends, and its errors reach the caller."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipenv.bundle import reader as _reader
from shipenv.bundle import unpack as _unpack
from tests.helpers import check_release, make_tree, pack, small_tmpfs


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
