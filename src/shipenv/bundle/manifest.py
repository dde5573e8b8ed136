"""The bundle's description of itself: ``.shipenv/manifest.json``, ``.shipenv/facts`` and ``.shipenv/RECORD``.

``manifest.json`` says what the bundle is and what a host needs to run it
(arch, glibc floor, Python version and ABI). In code it is a :class:`Manifest`,
a frozen value parsed by :meth:`Manifest.parse`, which raises one
:class:`~shipenv.errors.ManifestError` for anything that is not a manifest
shipenv wrote (not JSON, the wrong shape, a key missing or of the wrong type).
Keys it does not know are ignored, so an older shipenv reads a newer manifest;
fields added later are optional with a default and are left out of the JSON
while they hold it, so :meth:`Manifest.to_json` keeps giving the same bytes.

``facts`` is the part of the manifest that ``deploy.sh`` needs, one
``KEY=VALUE`` line each, so that POSIX sh reads it with ``sed`` and never
parses JSON (:func:`render_facts`). Values are UTF-8 text in which ``%``,
control characters and every byte outside printable ASCII are written
``%XX`` (upper-case hex); deploy.sh only reads values that need no escape
(name, version, arch, glibc floor) and refuses one that holds a ``%``. The
readers check that ``facts`` says what the manifest says.

``RECORD`` lists every file with its sha256 and size, one CSV row per file, in
the shape of a wheel's RECORD::

    bin/python3.12,sha256=<hex>,17584
    bin/python,symlink=python3.12,
    .shipenv/RECORD,,

Digests are hex so that a server without Python can check them with
``sha256sum`` (see ``templates/deploy.sh``).

The module runs past the house's 400 lines because it holds all three files of
``.shipenv/`` that describe a bundle (the typed manifest, the facts file
deploy.sh reads, and RECORD), each written and parsed in exactly one place.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shipenv.errors import ManifestError

META_DIR = PurePosixPath(".shipenv")
MANIFEST = META_DIR / "manifest.json"
FACTS = META_DIR / "facts"
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


def hash_file(path: Path | str) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def walk(root: Path) -> Iterator[tuple[str, Path]]:
    """Every file and symlink under root as (relative posix path, path), sorted."""
    for rel, full, _st in walk_stat(root):
        yield rel, Path(full)


Stat = tuple[str, str, os.stat_result]  #: (path relative to the root, full path, its ``lstat``)


def walk_stat(root: Path | str, dirs: list[Stat] | None = None) -> Iterator[Stat]:
    """:func:`walk` with each entry's ``lstat``, paths as strings (no ``pathlib`` per file: trees have tens of thousands).

    The order is :func:`walk`'s (``os.walk``'s, top-down): in each directory its
    files and symlinks sorted by name, then its directories, sorted, each in
    turn; a symlink to a directory is listed, never followed. With ``dirs``,
    every directory below the root is added to it as it is entered (for the
    packer, :class:`shipenv.bundle.archive.Listing`).
    """
    top = os.fspath(root)
    yield from _walk_dir(top, "", dirs)


def _walk_dir(directory: str, prefix: str, found: list[Stat] | None) -> Iterator[Stat]:
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError:
        return
    files, dirs = [], []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir and not entry.is_symlink():
            dirs.append(entry.name)
        else:
            files.append(entry)
    files.sort(key=lambda e: e.name)
    for entry in files:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        yield prefix + entry.name, entry.path, st
    for name in sorted(dirs):
        path = os.path.join(directory, name)
        if found is not None:
            try:
                found.append((prefix + name, path, os.lstat(path)))
            except OSError:
                continue
        yield from _walk_dir(path, prefix + name + "/", found)


#: A row already known for a file (from the layer it came from), given its ``lstat``; None to hash it.
Known = Callable[[str, os.stat_result], "RecordEntry | None"]


def scan(root: Path, known: Known | None = None, walked: Iterable[tuple[str, str, os.stat_result]] | None = None) -> list[RecordEntry]:
    """RECORD entries for every file under ``root`` except RECORD itself.

    Files ``known`` has a row for are not read (:class:`shipenv.build.layers.Ledger`
    vouches only for files unchanged since their layer was merged). ``walked`` is
    the tree's :func:`walk_stat`, when the caller has it.
    """
    entries = []
    for rel, full, st in walk_stat(root) if walked is None else walked:
        if rel == RECORD.as_posix():
            continue
        row = known(rel, st) if known is not None else None
        if row is not None:
            entries.append(row)
        elif stat.S_ISLNK(st.st_mode):
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


def write(root: Path, manifest: Manifest, known: Known | None = None,
          walked: list[tuple[str, str, os.stat_result]] | None = None) -> None:
    """Write manifest.json and facts, then RECORD over every file (both included; see :func:`scan` for ``known``).

    ``walked`` is the tree's :func:`walk_stat` when the caller has it, taken
    after the last change outside ``.shipenv/`` (which is walked again here).
    A name with a newline is refused: the bundle's own deploy.sh reads one name
    a line and could not deploy it (``shipenv deploy`` could, but a bundle must
    deploy with either).
    """
    if walked is None:
        walked = list(walk_stat(root))  # one walk of the tree for the check and RECORD; only .shipenv/ is walked again
    odd = [rel for rel, full, st in walked if "\n" in rel or (stat.S_ISLNK(st.st_mode) and "\n" in os.readlink(full))]
    if odd:
        raise ManifestError(
            f"{len(odd)} file name(s) or link target(s) in {root.name} hold a newline, which the bundle's deploy.sh cannot deploy: "
            + ", ".join(repr(p) for p in odd[:3]) + (f" (+ {len(odd) - 3} more)" if len(odd) > 3 else "") + ".",
            hint="Rename them in the package that installs them, or leave that package out.",
        )
    (root / META_DIR).mkdir(exist_ok=True)
    (root / MANIFEST).write_bytes(manifest.to_json())
    (root / FACTS).write_bytes(render_facts(manifest))
    (root / RECORD).write_bytes(render_record(scan(root, known, _with_meta_dir(root, walked))))


def _with_meta_dir(root: Path, walked: list[tuple[str, str, os.stat_result]]) -> list[tuple[str, str, os.stat_result]]:
    """``walked`` with ``.shipenv/`` as it is now, where :func:`walk_stat` puts it (after the top's files and the directories sorting before it)."""
    top = META_DIR.as_posix()
    rest = [e for e in walked if not e[0].startswith(top + "/")]
    at = next((i for i, (rel, _f, _s) in enumerate(rest) if "/" in rel and rel.partition("/")[0] > top), len(rest))
    fresh = [(f"{top}/{rel}", full, st) for rel, full, st in walk_stat(root / META_DIR)]
    return rest[:at] + fresh + rest[at:]


def read(root: Path) -> Manifest:
    """The manifest of an unpacked bundle; :class:`ManifestError` when it is missing or not shipenv's."""
    try:
        data = (root / MANIFEST).read_bytes()
    except OSError as exc:
        raise ManifestError(
            f"Cannot read {root / MANIFEST}: {exc.strerror or exc}.", hint="Is it a complete shipenv bundle? shipenv verify will tell."
        ) from None
    return Manifest.parse(data, source=str(root / MANIFEST))


def parse_version(text: str) -> tuple[int, int]:
    """``"2.31"`` to ``(2, 31)``; raises ValueError otherwise."""
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor or 0)


def format_version(version: tuple[int, int] | None) -> str | None:
    return None if version is None else f"{version[0]}.{version[1]}"


# -- the manifest ------------------------------------------------------------------------------

_REQUIRED: Any = object()
_FLOOR_RE = re.compile(r"[0-9]+\.[0-9]+")


class _Fields:
    """Typed reads from one JSON object, naming the key in the error (``platform.arch``)."""

    def __init__(self, data: object, where: str, source: str) -> None:
        self.where, self.source = where, source
        if not isinstance(data, dict):
            raise self.error(f"{where or 'it'} is not a JSON object")
        self.data: dict[str, Any] = data

    def error(self, why: str) -> ManifestError:
        return ManifestError(
            f"{self.source} is not a shipenv manifest: {why}.",
            hint="Give a bundle that shipenv build made; shipenv verify says what else is wrong with it.",
        )

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type, default: Any = _REQUIRED, *, nullable: bool = False) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(f"it has no {self._key(key)!r}")
            return default
        value = self.data[key]
        if value is None and nullable:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"{self._key(key)!r} is not {_KIND_NAMES[kind]}")
        return value

    def section(self, key: str, required: bool = True) -> _Fields:
        if key not in self.data and not required:
            return _Fields({}, self._key(key), self.source)
        return _Fields(self.get(key, dict), self._key(key), self.source)

    def strings(self, key: str) -> tuple[str, ...]:
        items = self.get(key, list, [])
        if not all(isinstance(i, str) for i in items):
            raise self.error(f"{self._key(key)!r} is not a list of strings")
        return tuple(items)


_KIND_NAMES = {str: "a string", int: "an integer", dict: "a JSON object", list: "a list"}


@dataclass(frozen=True)
class ManifestPython:
    version: str  #: "3.12.1"
    implementation: str = "cpython"
    abi: str = ""  #: "cp312"
    soabi: str = ""  #: "cpython-312-x86_64-linux-gnu"
    executable: str = ""  #: "bin/python3.12", relative to the bundle
    site_packages: str = ""  #: "lib/python3.12/site-packages"


@dataclass(frozen=True)
class ManifestPlatform:
    arch: str  #: "x86_64", as ``uname -m`` says
    glibc_floor: str | None = None  #: "2.36"; None when nothing needs glibc
    tag: str = ""  #: "manylinux_2_36_x86_64"
    #: With ``--libc bundled`` (left out of the JSON otherwise): "bundled", its glibc, the kernel it needs, the loader.
    libc: str | None = None
    glibc: str | None = None
    kernel_floor: str | None = None
    loader: str | None = None

    def bundled_libc(self) -> dict[str, str]:
        """The ``--libc bundled`` keys as they are in the JSON (what ``build.libc.summary`` reads)."""
        return {k: v for k, v in (("libc", self.libc), ("glibc", self.glibc), ("kernel_floor", self.kernel_floor), ("loader", self.loader)) if v is not None}

    def as_dict(self) -> dict[str, Any]:
        later = ("libc", "glibc", "kernel_floor", "loader")
        return {k: v for k, v in vars(self).items() if k not in later or v is not None}


@dataclass(frozen=True)
class ManifestDistribution:
    name: str
    version: str
    source: str = ""  #: "requirements", "project", "wheelhouse", "venv"


@dataclass(frozen=True)
class ManifestBuild:
    shipenv_version: str = ""
    source_date_epoch: int | None = None
    time: str = ""  #: ISO 8601, UTC


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says; :meth:`parse` reads it, :meth:`to_json` writes it."""

    name: str
    version: str
    python: ManifestPython
    platform: ManifestPlatform
    distributions: tuple[ManifestDistribution, ...] = ()
    vendored_libraries: tuple[str, ...] = ()
    build: ManifestBuild = ManifestBuild()
    format: int = FORMAT_VERSION
    #: Fields added after format 1 are optional and left out of the JSON while None.
    launchers: str | None = None  #: "native" (static ELF launchers) or "sh" (#!/bin/sh scripts)

    @property
    def release(self) -> str:
        """``NAME-VERSION``: the archive's top directory and the release's name."""
        return f"{self.name}-{self.version}"

    @classmethod
    def parse(cls, data: bytes, *, source: str = MANIFEST.as_posix()) -> Manifest:
        """``manifest.json`` bytes to a Manifest; :class:`ManifestError` for anything else."""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise _Fields({}, "", source).error("it is not JSON") from None
        return cls.from_dict(obj, source=source)

    @classmethod
    def from_dict(cls, obj: object, *, source: str = MANIFEST.as_posix()) -> Manifest:
        top = _Fields(obj, "", source)
        fmt = top.get("format", int, FORMAT_VERSION)
        if fmt > FORMAT_VERSION:
            raise ManifestError(
                f"{source} is in manifest format {fmt}, newer than this shipenv reads ({FORMAT_VERSION}).",
                hint="Upgrade shipenv (pip install -U shipenv), then try again.",
            )
        py, plat, build = top.section("python"), top.section("platform"), top.section("build", required=False)
        floor = plat.get("glibc_floor", str, None, nullable=True)
        if floor is not None and not _FLOOR_RE.fullmatch(floor):
            raise top.error(f"'platform.glibc_floor' {floor!r} is not a glibc version such as 2.36")
        dists = []
        for i, item in enumerate(top.get("distributions", list, [])):
            d = _Fields(item, f"distributions[{i}]", source)
            dists.append(ManifestDistribution(d.get("name", str), d.get("version", str), d.get("source", str, "")))
        return cls(
            name=top.get("name", str),
            version=top.get("version", str),
            python=ManifestPython(
                version=py.get("version", str), implementation=py.get("implementation", str, "cpython"),
                abi=py.get("abi", str, ""), soabi=py.get("soabi", str, ""),
                executable=py.get("executable", str, ""), site_packages=py.get("site_packages", str, ""),
            ),
            platform=ManifestPlatform(
                plat.get("arch", str), floor, plat.get("tag", str, ""), plat.get("libc", str, None), plat.get("glibc", str, None),
                plat.get("kernel_floor", str, None), plat.get("loader", str, None),
            ),
            distributions=tuple(dists),
            vendored_libraries=top.strings("vendored_libraries"),
            build=ManifestBuild(
                build.get("shipenv_version", str, ""), build.get("source_date_epoch", int, None, nullable=True), build.get("time", str, ""),
            ),
            format=fmt,
            launchers=top.get("launchers", str, None, nullable=True),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, every key of format 1 present (``inspect --json`` prints it)."""
        later = {"launchers": self.launchers}
        return {k: v for k, v in later.items() if v is not None} | {
            "name": self.name,
            "version": self.version,
            "python": dict(vars(self.python)),
            "platform": self.platform.as_dict(),
            "distributions": [dict(vars(d)) for d in self.distributions],
            "vendored_libraries": list(self.vendored_libraries),
            "build": dict(vars(self.build)),
            "format": self.format,
        }

    def to_json(self) -> bytes:
        """The bytes of ``manifest.json``: ``json.dumps(indent=2, sort_keys=True)`` and a newline."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    def facts(self) -> dict[str, str]:
        """What ``.shipenv/facts`` holds, in its order."""
        return {
            "format": str(self.format),
            "release": self.release,
            "name": self.name,
            "version": self.version,
            "arch": self.platform.arch,
            "glibc_floor": self.platform.glibc_floor or "",
            "libc": self.platform.libc or "",
            "glibc": self.platform.glibc or "",
            "kernel_floor": self.platform.kernel_floor or "",
            "python": self.python.version,
            "python_abi": self.python.abi,
        }


def _escape(value: str) -> str:
    return "".join(ch if " " <= ch <= "~" and ch != "%" else "".join(f"%{b:02X}" for b in ch.encode()) for ch in value)


def render_facts(manifest: Manifest) -> bytes:
    """``.shipenv/facts``: ``KEY=VALUE`` lines, values escaped as the module docstring says."""
    return "".join(f"{key}={_escape(value)}\n" for key, value in manifest.facts().items()).encode("ascii")


def parse_facts(data: bytes) -> dict[str, str]:
    """``.shipenv/facts`` back to its keys and values; raises ValueError on a line without ``=``."""
    result = {}
    for line in data.decode("ascii").splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"malformed facts line: {line!r}")
        result[key] = re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value).encode("latin-1").decode()
    return result
