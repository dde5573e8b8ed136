"""``shipenv cache``: what the build cache holds, and pruning it to a size or an age.

The build cache (:mod:`shipenv.build.cache`) only grows: a new wheel version
makes a new wheel layer, and every change of the interpreter, the templates or
shipenv itself makes a new interpreter layer and new wheel layers on top of it
(one machine's cache reached 35 GB in a few weeks of development). ``shipenv
cache prune --max-size 10G`` removes the least recently used entries until the
rest fit; ``--older-than DAYS`` removes every entry no build used for that long.
Nothing a later build needs is lost: a removed entry is rebuilt when asked for.

What an entry is, from the layout alone (so kinds added later are pruned too):

- a directory below a two-character fan-out directory, ``KIND/XX/KEY/`` (a
  layer: its tree, facts and fragments);
- a file directly in a kind's directory, ``KIND/KEY.json`` (a remembered
  answer, such as dpkg's origins of the vendored libraries);
- any other directory directly in a kind's directory: pip's own copy,
  ``pip/VERSION``, and a project's wheels in the wheel store, ``wheels/NAME/``.

The last build's tree kept for the next (``trees/XX/KEY/``, :mod:`shipenv.build.warm`)
is an entry too, but holds hard links to the layers' files: it is counted
after every other entry (so only its directories count as its own), and
removed whenever a prune removes anything, since it would keep the files of
the entries removed on disk. The next build merely links its layers again.

Each entry is kept or removed whole. Its last use is its mtime: a build
touches a layer entry, a remembered answer and a project's directory in the
wheel store whenever it uses them (atime would not do: this module's own walk
sets it). Temporary entries a running build is writing (names starting with
``.``) are left alone unless a day old.

Size is what the entry takes on disk (allocated blocks), each inode counted
once. An entry is renamed out of its place before it is deleted, so a build
running meanwhile sees it whole or not at all; a build that already merged a
layer holds hard links to its files and keeps them.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shipenv.errors import ShipenvError, UsageError

_FANOUT = re.compile(r"[0-9a-f]{2}")
TREES = "trees"  #: the kept trees' directory (:mod:`shipenv.build.warm`), which a prune treats apart
_TEMP_AGE = 86400.0  # seconds after which a leftover temporary entry is fair game
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?))?b?", re.IGNORECASE)


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str  #: the top-level directory it is in ("wheel", "interpreter", "wheels", ...)
    size: int  #: bytes on disk, inodes counted once
    used: float  #: last use, seconds since the epoch


@dataclass(frozen=True)
class Usage:
    root: Path
    entries: tuple[Entry, ...]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def by_kind(self) -> dict[str, tuple[int, int]]:
        """kind → (entries, bytes), largest first."""
        kinds: dict[str, tuple[int, int]] = {}
        for e in self.entries:
            count, size = kinds.get(e.kind, (0, 0))
            kinds[e.kind] = (count + 1, size + e.size)
        return dict(sorted(kinds.items(), key=lambda kv: -kv[1][1]))


@dataclass(frozen=True)
class Pruned:
    root: Path
    removed: tuple[Entry, ...]
    left: int  #: bytes the cache still holds
    dry_run: bool

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.removed)


def parse_size(text: str) -> int:
    """Bytes: ``2048``, ``500M``, ``10GB``, ``1.5G`` (powers of 1000, as shipenv prints sizes), ``4GiB`` (of 1024).

    >>> parse_size("1.5G"), parse_size("1GiB")
    (1500000000, 1073741824)
    """
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"--max-size {text!r} is not a size.", hint="Give a number with an optional unit: 500M, 10G, 4GiB.")
    unit, binary = (m.group(2) or "").lower(), bool(m.group(3))
    return int(float(m.group(1)) * (1024 if binary else 1000) ** _POWERS[unit])


def usage(root: Path) -> Usage:
    """Every entry of the cache at ``root``, each with its size and last use."""
    if not root.is_dir():
        raise UsageError(f"There is no build cache at {root}.", hint="Give the --cache-dir your builds use.")
    seen: set[tuple[int, int]] = set()
    now = time.time()
    found = []
    try:
        for kind, path in _entries(root):
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue  # removed meanwhile
            if path.name.startswith(".") and now - st.st_mtime < _TEMP_AGE:
                continue
            found.append(Entry(path, kind, _size(path, st, seen), st.st_mtime))
    except OSError as exc:
        raise ShipenvError(f"Cannot read the build cache at {root} ({exc.strerror or exc}).",
                           hint="Run as the user whose builds use it.") from None
    return Usage(root, tuple(sorted(found, key=lambda e: e.used)))


def prune(root: Path, *, max_size: int | None = None, older_than: float | None = None, dry_run: bool = False) -> Pruned:
    """Remove the least recently used entries until at most ``max_size`` bytes are left,
    and every entry unused for ``older_than`` days."""
    if max_size is None and older_than is None:
        raise UsageError("Say what to keep: --max-size SIZE, --older-than DAYS, or both.",
                         hint="For example: shipenv cache --prune --max-size 10G")
    if older_than is not None and older_than < 0:
        raise UsageError(f"--older-than {older_than:g} is negative.", hint="Give a number of days, 0 or more.")
    held = usage(root)
    total = held.size
    cutoff = time.time() - older_than * 86400 if older_than is not None else None
    removed = []
    trees = [e for e in held.entries if e.kind == TREES]
    for entry in held.entries:  # oldest use first
        too_old = cutoff is not None and entry.used < cutoff
        too_big = max_size is not None and total > max_size
        if entry.kind == TREES or not (too_old or too_big):
            continue
        if not dry_run:
            _remove(entry.path)
        removed.append(entry)
        total -= entry.size
    if removed:  # the kept trees link to what was removed
        for entry in trees:
            if not dry_run:
                _remove(entry.path)
            removed.append(entry)
            total -= entry.size
    return Pruned(root, tuple(removed), total, dry_run)


def _entries(root: Path) -> Iterator[tuple[str, Path]]:
    for kind_dir in sorted(root.iterdir(), key=lambda p: (p.name == TREES, p.name)):  # kept trees last: see the module docstring
        if not _is_dir(kind_dir):
            continue  # a lock or stray file at the top: not an entry
        kind = kind_dir.name
        for child in sorted(kind_dir.iterdir()):
            if _is_dir(child) and _FANOUT.fullmatch(child.name):
                for entry in sorted(child.iterdir()):
                    yield kind, entry
            else:
                yield kind, child


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _size(path: Path, st: os.stat_result, seen: set[tuple[int, int]]) -> int:
    def blocks(s: os.stat_result) -> int:
        ident = (s.st_dev, s.st_ino)
        if ident in seen:
            return 0
        seen.add(ident)
        return s.st_blocks * 512

    total = blocks(st)
    if not stat.S_ISDIR(st.st_mode):
        return total
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                total += blocks(os.lstat(os.path.join(dirpath, name)))
            except OSError:
                continue
    return total


def _remove(path: Path) -> None:
    """Rename the entry aside (a build then sees it whole or not at all), then delete it."""
    aside = path.with_name(f".pruned-{os.getpid()}-{path.name}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another prune, or a build dropping a damaged entry, was first
    except OSError as exc:
        raise ShipenvError(f"Cannot remove {path} from the build cache ({exc.strerror or exc}); the entries before it were removed.",
                           hint="Run as the user who owns the cache, on a disk that is not read-only.") from None
    if _is_dir(aside):
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
