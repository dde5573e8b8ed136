"""The last build's merged tree, kept in the cache, so that a rebuild links only what changed.

A build with a cache merges its layers into a tree of hard links to the
cache entries (:func:`shipenv.build.placing.merge_layer`): 12,000 links for the
reference stack of the benchmark, and as many unlinks when the staging
directory is removed after packing. Making and removing those inodes was
about half of a rebuild with one requirement added. So a build that
succeeds does not remove its tree: it renames it into the cache,
``trees/XX/KEY`` (KEY is the interpreter layer's key), and the next build on
the same interpreter renames it into its staging directory (:func:`take`)
instead of starting from an empty one. Merging a layer into it then costs an
``lstat`` for each file that is already there as the layer's own file (the
inode, size and mtime of the cache entry's facts); anything else in the way
is removed first. After the last layer, everything that no layer of this
build placed is removed (:func:`sweep`): the rest of the last build (its
launchers, its ``.shipenv/``, the layers it had and this one has not) and
every directory that no placed file is below. The tree is then the one an
empty start gives, and so is the archive: directories hold only what their
files imply, as :func:`~shipenv.build.placing.merge_layer` makes them.

Until the wheels are merged, the interpreter runs in this tree (the scheme
probe, pip, the byte-compiler), and fresh wheels are relocated against its
``lib/``. So right after the interpreter layer is merged the tree is swept
down to that layer's files, except ``site-packages``, which was put aside
when the tree was taken (one rename): pip and the byte-compiler see what a
fresh tree holds. It is put back (:func:`restore_site`) just before the
first wheel layer is merged.

The kept tree's slot also notes which layers it holds (``layers.json`` in
the interpreter's cache entry): :func:`prefetch` has their entries checked
while the requirements resolve (on the build's early thread,
``pipeline._start_early``), instead of after, when the build waits for them. A list
that no longer matches the build only costs checks.

Trust: the tree sits in the user's cache beside the entries it links to, and
is treated as they are. Nothing in it is used unless ``lstat`` shows it is
the entry's own file, which the entry's check (:meth:`BuildCache.get_layer`)
vouched for; a symlink or file where a directory is wanted is removed, never
followed. A tree is taken with one rename, so two builds never share one:
the second starts empty. ``shipenv cache prune`` removes the kept trees
whenever it removes anything (they hold links to the entries it removes).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from shipenv.build import cachedir, layers, output
from shipenv.build.cache import BuildCache, mark_used
from shipenv.errors import ShipenvError

log = logging.getLogger(__name__)

KIND = cachedir.TREES  #: the cache's directory of kept trees
ASIDE = ".shipenv-warm-site-packages"  #: where the last build's site-packages waits, in the taken tree
HELD = "layers.json"  #: in the interpreter's entry: the cache entries of the layers its kept tree holds
_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Warm:
    """A tree taken from the cache, being turned into this build's."""

    root: Path
    site: str  #: site-packages, relative to the root


def slot(store: BuildCache, interpreter_key: str) -> Path:
    return store.path(KIND, interpreter_key)


def take(store: BuildCache, interpreter_key: str, root: Path, site: str) -> Warm | None:
    """Rename the kept tree of this interpreter into ``root`` (an empty directory), its site-packages put aside; None if there is none."""
    try:
        os.rename(slot(store, interpreter_key), root)
    except OSError:  # none kept (a first build), another build took it, or another file system
        return None
    try:
        os.rename(root / site, root / ASIDE)
    except FileNotFoundError:
        pass
    except OSError as exc:  # not as a build leaves it: start empty
        log.warning("cache: not reusing the kept tree (%s)", exc)
        output.remove_tree(root)
        root.mkdir()
        return None
    log.debug("cache: reusing the last build's tree")
    return Warm(root, site)


def restore_site(warm: Warm) -> None:
    """Put the last build's site-packages back, around what this build placed there meanwhile (the interpreter's own files)."""
    aside, site = warm.root / ASIDE, warm.root / warm.site
    try:
        os.rename(aside, site)  # nothing there yet (or an empty directory): one rename
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    for name in os.listdir(aside):
        if not os.path.lexists(site / name):
            os.rename(aside / name, site / name)
    # what is left in the aside directory is swept


def sweep(root: Path, placed: Collection[str], spare: Collection[str] = ()) -> None:
    """Remove every file and symlink of ``root`` not in ``placed``, and every directory no placed path is below; ``spare`` top-level names are left alone."""
    needed = {""}
    for rel in placed:
        d = rel.rpartition("/")[0]
        while d not in needed:
            needed.add(d)
            d = d.rpartition("/")[0]
    files: list[str] = []
    dirs: list[str] = []

    def walk(path: str, rel_dir: str) -> None:
        with os.scandir(path) as it:
            for e in it:
                rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                if not rel_dir and e.name in spare:
                    continue
                if not e.is_dir(follow_symlinks=False):
                    if rel not in placed:
                        files.append(e.path)
                elif rel in needed:
                    walk(e.path, rel)
                else:
                    dirs.append(e.path)

    walk(os.fspath(root), "")
    for path in files:
        os.unlink(path)
    for path in dirs:
        output.remove_tree(Path(path))
        if os.path.lexists(path):
            raise ShipenvError(f"Cannot remove {path}, left by the last build in the tree this build reuses.",
                               hint="Remove it yourself (or build with --no-cache), then build again.")


def prefetch(store: BuildCache, interpreter_key: str) -> None:
    """Have the interpreter's entry and those of the layers its kept tree holds checked on threads (see the module docstring)."""
    wanted = [("interpreter", interpreter_key)]
    try:
        held = json.loads((store.path("interpreter", interpreter_key) / HELD).read_text())
        wanted += [(kind, k) for kind, k in held if kind == "wheel" and isinstance(k, str) and _KEY.fullmatch(k)]
    except (OSError, ValueError, TypeError):  # none noted (a first build), or not what keep wrote
        pass
    store.prefetch(wanted)


def keep(store: BuildCache, interpreter_key: str, root: Path, held: Sequence[layers.Layer] = ()) -> None:
    """Keep a finished build's tree for the next build on this interpreter (when its layer is in the cache); else leave it to be removed.

    ``held`` are the layers merged into it: their entries are noted for :func:`prefetch`.
    """
    if not store.has("interpreter", interpreter_key):
        return
    target = slot(store, interpreter_key)
    if os.path.lexists(target):  # another build kept one meanwhile: this one goes with its staging directory
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(root, target)  # and fails if one came since (unless it is empty, which no build's tree is)
    except OSError as exc:
        log.debug("cache: not keeping the tree (%s)", exc)
        return
    mark_used(target)
    entries = [[layer.entry.parent.parent.name, layer.entry.name] for layer in held if layer.entry is not None]
    note = store.path("interpreter", interpreter_key) / HELD
    try:
        tmp = note.with_name(f".{HELD}.{os.getpid()}")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, note)
    except OSError as exc:  # only the next build's head start is lost
        log.debug("cache: not noting the kept tree's layers (%s)", exc)
