"""A content-addressed cache of build layers, so rebuilds redo only what changed.

Two kinds of layers are kept, each a directory tree in the bundle's own layout:

* ``interpreter``: the copied, relocated, byte-compiled base interpreter and
  its launchers. Keyed by the interpreter's executable digest, a fingerprint
  of its stdlib, the options that change the copy, and shipenv's version.
* ``wheel``: what one wheel installs, relocated and byte-compiled (launchers
  and vendored libraries included). Keyed by the wheel's sha256, the
  interpreter layer's key, and the same options.

An entry is written into a temporary directory and renamed into place, with a
``RECORD`` of every file's digest; it is checked against that ``RECORD`` when
used, and an entry that does not match is deleted and rebuilt, never used.
Host libraries an entry vendored are listed with their size and mtime: a host
upgrade (``apt-get upgrade``) invalidates the entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipenv import __version__
from shipenv.bundle import manifest

log = logging.getLogger(__name__)

_ENTRY_FORMAT = 1


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shipenv"


def key(*parts: Any) -> str:
    """A stable digest of JSON-able parts, and of shipenv's own code.

    The code's fingerprint (file names, sizes, mtimes) keeps a development
    checkout from reusing layers that an older version of the code made.
    """
    text = json.dumps([_ENTRY_FORMAT, __version__, _code_fingerprint(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _code_fingerprint() -> str:
    digest = hashlib.sha256()
    package = Path(__file__).parents[1]  # all of shipenv, not only the build side
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
            st = path.stat()
            digest.update(f"{path.relative_to(package)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    return manifest.hash_file(path)[0]


def tree_fingerprint(root: Path) -> str:
    """Digest of every file's path, size and mtime under ``root`` (cheap: no reads)."""
    digest = hashlib.sha256()
    for rel, full in manifest.walk(root):
        try:
            st = full.lstat()
        except OSError:
            continue
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def host_files_state(paths: Iterable[Path]) -> list[list[Any]]:
    state = []
    for p in sorted(set(paths)):
        try:
            st = p.stat()
            state.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            state.append([str(p), None, None])
    return state


@dataclass(frozen=True)
class BuildCache:
    root: Path

    def _entry(self, kind: str, entry_key: str) -> Path:
        return self.root / kind / entry_key[:2] / entry_key

    def get(self, kind: str, entry_key: str) -> Path | None:
        """The entry's tree if present and intact; a damaged entry is removed."""
        entry = self._entry(kind, entry_key)
        tree = entry / "tree"
        if not tree.is_dir():
            return None
        try:
            meta = json.loads((entry / "entry.json").read_text())
            if host_files_state(Path(p) for p, _s, _m in meta.get("host_files", [])) != meta.get("host_files", []):
                log.info("cache: %s %s is stale (a host library changed); rebuilding", kind, entry_key[:12])
                self._drop(entry)
                return None
            expected = manifest.parse_record((entry / "RECORD").read_bytes())
            actual = {e.path: e for e in manifest.scan(tree)}
            expected.pop(manifest.RECORD.as_posix(), None)
            if expected != actual:
                raise ValueError("contents differ from RECORD")
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cache: dropping damaged entry %s/%s (%s)", kind, entry_key[:12], exc)
            self._drop(entry)
            return None
        log.debug("cache: hit %s %s", kind, entry_key[:12])
        return tree

    def put(self, kind: str, entry_key: str, tree: Path, *, host_files: Iterable[Path] = ()) -> None:
        """Store a copy of ``tree``; failures (a full disk) only cost the cache."""
        entry = self._entry(kind, entry_key)
        if entry.exists():
            return
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{entry_key[:12]}.", dir=entry.parent))
            try:
                shutil.copytree(tree, tmp / "tree", symlinks=True, copy_function=link_or_copy)
                (tmp / "RECORD").write_bytes(manifest.render_record(manifest.scan(tmp / "tree")))
                meta = {"kind": kind, "shipenv": __version__, "host_files": host_files_state(host_files)}
                (tmp / "entry.json").write_text(json.dumps(meta, indent=1))
                os.replace(tmp, entry)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            log.warning("cache: could not store %s entry (%s); continuing without it", kind, exc)

    def _drop(self, entry: Path) -> None:
        shutil.rmtree(entry, ignore_errors=True)


def open_cache(cache_dir: Path | None, enabled: bool) -> BuildCache | None:
    if not enabled:
        return None
    root = cache_dir or default_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cache: %s is not usable (%s); building without a cache", root, exc)
        return None
    return BuildCache(root)


def link_or_copy(src: str, dest: str) -> None:
    """Hard-link where possible: cache entries are never modified in place (and are
    verified before use), and the tree's files are only ever replaced, never edited."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def merge_tree(src: Path, dest: Path, *, move: bool = False) -> list[str]:
    """Put every file of ``src`` into ``dest`` (linked, copied, or moved when ``move``);
    return the paths that already existed there with other content."""
    clashes = []
    for rel, full in manifest.walk(src):
        target = dest / rel
        if target.exists() or target.is_symlink():
            if full.is_symlink() or target.is_symlink():
                if not (full.is_symlink() and target.is_symlink() and os.readlink(full) == os.readlink(target)):
                    clashes.append(rel)
            elif file_digest(full) != file_digest(target):
                clashes.append(rel)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if full.is_symlink():
            target.symlink_to(os.readlink(full))
        elif move:
            os.replace(full, target)
        else:
            link_or_copy(str(full), str(target))
    return clashes
