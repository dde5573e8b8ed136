"""Placing a layer's files into the tree (shipenv.build.placing): moved when fresh, nothing overwritten.

Merging cached layers (``merge_layer``) is tested with real cache entries in
test_layers.py and test_warm.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from shipenv.build import layers, placing
from tests.unit.test_cache import contents, make_layer


def test_move_layer_moves_new_files_and_reports_clashes(tmp_path: Path) -> None:
    dest = make_layer(tmp_path / "dest")
    src = tmp_path / "src"
    (src / "lib" / "pkg").mkdir(parents=True)
    (src / "lib" / "pkg" / "__init__.py").write_text("VALUE = 1\n")  # same bytes: no clash
    (src / "lib" / "pkg" / "data.bin").write_bytes(b"other")  # other bytes: a clash
    (src / "lib" / "new.py").write_text("NEW = True\n")
    (src / "bin").mkdir()
    (src / "bin" / "tool-link").symlink_to("elsewhere")  # another target: a clash
    (src / "bin" / "tool" / "sub").mkdir(parents=True)  # a directory where the tree has a file: a clash
    (src / "bin" / "tool" / "sub" / "x.py").write_text("")
    new_ino = (src / "lib" / "new.py").stat().st_ino
    clashes, placed = placing.move_layer(src, layers.compute(src, ()), dest)
    assert clashes == ["bin/tool", "bin/tool-link", "lib/pkg/data.bin"]
    assert sorted(placed) == ["lib/new.py"]
    assert (dest / "lib" / "new.py").read_text() == "NEW = True\n"
    assert (dest / "lib" / "new.py").stat().st_ino == new_ino
    assert placed["lib/new.py"] == layers.signature(os.lstat(dest / "lib" / "new.py"))
    assert (dest / "lib" / "pkg" / "data.bin").read_bytes() == bytes(range(256)) * 40  # never overwritten
    assert (dest / "bin" / "tool").read_text() == "#!/bin/sh\necho tool\n"


def test_move_layer_moves_a_directory_the_tree_lacks_whole(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "lib").mkdir(parents=True)
    src = make_layer(tmp_path / "src")
    (src / "lib" / "pkg" / "sub" / "deeper").mkdir(parents=True)
    (src / "lib" / "pkg" / "sub" / "deeper" / "m.py").write_text("")
    expected = contents(src)
    pkg_ino = (src / "lib" / "pkg").stat().st_ino
    facts = layers.compute(src, ())
    clashes, placed = placing.move_layer(src, facts, dest)
    assert clashes == [] and contents(dest) == expected
    assert (dest / "lib" / "pkg").stat().st_ino == pkg_ino  # one rename, not a new directory
    assert placed == {rel: layers.signature(os.lstat(dest / rel)) for rel in facts.files}
    assert not (src / "lib" / "pkg").exists()


def test_move_layer_leaves_behind_an_empty_directory_a_cached_merge_would_not_make(tmp_path: Path) -> None:
    # The archive must not depend on the cache: an empty directory the facts do not know stays out.
    dest = tmp_path / "dest"
    dest.mkdir()
    src = make_layer(tmp_path / "src")
    (src / "lib" / "pkg" / "empty").mkdir()
    facts = layers.compute(src, ())
    clashes, _placed = placing.move_layer(src, facts, dest)
    assert clashes == []
    assert not (dest / "lib" / "pkg" / "empty").exists() and (dest / "lib" / "pkg" / "data.bin").is_file()
    dirs = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_dir() and not p.is_symlink())
    assert dirs == ["bin", "lib", "lib/pkg"]
