"""The build cache (shipenv.build.cache): content keys, verified entries, hard links.

A cache entry that does not match its own facts, or whose host libraries
changed, must never be used: a user would get a bundle with someone else's
bytes in it. These tests damage entries on purpose and check they are dropped.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from shipenv.build import cache, layers
from shipenv.build.cache import BuildCache


def make_layer(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "pkg").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "tool-link").symlink_to("tool")
    (root / "lib" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "lib" / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 40)
    return root


def contents(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


@pytest.fixture
def store(tmp_path: Path) -> BuildCache:
    return BuildCache(tmp_path / "cache")


# -- keys ----------------------------------------------------------------------------------------


def test_keys_are_stable_and_change_with_every_part() -> None:
    a = cache.key("wheel", "sha256:abc", {"keep": ["test"], "system": []})
    assert a == cache.key("wheel", "sha256:abc", {"system": [], "keep": ["test"]})  # dict order does not matter
    assert len(a) == 64 and int(a, 16) >= 0
    others = {
        cache.key("wheel", "sha256:abd", {"keep": ["test"], "system": []}),
        cache.key("wheel", "sha256:abc", {"keep": [], "system": []}),
        cache.key("interpreter", "sha256:abc", {"keep": ["test"], "system": []}),
        cache.key("sha256:abc", "wheel", {"keep": ["test"], "system": []}),
    }
    assert a not in others and len(others) == 4


def test_file_digest_is_the_sha256_of_the_content(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"shipenv")
    (tmp_path / "b").write_bytes(b"shipenv")
    assert cache.file_digest(tmp_path / "a") == cache.file_digest(tmp_path / "b")
    assert cache.file_digest(tmp_path / "a") == "ba2234687b7f35f41418e76bc2562bb531847d0f548d74460e28d854f86b2918"


def test_tree_fingerprint_changes_when_a_file_changes(tmp_path: Path) -> None:
    tree = make_layer(tmp_path / "t")
    first = cache.tree_fingerprint(tree)
    assert cache.tree_fingerprint(tree) == first
    (tree / "lib" / "pkg" / "__init__.py").write_text("VALUE = 22\n")
    assert cache.tree_fingerprint(tree) != first


def test_tree_fingerprint_ignores_bytecode_any_program_may_write(tmp_path: Path) -> None:
    """Running the base interpreter writes __pycache__ into its stdlib; no layer copies it, so no layer is rebuilt for it."""
    tree = make_layer(tmp_path / "t")
    first = cache.tree_fingerprint(tree)
    (tree / "lib" / "pkg" / "__pycache__").mkdir()
    (tree / "lib" / "pkg" / "__pycache__" / "__init__.cpython-312.pyc").write_bytes(b"\x00" * 16)
    assert cache.tree_fingerprint(tree) == first


def test_default_dir_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SHIPENV_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_dir() == tmp_path / "xdg" / "shipenv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.default_dir() == Path.home() / ".cache" / "shipenv"


def test_shipenv_cache_dir_comes_before_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SHIPENV_CACHE_DIR", str(tmp_path / "own"))
    assert cache.default_dir() == tmp_path / "own"
    monkeypatch.setenv("SHIPENV_CACHE_DIR", "")  # set but empty: as unset
    assert cache.default_dir() == tmp_path / "xdg" / "shipenv"


def test_content_fingerprint_is_the_same_for_a_copy_made_later(tmp_path: Path) -> None:
    """A fresh clone or reinstall of shipenv's own files (new mtimes, new place) keeps its layers."""
    tree = make_layer(tmp_path / "t")
    first = cache.content_fingerprint(tree)
    time.sleep(0.01)
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)  # new mtimes, new inodes
    for path in copy.rglob("*"):
        os.utime(path, (1, 1), follow_symlinks=False)
    assert cache.content_fingerprint(copy) == first
    (copy / "lib" / "pkg" / "__pycache__").mkdir()
    (copy / "lib" / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"\x00")
    assert cache.content_fingerprint(copy) == first


def test_content_fingerprint_changes_with_bytes_names_and_the_executable_bit(tmp_path: Path) -> None:
    tree = make_layer(tmp_path / "t")
    seen = {cache.content_fingerprint(tree)}
    target = next(p for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink())
    target.write_bytes(target.read_bytes() + b"#")
    seen.add(cache.content_fingerprint(tree))
    target.chmod(target.stat().st_mode ^ 0o111)
    seen.add(cache.content_fingerprint(tree))
    target.rename(target.with_name(target.name + "2"))
    seen.add(cache.content_fingerprint(tree))
    assert len(seen) == 4
    assert cache.content_fingerprint(tree, suffixes=(".nothing",)) != cache.content_fingerprint(tree)


# -- entries -------------------------------------------------------------------------------------


def test_put_then_get_gives_the_same_tree(store: BuildCache, tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer")
    k = cache.key("wheel", "one")
    assert store.get("wheel", k) is None
    store.put("wheel", k, layer)
    got = store.get("wheel", k)
    assert got is not None and contents(got) == contents(layer)
    assert os.access(got / "bin" / "tool", os.X_OK)
    assert store.get("interpreter", k) is None  # kinds do not mix


def test_entries_are_hard_links_of_the_stored_files(store: BuildCache, tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer")
    store.put("wheel", "k" * 64, layer)
    got = store.get("wheel", "k" * 64)
    assert got is not None
    data = got / "lib" / "pkg" / "data.bin"
    assert data.stat().st_ino == (layer / "lib" / "pkg" / "data.bin").stat().st_ino
    assert (got / "bin" / "tool-link").is_symlink()


def test_a_damaged_entry_is_dropped_not_used(store: BuildCache, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layer = make_layer(tmp_path / "layer")
    store.put("wheel", "d" * 64, layer)
    got = store.get("wheel", "d" * 64)
    assert got is not None
    entry = got.parent
    # A file edited in place (through the hard link, as a careless tool would).
    target = got / "lib" / "pkg" / "__init__.py"
    target.write_text("VALUE = 666\n")
    with caplog.at_level(logging.WARNING, logger="shipenv.build.cache"):
        assert store.get("wheel", "d" * 64) is None
    assert "dropping damaged entry" in caplog.text
    assert not entry.exists()
    # The next put stores a fresh copy, which is then used.
    (layer / "lib" / "pkg" / "__init__.py").unlink()
    (layer / "lib" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    store.put("wheel", "d" * 64, layer)
    again = store.get("wheel", "d" * 64)
    assert again is not None and (again / "lib" / "pkg" / "__init__.py").read_text() == "VALUE = 1\n"


@pytest.mark.parametrize("damage", ["extra file", "missing file", "missing facts", "bad entry.json"])
def test_every_kind_of_damage_is_caught(store: BuildCache, tmp_path: Path, damage: str) -> None:
    store.put("wheel", "e" * 64, make_layer(tmp_path / "layer"))
    tree = store.get("wheel", "e" * 64)
    assert tree is not None
    if damage == "extra file":
        (tree / "lib" / "pkg" / "stray.py").write_text("import os\n")
    elif damage == "missing file":
        (tree / "bin" / "tool").unlink()
    elif damage == "missing facts":
        (tree.parent / "facts.json").unlink()
    else:
        (tree.parent / "entry.json").write_text("{not json")
    assert store.get("wheel", "e" * 64) is None
    assert not tree.parent.exists()


def test_an_entry_is_stale_when_a_host_library_it_vendored_changed(store: BuildCache, tmp_path: Path) -> None:
    host_lib = tmp_path / "host" / "libz.so.1"
    host_lib.parent.mkdir()
    host_lib.write_bytes(b"old")
    store.put("wheel", "h" * 64, make_layer(tmp_path / "layer"), host_files=[host_lib])
    assert store.get("wheel", "h" * 64) is not None
    host_lib.write_bytes(b"upgraded")  # apt-get upgrade
    assert store.get("wheel", "h" * 64) is None


def test_put_keeps_the_first_entry_for_a_key(store: BuildCache, tmp_path: Path) -> None:
    store.put("wheel", "f" * 64, make_layer(tmp_path / "one"))
    other = make_layer(tmp_path / "two")
    (other / "lib" / "pkg" / "__init__.py").write_text("VALUE = 2\n")
    store.put("wheel", "f" * 64, other)
    got = store.get("wheel", "f" * 64)
    assert got is not None and (got / "lib" / "pkg" / "__init__.py").read_text() == "VALUE = 1\n"


def test_a_cache_that_cannot_be_written_costs_only_the_cache(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    assert cache.open_cache(tmp_path / "file" / "cache", True) is None
    assert cache.open_cache(tmp_path / "c", False) is None
    opened = cache.open_cache(tmp_path / "c", True)
    assert opened is not None and opened.root == tmp_path / "c" and opened.root.is_dir()
    unwritable = BuildCache(tmp_path / "file")  # put cannot make its directories: logged, not raised
    unwritable.put("wheel", "g" * 64, make_layer(tmp_path / "layer"))
    assert unwritable.get("wheel", "g" * 64) is None


# -- linking and merging -------------------------------------------------------------------------


def test_link_or_copy_links_on_one_file_system_and_copies_across(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x" * 1000)
    cache.link_or_copy(str(src), str(tmp_path / "linked"))
    assert (tmp_path / "linked").stat().st_ino == src.stat().st_ino
    # A target that exists cannot be linked over: the copy path takes it.
    (tmp_path / "there").write_bytes(b"old")
    cache.link_or_copy(str(src), str(tmp_path / "there"))
    assert (tmp_path / "there").read_bytes() == b"x" * 1000
    assert (tmp_path / "there").stat().st_ino != src.stat().st_ino


def test_put_with_move_makes_the_stage_the_entry(store: BuildCache, tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer")
    facts = layers.compute(layer, ())
    ino = (layer / "lib" / "pkg" / "data.bin").stat().st_ino
    entry = store.put("wheel", "m" * 64, layer, facts=facts, move=True)
    assert entry is not None and not layer.exists()
    hit = store.get_layer("wheel", "m" * 64)  # checked against the facts it was given
    assert hit is not None and hit.facts == facts
    assert (entry / "tree" / "lib" / "pkg" / "data.bin").stat().st_ino == ino
    # An entry already there: nothing is stored, and the stage stays where it is.
    again = make_layer(tmp_path / "again")
    assert store.put("wheel", "m" * 64, again, facts=layers.compute(again, ()), move=True) is None
    assert (again / "lib" / "pkg" / "data.bin").is_file()


def test_remember_computes_once_and_again_when_what_it_depends_on_changed(store: BuildCache, tmp_path: Path) -> None:
    lib = tmp_path / "libz.so.1"
    lib.write_bytes(b"old")
    calls: list[int] = []

    def ask() -> dict[str, str]:
        calls.append(1)
        return {"libz": "zlib1g"}

    def parts() -> list[object]:
        return [cache.host_files_state([lib])]

    assert store.remember("origins", parts(), ask) == {"libz": "zlib1g"}
    assert store.remember("origins", parts(), ask) == {"libz": "zlib1g"} and len(calls) == 1
    lib.write_bytes(b"upgraded")  # another size: another key
    assert store.remember("origins", parts(), ask) == {"libz": "zlib1g"} and len(calls) == 2
    for kept in (store.root / "origins").glob("*.json"):
        kept.write_text("{not json")
    assert store.remember("origins", parts(), ask) == {"libz": "zlib1g"} and len(calls) == 3


def test_keys_change_with_the_libraries_shipenv_runs_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade of installer (or lief, pyelftools, zstandard...) must not reuse layers the old one made."""
    site = tmp_path / "site"
    (site / "installer-1.0.0.dist-info").mkdir(parents=True)
    monkeypatch.setattr("sys.path", [str(site)])
    cache._libraries.cache_clear()
    try:
        before = cache.key("layer", "same parts")
        assert cache.key("layer", "same parts") == before
        (site / "installer-1.0.0.dist-info").rename(site / "installer-1.1.0.dist-info")
        cache._libraries.cache_clear()
        assert cache.key("layer", "same parts") != before
    finally:
        cache._libraries.cache_clear()
