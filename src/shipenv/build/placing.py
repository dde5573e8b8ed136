"""Placing a layer's files into the build's tree: moved when fresh, hard-linked from its cache entry when cached.

A fresh layer (``--no-cache``, or a cache on another file system) is moved
into the tree (:func:`move_layer`), a directory the tree lacks with one
rename. A cached one is linked file by file from its entry, driven by its
facts, with no walk (:func:`merge_layer`); into the last build's kept tree
(:mod:`shipenv.build.warm`) a file already there as the entry's own costs an
``lstat``. Either way the rule for clashes is one: a file already placed with
other bytes, a symlink with another target, or a file where the layer has a
directory is a clash, reported and never overwritten
(:mod:`shipenv.build.layering` decides what a clash means).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Collection, Iterable
from pathlib import Path

from shipenv.build import layers
from shipenv.build.cache import file_digest


def move_layer(tree: Path, facts: layers.LayerFacts, dest: Path) -> tuple[list[str], dict[str, layers.Signature]]:
    """Move a fresh layer's files into ``dest`` (``--no-cache``); return the clashes and what was placed.

    A directory ``dest`` does not have yet is moved whole, with one rename
    (making a directory is the dearest thing a build does to a disk), when
    it holds exactly the directories its files imply: an empty directory
    the layer's facts do not know would come along and change the archive,
    which a cached build (linking file by file, :func:`merge_layer`) would
    not have. A directory's link count says how many subdirectories it has,
    so that check costs one ``lstat`` per directory. Files and symlinks keep
    their inodes and mtimes, so what was placed is known from the facts.
    The clash rule is :func:`merge_layer`'s: a file already there with other
    bytes (or a directory of the layer where ``dest`` has a file) is a clash,
    and nothing is overwritten.
    """
    src, top = os.fspath(tree), os.fspath(dest)
    dev = os.stat(top).st_dev
    dirs = {""}
    for rel in facts.files:
        d = rel.rpartition("/")[0]
        while d not in dirs:
            dirs.add(d)
            d = d.rpartition("/")[0]
    files: dict[str, list[str]] = {d: [] for d in dirs}
    subdirs: dict[str, list[str]] = {d: [] for d in dirs}
    for d in sorted(dirs - {""}):
        up, _, name = d.rpartition("/")
        subdirs[up].append(name)
    for rel in facts.files:
        files[rel.rpartition("/")[0]].append(rel)
    clashes: list[str] = []
    placed: dict[str, layers.Signature] = {}

    def below(d: str) -> Iterable[str]:
        yield from files[d]
        for name in subdirs[d]:
            yield from below(f"{d}/{name}" if d else name)

    def exact(d: str) -> bool:
        st = os.lstat(os.path.join(src, d))
        return st.st_nlink == 2 + len(subdirs[d]) and all(exact(f"{d}/{name}") for name in subdirs[d])

    def merge(d: str) -> None:
        for rel in files[d]:
            f = facts.files[rel]
            target = os.path.join(top, rel)
            try:
                there = os.lstat(target)
            except FileNotFoundError:
                os.rename(os.path.join(src, rel), target)
                placed[rel] = (dev, f.ino, f.size, f.mtime_ns)
                continue
            if not _same(f, target, there):
                clashes.append(rel)
        for name in subdirs[d]:
            sub = f"{d}/{name}" if d else name
            target = os.path.join(top, sub)
            if not os.path.lexists(target):
                if exact(sub):
                    os.rename(os.path.join(src, sub), target)
                    placed.update((rel, (dev, facts.files[rel].ino, facts.files[rel].size, facts.files[rel].mtime_ns))
                                  for rel in below(sub))
                    continue
                os.mkdir(target)
            elif not os.path.isdir(target):
                clashes.append(sub)
                continue
            merge(sub)

    merge("")
    return sorted(clashes), placed


def merge_layer(layer: layers.Layer, dest: Path, taken: Collection[str] | None = None) -> tuple[list[str], dict[str, layers.Signature]]:
    """Link a cache entry's files (just checked against its facts) into ``dest``: driven by the facts, no walk.

    Returns the clashes and the signature of every file placed (a hard link has
    the entry file's inode, size and mtime, so it costs no ``lstat``).

    ``taken`` is given when ``dest`` is the last build's tree (:mod:`shipenv.build.warm`):
    the paths this build placed so far. A file of the layer that is already
    there as the entry's own file (its inode) is placed with one ``lstat``;
    anything else of the last build in the way is removed; only what
    ``taken`` holds can clash, as in an empty tree.
    """
    assert layer.entry is not None
    src, top = os.path.join(layer.entry, "tree"), os.fspath(dest)
    dev = os.stat(top).st_dev
    clashes: list[str] = []
    placed: dict[str, layers.Signature] = {}
    made: set[str] = {""}
    for rel, f in layer.facts.files.items():
        parent = rel.rpartition("/")[0]
        if parent not in made:
            try:
                if taken is not None and not _clear_way(top, parent, taken, made):
                    raise FileExistsError(parent)
                os.makedirs(os.path.join(top, parent), exist_ok=True)
            except (FileExistsError, NotADirectoryError):  # a file of the tree where the layer has a directory
                clashes.append(rel)
                continue
            made.add(parent)
        target, full = os.path.join(top, rel), os.path.join(src, rel)
        if taken is not None and f.symlink is None and rel not in taken:  # most of the last build's files are this layer's: one lstat
            try:
                there, own = os.lstat(target), (dev, f.ino, f.size, f.mtime_ns)
                if layers.signature(there) == own and stat.S_ISREG(there.st_mode):
                    placed[rel] = own
                    continue
            except FileNotFoundError:
                pass
        try:
            placed[rel] = _place(f, full, target, dev)
        except FileExistsError:
            there = os.lstat(target)
            if taken is not None and rel not in taken:  # the last build's, and not this layer's file
                if f.symlink is not None and stat.S_ISLNK(there.st_mode) and os.readlink(target) == f.symlink:
                    placed[rel] = layers.signature(there)
                    continue
                if stat.S_ISDIR(there.st_mode):
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
                placed[rel] = _place(f, full, target, dev)
                continue
            if not _same(f, target, there):
                clashes.append(rel)
        except OSError:  # another file system: a copy, with its own inode
            shutil.copy2(full, target)
            placed[rel] = layers.signature(os.lstat(target))
    return sorted(clashes), placed


def _same(f: layers.FileFacts, target: str, there: os.stat_result) -> bool:
    """Whether what is at ``target`` already is the layer's file (the same symlink, or a file with the same bytes): else a clash."""
    if f.symlink is not None or stat.S_ISLNK(there.st_mode):
        return f.symlink is not None and stat.S_ISLNK(there.st_mode) and os.readlink(target) == f.symlink
    return f.sha256 == file_digest(Path(target))


def _place(f: layers.FileFacts, full: str, target: str, dev: int) -> layers.Signature:
    """Link the entry's file (or make its symlink) at ``target``; its signature (a hard link's is the entry file's: no ``lstat``)."""
    if f.symlink is not None:
        os.symlink(f.symlink, target)
        return layers.signature(os.lstat(target))
    os.link(full, target)
    return (dev, f.ino, f.size, f.mtime_ns)


def _clear_way(top: str, parent: str, taken: Collection[str], made: Collection[str]) -> bool:
    """Make ``parent`` (relative to ``top``) a directory that can be made: remove the last build's file or symlink where one is wanted.

    False when what is in the way is this build's own (a clash, as in an empty tree).
    """
    d = ""
    for part in parent.split("/"):
        d = f"{d}/{part}" if d else part
        if d in made:  # a directory this merge made or checked already
            continue
        path = os.path.join(top, d)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        if stat.S_ISDIR(st.st_mode):
            continue
        if d in taken:
            return False
        os.unlink(path)
        return True
    return True
