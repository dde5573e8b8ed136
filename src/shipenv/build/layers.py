"""What a cache layer knows about its own files, and which files of the merged tree it still vouches for.

A layer (the interpreter, one installed wheel) is read once, when it is made:
:func:`compute` hashes every file, searches it for the build-host paths the
audit looks for, and reads the ELF facts of every ELF, in the one pass that
reads the bytes anyway. The :class:`LayerFacts` are kept next to the layer's
tree in its cache entry (:mod:`shipenv.build.cache`), which also uses them to
check the entry cheaply (every file's inode, size and mtime) before it is used.

A build then assembles RECORD, the audit verdict and the glibc floor from its
layers (:class:`Ledger`) and reads only the files no layer vouches for: the
launchers, the manifest, and any file that a later stage (``libc.finish``,
``--venv`` relocation, the templates) replaced or edited after the merge. A
file is vouched for only while its ``(dev, inode, size, mtime_ns)`` is what it
was when its layer was merged: files are only ever replaced, never edited in
place (cache entries are hard-linked), and an edit in place changes the
mtime. The result is the same RECORD, findings and floor as reading every
file would give.

Audit findings depend on what was searched for. A layer's facts say which
needles it was searched for, and keep every hit (before the audit keeps the
most specific one of a file); a build that searches for a needle the layer
was not searched for reads that layer's files again. The one needle that
differs between builds by design, the staging directory of the build itself,
is new in every build: nothing made before that directory existed names it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from shipenv.build import audit
from shipenv.bundle import elf, manifest
from shipenv.model import AuditFinding, ElfInfo

FACTS_FORMAT = 1
Signature = tuple[int, int, int, int]  #: (st_dev, st_ino, st_size, st_mtime_ns)


class FileFacts(NamedTuple):
    """One file or symlink of a layer, as its cache entry holds it.

    A named tuple, not a frozen dataclass: a build reads the facts of every
    cached layer (12,000 files for the benchmark's stack), and a tuple is made
    several times faster.
    """

    kind: str  #: "file" or "symlink"
    size: int
    ino: int  #: of the entry's file: with ``size`` and ``mtime_ns``, what :func:`check` compares
    mtime_ns: int
    executable: bool = False
    sha256: str | None = None
    symlink: str | None = None
    elf: ElfInfo | None = None
    hits: tuple[AuditFinding, ...] = ()  #: every needle found, classified

    def record(self, rel: str) -> manifest.RecordEntry:
        if self.symlink is not None:
            return manifest.RecordEntry(rel, symlink=self.symlink)
        return manifest.RecordEntry(rel, self.sha256, self.size)


@dataclass(frozen=True)
class LayerFacts:
    files: Mapping[str, FileFacts]
    needles: tuple[str, ...]  #: what the files were searched for

    def to_json(self) -> bytes:
        return json.dumps({"format": FACTS_FORMAT, "needles": list(self.needles),
                           "files": {rel: _dump_file(f) for rel, f in self.files.items()}}, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes) -> LayerFacts:
        """Raises ValueError (or KeyError, TypeError) for anything :meth:`to_json` did not write."""
        obj = json.loads(data)
        if obj.get("format") != FACTS_FORMAT:
            raise ValueError(f"facts format {obj.get('format')!r}")
        return cls({rel: _load_file(rel, f) for rel, f in obj["files"].items()}, tuple(obj["needles"]))


def _dump_file(f: FileFacts) -> list[Any]:
    info = None
    if f.elf is not None:
        info = [f.elf.machine, f.elf.elfclass, f.elf.soname, f.elf.needed, f.elf.rpath, f.elf.runpath, f.elf.glibc_versions, f.elf.is_shared]
    hits = [[h.needle, h.kind, h.reason] for h in f.hits]
    return [f.kind, f.size, f.ino, f.mtime_ns, f.executable, f.sha256, f.symlink, info, hits]


def _load_file(rel: str, row: list[Any]) -> FileFacts:
    kind, size, ino, mtime_ns, executable, sha256, symlink, info, hits = row
    if kind not in ("file", "symlink"):
        raise ValueError(f"kind {kind!r}")
    e = None
    if info is not None:
        machine, elfclass, soname, needed, rpath, runpath, glibc, shared = info
        e = ElfInfo(machine, int(elfclass), soname, tuple(needed), tuple(rpath), tuple(runpath),
                    tuple((int(a), int(b)) for a, b in glibc), bool(shared))
    found: tuple[AuditFinding, ...] = ()
    if hits:  # few files have any: no path object for the others
        path = PurePosixPath(rel)
        found = tuple(AuditFinding(path, n, k, r) for n, k, r in hits)
    return FileFacts(kind, int(size), int(ino), int(mtime_ns), bool(executable), sha256, symlink, e, found)


def compute(tree: Path, needles: Sequence[str]) -> LayerFacts:
    """Read every file of a layer once: digest, audit hits, ELF facts."""
    encoded = [(n, n.encode()) for n in needles]
    files: dict[str, FileFacts] = {}
    for rel, name, st in manifest.walk_stat(tree):
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name)
            files[rel] = FileFacts("symlink", st.st_size, st.st_ino, st.st_mtime_ns, symlink=target,
                                   hits=tuple(audit.symlink_findings(PurePosixPath(rel), target, needles)))
        elif stat.S_ISREG(st.st_mode):
            full = Path(name)
            hits, digest, head = audit.scan_file(full, encoded, digest=True)
            info = elf.try_read(full) if head == b"\x7fELF" else None
            found = tuple(audit.findings_for(PurePosixPath(rel), full, hits)) if hits else ()  # no path object per file otherwise
            files[rel] = FileFacts("file", st.st_size, st.st_ino, st.st_mtime_ns, bool(st.st_mode & 0o111), digest,
                                   elf=info, hits=found)
    return LayerFacts(files, tuple(needles))


def check(tree: Path, facts: LayerFacts) -> str | None:
    """Why ``tree`` is not what ``facts`` describe (a file added, missing, replaced or edited), or None."""
    seen = 0
    for rel, _full, st in manifest.walk_stat(tree):
        f = facts.files.get(rel)
        if f is None:
            return f"{rel} is not in its facts"
        kind = "symlink" if stat.S_ISLNK(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        if (kind, st.st_ino, st.st_size, st.st_mtime_ns, bool(st.st_mode & 0o111) and kind == "file") != (
            f.kind, f.ino, f.size, f.mtime_ns, f.executable
        ):
            return f"{rel} changed"
        seen += 1
    if seen != len(facts.files):
        return f"{len(facts.files) - seen} files are missing"
    return None


def rebased(facts: LayerFacts, tree: Path) -> LayerFacts:
    """The same facts with the inodes and mtimes of ``tree``'s files (a copy of the layer, as a cache entry is)."""
    files = {}
    top = os.fspath(tree)
    for rel, f in facts.files.items():
        st = os.lstat(os.path.join(top, rel))
        files[rel] = f._replace(ino=st.st_ino, mtime_ns=st.st_mtime_ns)
    return LayerFacts(files, facts.needles)


def signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Layer:
    """A layer merged into the tree: its facts, and where its cache entry is (for its packed fragments)."""

    name: str
    facts: LayerFacts
    entry: Path | None = None


@dataclass
class Ledger:
    """Which file of the merged tree came from which layer, and its signature when it was merged.

    ``needles`` are what this build's audit searches for and ``fresh`` the one
    needle no earlier layer can hold (the build's own staging root).
    """

    needles: tuple[str, ...]
    fresh: str
    layers: list[Layer] = field(default_factory=list)
    _owner: dict[str, tuple[int, Signature]] = field(default_factory=dict)
    _audited: list[bool] = field(default_factory=list)

    def add(self, layer: Layer, root: Path, placed: Mapping[str, Signature] | None = None) -> None:
        """Record the layer's files as they are in ``root`` right after it was merged there.

        ``placed`` are the signatures the merge already knows (:func:`shipenv.build.placing.merge_layer`);
        without it every file is looked at.
        """
        index = len(self.layers)
        self.layers.append(layer)
        self._audited.append(set(self.needles) - {self.fresh} <= set(layer.facts.needles))
        if placed is not None:
            for rel, sig in placed.items():
                self._owner.setdefault(rel, (index, sig))
            return
        top = os.fspath(root)
        for rel in layer.facts.files:
            if rel in self._owner:  # the same bytes came from an earlier layer (merge checked)
                continue
            try:
                st = os.lstat(os.path.join(top, rel))
            except OSError:
                continue
            self._owner[rel] = (index, signature(st))

    def placed(self) -> Collection[str]:
        """Every path a layer placed in the tree so far (a live view)."""
        return self._owner.keys()

    def facts(self, rel: str, st: os.stat_result) -> FileFacts | None:
        """What a layer says about the tree's ``rel``, if it is still the file that layer put there."""
        owned = self._owner.get(rel)
        if owned is None or owned[1] != signature(st):
            return None
        return self.layers[owned[0]].facts.files[rel]

    def owned(self, index: int, root: Path, stats: Mapping[str, os.stat_result] | None = None) -> tuple[list[str], list[str]]:
        """Layer ``index``'s files that are still its own in ``root``, and those that are not (sorted).

        ``stats`` is what a walk of ``root`` the caller made found (every path it holds), instead of an ``lstat`` each.
        """
        mine: list[str] = []
        others: list[str] = []
        top = os.fspath(root)
        for rel in sorted(self.layers[index].facts.files):
            owned = self._owner.get(rel)
            same = False
            if owned is not None and owned[0] == index:
                try:
                    st = os.lstat(os.path.join(top, rel)) if stats is None else stats.get(rel)
                except OSError:
                    st = None
                same = st is not None and owned[1] == signature(st)
            (mine if same else others).append(rel)
        return mine, others

    def record(self, rel: str, st: os.stat_result) -> manifest.RecordEntry | None:
        f = self.facts(rel, st)
        return f.record(rel) if f is not None else None

    def findings(self, rel: str, st: os.stat_result) -> Sequence[AuditFinding] | None:
        owned = self._owner.get(rel)
        if owned is None or not self._audited[owned[0]]:
            return None
        f = self.facts(rel, st)
        return f.hits if f is not None else None

    def elf_info(self, rel: str, st: os.stat_result) -> tuple[bool, ElfInfo | None]:
        """(vouched, facts): ``(True, None)`` is a vouched file that is not a readable ELF."""
        f = self.facts(rel, st)
        return (False, None) if f is None else (True, f.elf)


def glibc_infos(root: Path, ledger: Ledger | None,
                entries: Sequence[tuple[str, str, os.stat_result]] | None = None) -> dict[str, ElfInfo | None]:
    """The ELF facts of every regular ELF in the tree (None where it cannot be read), reading only what no layer vouches for.

    ``entries`` is the tree's :func:`shipenv.bundle.manifest.walk_stat`, when the caller has it.
    """
    infos: dict[str, ElfInfo | None] = {}
    for rel, name, st in manifest.walk_stat(root) if entries is None else entries:
        if not stat.S_ISREG(st.st_mode):
            continue
        if ledger is not None:
            vouched, info = ledger.elf_info(rel, st)
            if vouched:
                if info is not None:
                    infos[rel] = info
                continue
        full = Path(name)  # only for what no layer vouches for: a Path per file of the tree costs more than the lookup
        if elf.is_elf(full):
            infos[rel] = elf.try_read(full)
    return infos
