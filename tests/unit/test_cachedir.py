"""``shipenv cache``: sizes, last use and pruning of a real cache (shipenv.build.cachedir).

The entries here are real ``BuildCache`` layers and remembered answers, made
through the cache's own API, so the layout pruning reads is the one builds write.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from shipenv.build import cachedir
from shipenv.build.cache import BuildCache, open_cache
from shipenv.errors import ShipenvError, UsageError
from tests.helpers import small_tmpfs
from tests.unit.test_cache import make_layer

DAY = 86400


def filled(tmp_path: Path) -> tuple[BuildCache, dict[str, Path]]:
    """A cache with three layers of ~1 MB, used 30, 10 and 1 day(s) ago, and a remembered answer."""
    store = open_cache(tmp_path / "cache", True)
    assert store is not None
    now = time.time()
    entries = {}
    for name, age in (("old", 30), ("mid", 10), ("new", 1)):
        tree = make_layer(tmp_path / f"tree-{name}")
        (tree / "lib" / "pkg" / "big.bin").write_bytes(os.urandom(1 << 20))
        entry = store.put("wheel", f"{name:>064}".replace(" ", "0"), tree)
        assert entry is not None
        os.utime(entry, (now - age * DAY, now - age * DAY))
        entries[name] = entry
    store.remember("origins", ["x"], lambda: {"a": 1})
    return store, entries


def test_usage_counts_each_entry_once_with_its_last_use(tmp_path: Path) -> None:
    store, entries = filled(tmp_path)
    held = cachedir.usage(store.root)
    kinds = held.by_kind()
    assert kinds["wheel"][0] == 3 and kinds["origins"][0] == 1
    assert [e.path for e in held.entries if e.kind == "wheel"] == [entries["old"], entries["mid"], entries["new"]]
    # each layer holds ~1 MiB of its own; the total counts every inode once
    assert all(e.size > 1 << 20 for e in held.entries if e.kind == "wheel")
    assert held.size == sum(e.size for e in held.entries)


def test_prune_to_a_size_removes_the_least_recently_used_first(tmp_path: Path) -> None:
    store, entries = filled(tmp_path)
    held = cachedir.usage(store.root)
    keep = held.size - next(e.size for e in held.entries if e.path == entries["old"])
    done = cachedir.prune(store.root, max_size=keep)
    assert [e.path for e in done.removed] == [entries["old"]]
    assert not entries["old"].exists() and entries["mid"].exists() and entries["new"].exists()
    assert done.left == cachedir.usage(store.root).size <= keep
    assert not [p for p in entries["old"].parent.iterdir() if p.name.startswith(".pruned")]


def test_prune_by_age_and_dry_run(tmp_path: Path) -> None:
    store, entries = filled(tmp_path)
    dry = cachedir.prune(store.root, older_than=5, dry_run=True)
    assert {e.path for e in dry.removed} == {entries["old"], entries["mid"]}
    assert entries["old"].exists() and entries["mid"].exists()  # nothing removed
    done = cachedir.prune(store.root, older_than=5)
    assert {e.path for e in done.removed} == {entries["old"], entries["mid"]}
    assert entries["new"].exists() and not entries["old"].exists()


def test_a_pruned_layer_is_a_miss_and_a_used_one_is_kept(tmp_path: Path) -> None:
    store, entries = filled(tmp_path)
    # a build uses the oldest layer now: it becomes the most recently used
    assert store.get_layer("wheel", entries["old"].name) is not None
    cachedir.prune(store.root, older_than=5)
    assert entries["old"].exists() and not entries["mid"].exists()
    assert store.get_layer("wheel", entries["mid"].name) is None  # rebuilt by the next build, never half there
    assert store.put("wheel", entries["mid"].name, make_layer(tmp_path / "again")) is not None


def test_a_young_temporary_entry_of_a_running_build_is_left_alone(tmp_path: Path) -> None:
    store, _entries = filled(tmp_path)
    writing = store.root / "wheel" / "ab" / ".abcdef.tmp"
    (writing / "tree").mkdir(parents=True)
    (writing / "tree" / "f").write_bytes(b"x" * 5000)
    cachedir.prune(store.root, max_size=0)
    assert writing.exists()
    assert [e.path for e in cachedir.usage(store.root).entries] == []


@pytest.mark.parametrize("text", ["ten", "-1G", "10X", ""])
def test_a_bad_size_is_one_sentence(text: str) -> None:
    with pytest.raises(UsageError, match="is not a size"):
        cachedir.parse_size(text)


def test_sizes() -> None:
    assert cachedir.parse_size("2048") == 2048
    assert cachedir.parse_size("500M") == 500_000_000
    assert cachedir.parse_size("10GB") == 10_000_000_000
    assert cachedir.parse_size("4GiB") == 4 << 30
    assert cachedir.parse_size("1.5 g") == 1_500_000_000


def test_prune_needs_a_rule_and_a_cache(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Say what to keep"):
        cachedir.prune(tmp_path)
    with pytest.raises(UsageError, match="no build cache"):
        cachedir.usage(tmp_path / "none")


def test_an_unremovable_entry_is_one_sentence(tmp_path: Path) -> None:
    # The suite runs as root (as a deploy does), which ignores permissions: a read-only mount refuses.
    with small_tmpfs(tmp_path / "mnt", "16m") as mnt:
        store, entries = filled(mnt)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        try:
            with pytest.raises(ShipenvError, match="Cannot remove .* from the build cache .*Read-only"):
                cachedir.prune(store.root, max_size=0)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        assert all(e.exists() for e in entries.values())
