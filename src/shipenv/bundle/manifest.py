"""The bundle's description of itself: ``.shipenv/manifest.json`` and ``.shipenv/RECORD``.

``manifest.json`` says what the bundle is and what a host needs to run it
(arch, glibc floor, Python version and ABI). ``RECORD`` lists every file with
its sha256 and size, one CSV row per file, in the shape of a wheel's RECORD::

    bin/python3.12,sha256=<hex>,17584
    bin/python,symlink=python3.12,
    .shipenv/RECORD,,

Digests are hex so that a server without Python can check them with
``sha256sum`` (see the ``shipenv-deploy.sh`` template).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

META_DIR = PurePosixPath(".shipenv")
MANIFEST = META_DIR / "manifest.json"
RECORD = META_DIR / "RECORD"
FORMAT_VERSION = 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RecordEntry:
    path: str
    sha256: str | None = None
    size: int | None = None
    symlink: str | None = None

    def row(self) -> list[str]:
        if self.symlink is not None:
            return [self.path, f"symlink={self.symlink}", ""]
        if self.sha256 is None:
            return [self.path, "", ""]
        return [self.path, f"sha256={self.sha256}", str(self.size)]


def hash_file(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def walk(root: Path) -> Iterator[tuple[str, Path]]:
    """Every file and symlink under root as (relative posix path, path), sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        # Symlinks to directories are listed among dirnames but not followed: record them.
        for name in sorted(filenames + [d for d in dirnames if (base / d).is_symlink()]):
            full = base / name
            yield full.relative_to(root).as_posix(), full


def scan(root: Path) -> list[RecordEntry]:
    """RECORD entries for every file under ``root`` except RECORD itself."""
    entries = []
    for rel, full in walk(root):
        if rel == RECORD.as_posix():
            continue
        st = full.lstat()
        if stat.S_ISLNK(st.st_mode):
            entries.append(RecordEntry(rel, symlink=os.readlink(full)))
        elif stat.S_ISREG(st.st_mode):
            digest, size = hash_file(full)
            entries.append(RecordEntry(rel, digest, size))
    return entries


def render_record(entries: Iterable[RecordEntry]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for entry in entries:
        writer.writerow(entry.row())
    writer.writerow([RECORD.as_posix(), "", ""])
    return buf.getvalue().encode()


def parse_record(data: bytes) -> dict[str, RecordEntry]:
    """RECORD text to entries by path; raises ValueError on a malformed row."""
    result: dict[str, RecordEntry] = {}
    for row in csv.reader(io.StringIO(data.decode("utf-8"))):
        if not row:
            continue
        if len(row) != 3:
            raise ValueError(f"malformed RECORD row: {row!r}")
        path, digest, size = row
        if digest.startswith("symlink="):
            result[path] = RecordEntry(path, symlink=digest[len("symlink=") :])
        elif digest.startswith("sha256="):
            result[path] = RecordEntry(path, digest[len("sha256=") :], int(size))
        else:
            result[path] = RecordEntry(path)
    return result


def write(root: Path, metadata: dict[str, Any]) -> None:
    """Write manifest.json, then RECORD over every file (manifest included)."""
    (root / META_DIR).mkdir(exist_ok=True)
    payload = dict(metadata, format=FORMAT_VERSION)
    (root / MANIFEST).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    (root / RECORD).write_bytes(render_record(scan(root)))


def read_metadata(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / MANIFEST).read_text())
    return data


def parse_version(text: str) -> tuple[int, int]:
    """``"2.31"`` to ``(2, 31)``; raises ValueError otherwise."""
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor or 0)


def format_version(version: tuple[int, int] | None) -> str | None:
    return None if version is None else f"{version[0]}.{version[1]}"
