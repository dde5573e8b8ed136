"""The last build's tree, kept in the cache and reused (shipenv.build.warm): a rebuild in it gives the tree an empty start gives.

Real cache entries, real merges (:func:`shipenv.build.placing.merge_layer`), and a kept
tree left in every state a user or an earlier build can leave one in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from shipenv.build import cachedir, layering, layers, output, placing, warm
from shipenv.build.cache import BuildCache
from shipenv.errors import ShipenvError
from tests.unit.test_layers import NEEDLE, make_layer

KEY = "1" * 64
SITE = "lib/pkg"  #: what the layers here put in place of site-packages


def snapshot(root: Path) -> dict[str, object]:
    """Every path below ``root``: a directory, a symlink's target, or a file's bytes and inode."""
    found: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            found[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = (p.read_bytes(), p.stat().st_ino)
    return found


def stored(store: BuildCache, tmp_path: Path, name: str, key: str, extra: dict[str, str] | None = None) -> layers.Layer:
    tree = make_layer(tmp_path / f"layer-{name}")
    for rel, text in (extra or {}).items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    store.put("wheel", key, tree, facts=layers.compute(tree, (NEEDLE,)))
    hit = store.get_layer("wheel", key)
    assert hit is not None
    return hit


def build(store: BuildCache, root: Path, layer_list: list[layers.Layer], reused: bool) -> layers.Ledger:
    """What the pipeline does with its layers: merge each in order, then (in a reused tree) sweep."""
    ledger = layers.Ledger((NEEDLE, str(root)), str(root))
    for layer in layer_list:
        layering.merge_cached(layer, root, ledger, layer.name, reused)
    if reused:
        warm.sweep(root, ledger.placed())
    return ledger


def test_a_kept_tree_is_swept_to_what_an_empty_start_gives(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    a = stored(store, tmp_path, "a", "a" * 64, {"lib/a/mod.py": "A = 1\n"})
    b = stored(store, tmp_path, "b", "b" * 64, {"lib/b/mod.py": "B = 1\n", "lib/b/deep/x.py": "X = 1\n"})
    c = stored(store, tmp_path, "c", "c" * 64, {"lib/c/mod.py": "C = 1\n"})
    store.put("interpreter", KEY, make_layer(tmp_path / "interp"))

    first = tmp_path / "first"
    first.mkdir()
    build(store, first, [a, b], reused=False)
    (first / "bin" / "launcher").write_text("a later stage's file\n")
    warm.keep(store, KEY, first)
    assert not first.exists() and warm.slot(store, KEY).is_dir()

    # The kind of mess a kept tree can come back with.
    kept = warm.slot(store, KEY)
    (kept / "lib" / "a" / "mod.py").unlink()
    (kept / "lib" / "a" / "mod.py").write_text("raise SystemExit('stale')\n")  # a new inode, other bytes
    outside = tmp_path / "outside"
    outside.mkdir()
    for sub in (kept / "lib" / "b" / "deep").iterdir():
        sub.unlink()
    (kept / "lib" / "b" / "deep").rmdir()
    (kept / "lib" / "b" / "deep").symlink_to(outside)  # a symlink where a layer has a directory
    (kept / "stray" / "empty").mkdir(parents=True)
    (kept / "lib" / "c").write_text("a file where a layer has a directory\n")

    second = tmp_path / "second"
    second.mkdir()
    taken = warm.take(store, KEY, second, SITE)
    assert taken is not None and not warm.slot(store, KEY).exists()  # one build has it at a time
    warm.restore_site(taken)
    build(store, second, [c, a, b], reused=True)

    clean = tmp_path / "clean"
    clean.mkdir()
    build(store, clean, [c, a, b], reused=False)
    got, want = snapshot(second), snapshot(clean)
    assert got == want  # the same paths, bytes and inodes (hard links to the same entries)
    assert list(outside.iterdir()) == []  # nothing was written through the symlink


def test_the_interpreter_runs_without_the_last_builds_site_packages(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    tree = tmp_path / "t"
    (tree / SITE / "old").mkdir(parents=True)
    (tree / SITE / "old" / "x.py").write_text("")
    (tree / SITE / "stale.pth").write_text("import os; os._exit(3)\n")
    store.put("interpreter", KEY, make_layer(tmp_path / "interp"))
    warm.keep(store, KEY, tree)
    root = tmp_path / "root"
    root.mkdir()
    taken = warm.take(store, KEY, root, SITE)
    assert taken is not None
    assert not (root / SITE).exists()  # what pip and the byte-compiler see: no .pth of the last build
    (root / SITE).mkdir()
    (root / SITE / "__init__.py").write_text("placed by this build\n")
    warm.restore_site(taken)
    assert (root / SITE / "old" / "x.py").exists() and (root / SITE / "stale.pth").exists()
    assert (root / SITE / "__init__.py").read_text() == "placed by this build\n"  # what this build placed wins
    warm.sweep(root, {f"{SITE}/__init__.py"})
    assert snapshot(root).keys() == {"lib", SITE, f"{SITE}/__init__.py"}


def test_nothing_is_kept_without_the_interpreter_entry_and_a_kept_tree_is_taken_once(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    tree = tmp_path / "t"
    tree.mkdir()
    warm.keep(store, KEY, tree)
    assert tree.exists() and not warm.slot(store, KEY).exists()  # no interpreter layer to build on: removed with the staging
    store.put("interpreter", KEY, make_layer(tmp_path / "interp"))
    warm.keep(store, KEY, tree)
    other = tmp_path / "other"
    other.mkdir()
    warm.keep(store, KEY, other)  # another build kept one first: this one stays where it is
    assert other.exists()
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert warm.take(store, KEY, one, SITE) is not None
    assert warm.take(store, KEY, two, SITE) is None and list(two.iterdir()) == []


def test_a_layer_file_of_this_build_still_clashes_in_a_kept_tree(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    a = stored(store, tmp_path, "a", "a" * 64, {"lib/same.py": "A\n"})
    b = stored(store, tmp_path, "b", "b" * 64, {"lib/same.py": "B\n"})
    root = tmp_path / "root"
    root.mkdir()
    ledger = layers.Ledger((NEEDLE, str(root)), str(root))
    layering.merge_cached(a, root, ledger, "a", True)
    clashes, _ = placing.merge_layer(b, root, ledger.placed())
    assert "lib/same.py" in clashes  # as in an empty tree: two requirements ship the same file


def test_prune_removes_the_kept_trees_with_anything_it_removes(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    a = stored(store, tmp_path, "a", "a" * 64, {"lib/a/big.bin": "x" * (1 << 20)})
    store.put("interpreter", KEY, make_layer(tmp_path / "interp"))
    root = tmp_path / "root"
    root.mkdir()
    build(store, root, [a], reused=False)
    warm.keep(store, KEY, root)
    held = cachedir.usage(store.root)
    tree = next(e for e in held.entries if e.kind == warm.KIND)
    layer = next(e for e in held.entries if e.path == a.entry)
    assert layer.size > 1 << 20 > tree.size  # the links count for the layer, not for the tree
    assert cachedir.prune(store.root, older_than=1).removed == ()
    done = cachedir.prune(store.root, max_size=held.size - 1)
    assert warm.slot(store, KEY) in [e.path for e in done.removed] and not warm.slot(store, KEY).exists()


def test_the_kept_trees_layers_are_checked_ahead_and_a_damaged_one_still_dropped(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    a = stored(store, tmp_path, "a", "a" * 64, {"lib/a/mod.py": "A = 1\n"})
    b = stored(store, tmp_path, "b", "b" * 64, {"lib/b/mod.py": "B = 1\n"})
    store.put("interpreter", KEY, make_layer(tmp_path / "interp"))
    root = tmp_path / "root"
    root.mkdir()
    build(store, root, [a, b], reused=False)
    warm.keep(store, KEY, root, [a, b])
    assert b.entry is not None
    (b.entry / "tree" / "lib" / "b" / "mod.py").write_text("B = 666\n")  # edited in place, after the last build

    later = BuildCache(store.root)  # the next build's
    warm.prefetch(later, KEY)
    assert set(later._early) == {("interpreter", KEY), ("wheel", "a" * 64), ("wheel", "b" * 64)}
    hit = later.get_layer("wheel", "a" * 64)
    assert hit is not None and hit.facts == a.facts and ("wheel", "a" * 64) not in later._early  # taken once
    assert later.get_layer("wheel", "b" * 64) is None and not b.entry.exists()  # checked as ever: dropped
    assert later.get_layer("interpreter", KEY) is not None


def test_a_note_that_is_not_what_keep_wrote_only_loses_the_head_start(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    store.put("interpreter", KEY, make_layer(tmp_path / "interp"))
    for note in ("{not json", '[["wheel", "../../etc"], ["outputs", "' + "f" * 64 + '"]]', '[["wheel", "' + "a" * 64 + '"], 7]', '{"a": 1}'):
        (store.path("interpreter", KEY) / warm.HELD).write_text(note)
        later = BuildCache(store.root)
        warm.prefetch(later, KEY)
        assert set(later._early) == {("interpreter", KEY)}
        assert later.get_layer("interpreter", KEY) is not None


def test_a_directory_that_will_not_go_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    (root / "lib" / "old" / "deep").mkdir(parents=True)
    monkeypatch.setattr(output, "remove_tree", lambda path: None)  # as on a directory made immutable
    left = re.escape(str(root / "lib"))
    with pytest.raises(ShipenvError, match=rf"^Cannot remove {left}, left by the last build in the tree this build reuses\.$"):
        warm.sweep(root, set())
