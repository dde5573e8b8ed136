"""A content-addressed cache of build layers, so rebuilds redo only what changed.

Two kinds of layers are kept, each a directory tree in the bundle's own layout:

* ``interpreter``: the copied, relocated, byte-compiled base interpreter and
  its launchers. Keyed by the interpreter's executable digest, a fingerprint
  of its stdlib, the options that change the copy, and shipenv's version and
  the bytes of its code, templates and launchers (a fresh clone still hits).
* ``wheel``: what one wheel installs, relocated and byte-compiled (launchers
  and vendored libraries included). Keyed by the wheel's sha256, the
  interpreter layer's key, and the same options.

An entry is written into a temporary directory and renamed into place, with
the facts of its files (``facts.json``, :mod:`shipenv.build.layers`: every
file's digest, mode, ELF facts and audit findings, and its inode, size and
mtime). Before an entry is used its tree is checked against those facts
without reading a byte of content (a file added, missing, replaced or edited
in place changes what ``lstat`` says); an entry that does not match is deleted
and rebuilt, never used. The checks of the entries a build will likely use
(the last build's, :func:`shipenv.build.warm.prefetch`) can run early, on
threads, while uv resolves: :meth:`BuildCache.prefetch`.
Host libraries an entry vendored are listed with their size and mtime: a host
upgrade (``apt-get upgrade``) invalidates the entry.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shipenv import __version__
from shipenv.build import layers
from shipenv.bundle import manifest

log = logging.getLogger(__name__)

_ENTRY_FORMAT = 2


def default_dir() -> Path:
    """``$SHIPENV_CACHE_DIR``, else ``$XDG_CACHE_HOME/shipenv``, else ``~/.cache/shipenv`` (as uv's and pip's own variables)."""
    own = os.environ.get("SHIPENV_CACHE_DIR")
    if own:
        return Path(own)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shipenv"


def key(*parts: Any) -> str:
    """A stable digest of JSON-able parts, of shipenv's own code and of the libraries it runs with.

    The code's fingerprint (its files' names and bytes) keeps a development
    checkout from reusing layers that an older version of the code made, while
    a fresh clone or a reinstall of the same code (new mtimes, new paths) still
    finds them; the
    libraries' versions (installer writes the layers' files, lief and
    pyelftools rewrite and read their ELF files, zstandard and zlib-ng
    compress their fragments) keep an upgrade of one of them from doing so.
    """
    text = json.dumps([_ENTRY_FORMAT, __version__, _code_fingerprint(), _libraries(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _libraries() -> tuple[str, ...]:
    """The distributions importable by shipenv (their ``.dist-info`` names carry their versions)."""
    names: set[str] = set()
    for entry in sys.path:
        try:
            names.update(n for n in os.listdir(entry or ".") if n.endswith(".dist-info"))
        except OSError:
            continue
    return tuple(sorted(names))


@functools.cache
def _code_fingerprint() -> str:
    package = Path(__file__).parents[1]  # all of shipenv, not only the build side
    return content_fingerprint(package, suffixes=(".py", ".json"))


def file_digest(path: Path) -> str:
    return manifest.hash_file(path)[0]


def content_fingerprint(root: Path, suffixes: tuple[str, ...] = ()) -> str:
    """Digest of every file's path, executable bit and bytes under ``root`` (``__pycache__`` left out).

    For shipenv's own files (its code, templates and launchers, about 1 MB):
    every copy of the same files gives the same digest, wherever and whenever
    it was made. A fingerprint of mtimes would change with every clone and
    every reinstall, and each change costs a whole new set of layers (a CI
    machine's cache grew by gigabytes per run that way). ``suffixes``, when
    given, limits it to the files whose names end so.
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if suffixes and not name.endswith(suffixes):
                continue
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            body = os.readlink(path).encode() if stat.S_ISLNK(st.st_mode) else Path(path).read_bytes()
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            digest.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{bool(st.st_mode & 0o111)}\0{len(body)}\n".encode())
            digest.update(body)
    return digest.hexdigest()


def tree_fingerprint(root: Path, skip: tuple[str, ...] = ()) -> str:
    """Digest of every file's path, size and mtime under ``root`` (cheap: no reads).

    The top-level directories named in ``skip`` are left out (the base
    interpreter's ``site-packages``, tens of thousands of files, is never copied),
    and so is every ``__pycache__``: no layer copies one (the interpreter's is
    compiled afresh), and any program run with the base interpreter writes
    there, which would have made every such run cost the next build its layers.
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and (rel_dir != "." or d not in skip))
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
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


def hosts_changed(recorded: list[list[Any]]) -> bool:
    """Whether any host file :func:`host_files_state` recorded is no longer as it was (an entry made from it is stale)."""
    return host_files_state(Path(p) for p, _s, _m in recorded) != recorded


def recorded_host_files(entry: Path) -> list[Path]:
    """The host files a layer entry was made from (its ``entry.json``), as :meth:`BuildCache.put` recorded them."""
    meta = json.loads((entry / "entry.json").read_text())
    return [Path(p) for p, _s, _m in meta.get("host_files", [])]


def _signature(path: Path) -> list[int]:
    """What a stored output file must still say to ``stat``: ``st_ctime`` changes with any write, chmod or utime."""
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


class BuildCache:
    """The cache at ``root``, for one build: its entries, and those being checked ahead of use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: entries being checked ahead of use (:meth:`prefetch`), each taken once by :meth:`get_layer`
        self._early: dict[tuple[str, str], Future[layers.Layer | None]] = {}

    def __repr__(self) -> str:
        return f"BuildCache({self.root!r})"

    def path(self, kind: str, entry_key: str) -> Path:
        """Where an entry of ``kind`` lives (``KIND/XX/KEY``, the layout ``shipenv cache`` reads), whether or not it is there."""
        return self.root / kind / entry_key[:2] / entry_key

    def has(self, kind: str, entry_key: str) -> bool:
        """Whether an entry is there (unchecked: for what only needs to know it will be looked at)."""
        return self.path(kind, entry_key).is_dir()

    def get(self, kind: str, entry_key: str) -> Path | None:
        """The entry's tree if present and intact; a damaged entry is removed."""
        hit = self.get_layer(kind, entry_key)
        return hit.entry / "tree" if hit is not None and hit.entry is not None else None

    def prefetch(self, wanted: Iterable[tuple[str, str]]) -> None:
        """Check these ``(kind, key)`` entries now, on threads, for :meth:`get_layer` to take.

        For while the build waits on something else (uv): each check is what
        :meth:`get_layer` does (parsing the facts, an ``lstat`` per file), and a
        damaged entry is removed as it would be. One that is never asked for
        only cost the check; one asked for before its check started is checked
        by the caller too. Call it from one thread at a time.
        """
        todo = [w for w in dict.fromkeys(wanted) if w not in self._early]
        if not todo:
            return
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shipenv-prefetch")
        for kind, entry_key in todo:
            self._early[kind, entry_key] = pool.submit(self._check, kind, entry_key)
        pool.shutdown(wait=False)  # its threads end once the checks are done

    def get_layer(self, kind: str, entry_key: str) -> layers.Layer | None:
        """The entry as a layer (its facts, its directory) if present and intact; a damaged entry is removed."""
        early = self._early.pop((kind, entry_key), None)
        if early is not None:
            return early.result()
        return self._check(kind, entry_key)

    def _check(self, kind: str, entry_key: str) -> layers.Layer | None:
        entry = self.path(kind, entry_key)
        tree = entry / "tree"
        if not tree.is_dir():
            return None
        try:
            meta = json.loads((entry / "entry.json").read_text())
            if hosts_changed(meta.get("host_files", [])):
                log.info("cache: %s %s is stale (a host library changed); rebuilding", kind, entry_key[:12])
                self._drop(entry)
                return None
            facts = layers.LayerFacts.parse((entry / "facts.json").read_bytes())
            why = layers.check(tree, facts)
            if why is not None:
                raise ValueError(f"contents differ from its facts: {why}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cache: dropping damaged entry %s/%s (%s)", kind, entry_key[:12], exc)
            self._drop(entry)
            return None
        mark_used(entry)
        log.debug("cache: hit %s %s", kind, entry_key[:12])
        return layers.Layer(f"{kind} {entry_key[:12]}", facts, entry)

    def put(self, kind: str, entry_key: str, tree: Path, *, host_files: Iterable[Path] = (),
            facts: layers.LayerFacts | None = None, move: bool = False) -> Path | None:
        """Store ``tree`` with its facts (computed here when not given); return the entry.

        With ``move`` (a fresh layer's stage, and its ``facts``) the tree itself
        becomes the entry's tree: one rename, no directory made again, and the
        files keep the inodes and mtimes its facts hold. ``tree`` is then gone,
        unless the cache is on another file system: then, as without ``move``,
        a copy is stored (hard links where it can) and ``tree`` stays.
        Failures (a full disk) only cost the cache: None is returned, and ``tree`` is where it was.
        """
        entry = self.path(kind, entry_key)
        if entry.exists():
            return None
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{entry_key[:12]}.", dir=entry.parent))
            moved = False
            try:
                meta = {"kind": kind, "shipenv": __version__, "host_files": host_files_state(host_files)}
                (tmp / "entry.json").write_text(json.dumps(meta, indent=1))
                if move and facts is not None:
                    (tmp / "facts.json").write_bytes(facts.to_json())  # a rename keeps every inode and mtime
                    try:
                        os.rename(tree, tmp / "tree")
                        moved = True
                    except OSError as exc:
                        if exc.errno != errno.EXDEV:
                            raise
                if not moved:
                    shutil.copytree(tree, tmp / "tree", symlinks=True, copy_function=link_or_copy)
                    stored = layers.rebased(facts if facts is not None else layers.compute(tree, ()), tmp / "tree")
                    (tmp / "facts.json").write_bytes(stored.to_json())
                try:
                    os.replace(tmp, entry)
                except OSError:
                    if moved:  # the stage goes back where the build expects it
                        os.rename(tmp / "tree", tree)
                    raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            log.warning("cache: could not store %s entry (%s); continuing without it", kind, exc)
            return None
        return entry

    def get_output(self, entry_key: str) -> tuple[Path, Any] | None:
        """A stored build output (its directory, and what :meth:`put_output` was given as ``about``) if still as stored.

        Every copied file must be the one stored (size, inode, mtime and ctime:
        copies nothing else links to, so a write, ``chmod`` or ``touch``
        shows), every linked one must still have its size and sha256 (read
        here: 60 ms for 100 MB), and every host file it was made from must be
        unchanged. One that is not is removed, and the build runs in full.
        """
        entry = self.path("outputs", entry_key)
        try:
            meta = json.loads((entry / "output.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cache: dropping damaged output %s (%s)", entry_key[:12], exc)
            self._drop(entry)
            return None
        try:
            if hosts_changed(meta["host_files"]):
                log.info("cache: output %s is stale (a host file changed); building in full", entry_key[:12])
                self._drop(entry)
                return None
            for name, signature in meta["files"].items():
                if _signature(entry / name) != signature:
                    raise ValueError(f"{name} changed since it was stored")
            for name, (size, sha256) in meta.get("linked", {}).items():
                if (entry / name).stat().st_size != size or manifest.hash_file(entry / name)[0] != sha256:
                    raise ValueError(f"{name} changed since it was stored")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cache: dropping damaged output %s (%s)", entry_key[:12], exc)
            self._drop(entry)
            return None
        mark_used(entry)  # the directory, not the files: their ctime is what the next hit checks
        log.debug("cache: hit output %s", entry_key[:12])
        return entry, meta["about"]

    def put_output(self, entry_key: str, files: dict[str, Path], about: Any, host_files: Iterable[Path],
                   linked: Mapping[str, str] | None = None) -> None:
        """Keep a build's ``files`` (name in the entry → file) with ``about`` (JSON-able) and the state of ``host_files``.

        Copies, except the files named in ``linked`` (name → their sha256),
        which are hard links where the file system allows: the archive, which
        a copy wrote a second time (100 MB, a tenth of a rebuild). The artifact
        a user holds may be edited or replaced; the copies' ctime shows an
        edit, but a link's ctime also changes when the artifact is removed,
        so a linked file is checked by its sha256 instead (:meth:`get_output`):
        an edit of the artifact drops the entry, a removal leaves it as it was.
        Failures (a full disk) only cost the cache.
        """
        entry = self.path("outputs", entry_key)
        if entry.exists():
            return
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{entry_key[:12]}.", dir=entry.parent))
            try:
                linked = linked or {}
                for name, src in files.items():
                    if name in linked:
                        link_or_copy(os.fspath(src), os.fspath(tmp / name))
                    else:
                        shutil.copyfile(src, tmp / name)  # sendfile: the bytes never come up to Python
                meta = {"shipenv": __version__, "about": about, "host_files": host_files_state(host_files),
                        "files": {name: _signature(tmp / name) for name in files if name not in linked},
                        "linked": {name: [(tmp / name).stat().st_size, sha256] for name, sha256 in linked.items()}}
                (tmp / "output.json").write_text(json.dumps(meta, indent=1))
                os.replace(tmp, entry)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            log.warning("cache: could not store the build's output (%s); continuing without it", exc)

    def drop_output(self, entry_key: str) -> None:
        self._drop(self.path("outputs", entry_key))

    def remember(self, kind: str, parts: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` (JSON-able), kept under a key of ``parts``: for answers that cost a process to get.

        ``parts`` must hold everything the answer depends on (for the package
        manager's answer: the files asked about and its database, as
        :func:`host_files_state` gives them).
        """
        entry = self.root / kind / f"{key(kind, parts)}.json"
        try:
            found = json.loads(entry.read_text())
            mark_used(entry)
            return found
        except (OSError, ValueError):
            pass
        found = compute()
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
            tmp.write_text(json.dumps(found))
            os.replace(tmp, entry)
        except OSError as exc:
            log.warning("cache: could not keep %s (%s)", kind, exc)
        return found

    def _drop(self, entry: Path) -> None:
        shutil.rmtree(entry, ignore_errors=True)


def mark_used(entry: Path) -> None:
    """Note that a build used ``entry`` now: ``shipenv cache prune`` removes the least recently used first."""
    try:
        os.utime(entry)
    except OSError:
        pass  # a read-only cache is still a cache


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
