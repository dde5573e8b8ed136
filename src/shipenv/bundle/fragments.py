"""Archives assembled from compressed fragments, so a rebuild copies the bytes of unchanged layers.

A ``.tar.zst`` is a sequence of zstd frames and a ``.tar.gz`` of gzip members;
both formats define such streams as the concatenation of what the frames
hold, and every reader takes them (GNU tar, bsdtar, busybox tar, ``zstd -d``,
``gzip -d``, :func:`shipenv.bundle.archive.open_stream`). :func:`write` cuts
the tar stream of :func:`shipenv.bundle.archive.plan` into fragments, each
compressed on its own, in this order:

1. the head: the top directory, ``.shipenv/``, ``manifest.json`` and
   ``RECORD`` (still the first members: ``inspect`` and ``deploy`` rely on
   it), then the rest of ``.shipenv/`` (``facts``, the SBOM, ``deploy.sh``,
   the launcher's configuration), so that directory is complete early;
2. one fragment per :class:`Fragment` the caller gives (a cache layer whose
   files are still in the tree as it made them): its files and symlinks, in
   the walk's order. Its compressed bytes are kept in the fragment's
   ``store`` (the layer's cache entry), keyed by everything that changes
   them: the format, the level, the codec library's version, and every
   member's name (so the arcname), kind, mode, clamped mtime, size and link
   target. The caller vouches for the contents;
3. everything else (launchers, the manifest's neighbours, files a later
   stage replaced), in the walk's order;
4. **every other directory**, in the walk's order, then the end-of-archive
   blocks, padded to a whole 10240-byte record.

Directories come last, after their files: every reader makes a missing
parent itself (GNU tar and busybox with the umask's mode, ``shipenv deploy``
with 0755), and the directory's own entry then sets its mode (0755) and,
for GNU tar, its mtime, which no later file changes again. (Directories
first would leave GNU tar's directory mtimes at the time of extraction: the
files of a directory are spread over several fragments.)

The bytes do not depend on whether a fragment came from the store or was
compressed now (or there is no store, ``--no-cache``): a clean build, a
fully cached one and one without a cache give the same archive. They differ
from :func:`shipenv.bundle.archive.write`'s single pass (which ``tar.xz``,
plain ``tar`` and ``oci`` layers keep, and anything packed without layers),
whose member order is the plain walk. A stored fragment is checked by its size,
inode and mtime before it is copied, as cache entries are; one that does not
match is compressed again and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard
from zlib_ng import zlib_ng

from shipenv.bundle import archive
from shipenv.bundle import codecs as _codecs
from shipenv.bundle.archive import Entry, FileSink, Packed, Progress, TarStream
from shipenv.bundle.codecs import CHUNK, Encoder
from shipenv.errors import ArchiveError

log = logging.getLogger(__name__)

FORMATS = ("tar.zst", "tar.gz")
_STORE_FORMAT = 1
_LIBRARIES = {"tar.zst": f"zstandard {zstandard.__version__} zstd {zstandard.ZSTD_VERSION}", "tar.gz": f"zlib-ng {zlib_ng.ZLIBNG_VERSION}"}


@dataclass(frozen=True)
class Fragment:
    """Files of the tree (root-relative paths) that go into a fragment of their own."""

    paths: frozenset[str]
    store: Path | None = None  #: where its compressed bytes are kept between builds


@dataclass(frozen=True)
class _Counts:
    tar: int  #: bytes of tar stream
    files: int
    bytes: int  #: of file content


class _Progress:
    """One ``progress(files, bytes)`` over all fragments."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self.files = self.bytes = self.tar = 0

    def inner(self) -> Progress | None:
        if self._progress is None:
            return None
        outer, files, done = self._progress, self.files, self.bytes
        return lambda f, b: outer(files + f, done + b)

    def add(self, counts: _Counts) -> None:
        self.files += counts.files
        self.bytes += counts.bytes
        self.tar += counts.tar
        if self._progress is not None:
            self._progress(self.files, self.bytes)


def write(
    root: Path,
    dest: Path,
    fmt: str,
    *,
    level: int | None,
    threads: int,
    mtime: int,
    arcname: str,
    fragments: Sequence[Fragment],
    progress: Progress | None = None,
) -> Packed:
    """Pack ``root`` as :func:`shipenv.bundle.archive.write` does, in fragments (see the module docstring).

    Formats other than ``tar.zst`` and ``tar.gz`` are written in one pass.
    """
    c = archive.codec(fmt, level, threads)
    if c.fmt not in FORMATS:
        return archive.write(root, dest, fmt, level=level, threads=threads, mtime=mtime, arcname=arcname, progress=progress)
    segments = split(archive.members(root, arcname, mtime), arcname, fragments)
    f = archive.create(dest)
    try:
        with f:
            sink = FileSink(f, dest)
            counter = _Progress(progress)
            *parts, (dirs, _none) = segments
            for entries, store in parts:
                if entries:
                    counter.add(_fragment(sink, c, entries, arcname, store, counter.inner()))
            _compress(sink, c, dirs, arcname, None, end=counter.tar)
        return Packed(dest, sink.sha256.hexdigest(), sink.size)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise


def split(entries: list[Entry], arcname: str, fragments: Sequence[Fragment]) -> list[tuple[list[Entry], Path | None]]:
    """The members of each fragment, in archive order: head, the given fragments, the rest, the directories."""
    first = {arcname, *(f"{arcname}/{rel}" for rel in archive.FIRST)}
    meta = f"{arcname}/{archive.FIRST[0]}/"
    head = [e for e in entries if e.name in first]
    head += [e for e in entries if e.kind != "dir" and e.name.startswith(meta) and e.name not in first]
    owner: dict[str, int] = {}
    for index, fragment in enumerate(fragments):
        for rel in fragment.paths:
            owner.setdefault(rel, index)
    parts: list[list[Entry]] = [[] for _ in fragments]
    rest: list[Entry] = []
    dirs: list[Entry] = []
    for e in entries:
        if e.name in first or (e.kind != "dir" and e.name.startswith(meta)):
            continue
        if e.kind == "dir":
            dirs.append(e)
            continue
        found = owner.get(archive.relative(e, arcname))
        (rest if found is None else parts[found]).append(e)
    return [(head, None), *((part, fragment.store) for part, fragment in zip(parts, fragments)), (rest, None), (dirs, None)]


def _fragment(sink: FileSink, c: archive.Codec, entries: list[Entry], arcname: str, store: Path | None, progress: Progress | None) -> _Counts:
    """One fragment: copied from ``store`` when it holds it, else compressed (and kept there)."""
    if store is None:
        return _compress(sink, c, entries, arcname, progress)
    name = _key(c, entries)
    stored = _load(store, name)
    if stored is not None:
        path, counts = stored
        _copy(path, sink)
        return counts
    try:
        store.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(dir=store, prefix=f".{name[:12]}.", delete=False)
    except OSError as exc:
        log.warning("archive: cannot keep a fragment in %s (%s)", store, exc)
        return _compress(sink, c, entries, arcname, progress)
    tee = _Tee(sink, tmp)
    try:
        counts = _compress(tee, c, entries, arcname, progress)
        tmp.close()
        if tee.kept:
            _save(store, name, Path(tmp.name), counts)
    finally:
        with contextlib.suppress(OSError):
            tmp.close()
            os.unlink(tmp.name)
    return counts


def _compress(sink: _codecs.Sink, c: archive.Codec, entries: list[Entry], arcname: str, progress: Progress | None,
              *, end: int | None = None) -> _Counts:
    """One frame (zstd) or member (gzip) holding ``entries``; with ``end`` (the tar bytes before it), then the end-of-archive blocks."""
    assert c.level is not None
    out: Encoder = _codecs.encoder(c.fmt, c.level, c.threads, sink)
    try:
        tar = TarStream(out, progress)
        for entry in entries:
            tar.add(entry, archive.relative(entry, arcname))
        if end is not None:
            tar.write(archive.end_blocks(end + tar.total))
        tar.end()
        out.close()
    except BaseException:
        out.abort()
        raise
    return _Counts(tar.total, tar.files, tar.bytes)


def _key(c: archive.Codec, entries: list[Entry]) -> str:
    members = [(e.name, e.kind, e.mode, e.mtime, e.size, e.linkname) for e in entries]
    text = json.dumps([_STORE_FORMAT, c.fmt, c.level, _LIBRARIES[c.fmt], members], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _load(store: Path, name: str) -> tuple[Path, _Counts] | None:
    """A stored fragment whose file is as it was written (size, inode, mtime), with its counts."""
    path = store / f"{name}.frag"
    try:
        meta = json.loads((store / f"{name}.json").read_text())
        st = path.stat()
        if [st.st_size, st.st_ino, st.st_mtime_ns] != meta["file"]:
            raise ValueError("it changed since it was stored")
        return path, _Counts(int(meta["tar"]), int(meta["files"]), int(meta["bytes"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("archive: dropping stored fragment %s (%s)", path, exc)
        for stale in (path, store / f"{name}.json"):
            with contextlib.suppress(OSError):
                stale.unlink()
        return None


def _save(store: Path, name: str, tmp: Path, counts: _Counts) -> None:
    try:
        path = store / f"{name}.frag"
        os.replace(tmp, path)
        st = path.stat()
        meta = {"file": [st.st_size, st.st_ino, st.st_mtime_ns], "tar": counts.tar, "files": counts.files, "bytes": counts.bytes}
        (store / f".{name}.json").write_text(json.dumps(meta))
        os.replace(store / f".{name}.json", store / f"{name}.json")
    except OSError as exc:
        log.warning("archive: cannot keep a fragment in %s (%s)", store, exc)


def _copy(path: Path, sink: FileSink) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                sink.write(view[:n])
    except OSError as exc:
        raise ArchiveError(f"Cannot read the stored fragment {path}: {exc.strerror or exc}.",
                                   hint="Remove the cache directory (or build with --no-cache) and build again.") from exc


class _Tee:
    """The archive's sink, and a copy of the same bytes for the store (given up, not failed, when the copy cannot be written)."""

    def __init__(self, sink: FileSink, copy: IO[bytes]) -> None:
        self._sink = sink
        self._copy: IO[bytes] | None = copy
        self.kept = True

    def write(self, data: bytes | memoryview, /) -> int:
        n = self._sink.write(data)
        if self._copy is not None:
            try:
                self._copy.write(data)
            except OSError as exc:
                log.warning("archive: cannot keep a fragment (%s)", exc)
                self._copy, self.kept = None, False
        return n
