"""The staging directory's removal (shipenv.build.output.remove_tree): everything in it goes, nothing it links to."""

from __future__ import annotations

from pathlib import Path

from shipenv.build import output


def test_remove_tree_removes_everything_and_follows_no_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    tree = tmp_path / "staging"
    for i in range(40):
        deep = tree / f"d{i}" / "a" / "b"
        deep.mkdir(parents=True)
        (deep / "f.py").write_text("x = 1\n")
        (tree / f"d{i}" / "top.txt").write_text("top\n")
    (tree / "d0" / "to-outside").symlink_to(outside)  # a symlink to a directory: unlinked, never entered
    (tree / "d1" / "file-link").symlink_to(outside / "keep.txt")
    (tree / "dangling").symlink_to(tmp_path / "nowhere")
    (tree / "empty").mkdir()
    output.remove_tree(tree)
    assert not tree.exists() and not tree.is_symlink()
    assert (outside / "keep.txt").read_text() == "keep\n"
    output.remove_tree(tree)  # already gone: nothing to do, no error
