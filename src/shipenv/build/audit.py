"""Find every remaining mention of the build host in a tree, and say whether it matters.

A host path in something that runs (an ELF's dynamic section, a script's
``#!`` line, a ``.pth`` file, Python source) would make the bundle depend on
the build machine: that is a build error. A host path in metadata (a
``RECORD``, ``direct_url.json``, the compiled-in default prefix inside
``libpython``, ``_sysconfigdata``) changes nothing at run time and is listed
with the reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from shipenv.bundle import elf, manifest
from shipenv.errors import RelocateError, listing
from shipenv.model import AuditFinding, PythonInfo

_METADATA_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(^|/)_sysconfigdata_[^/]*\.py$|(^|/)_sysconfig_vars[^/]*\.json$"), "build configuration recorded by CPython's sysconfig; read only when compiling extensions"),
    (re.compile(r"(^|/)__pycache__/_sysconfigdata_[^/]*\.pyc$"), "bytecode of the build configuration above"),
    (re.compile(r"(^|/)config-[^/]*/"), "files for linking against libpython (Makefile, python-config); unused at run time"),
    (re.compile(r"\.dist-info/(RECORD|direct_url\.json|INSTALLER|REQUESTED)$"), "installation metadata; not executed"),
    (re.compile(r"(^|/)\.shipenv/"), "shipenv's own manifest"),
    (re.compile(r"\.(txt|rst|md|html|json|cfg|toml|h|c)$"), "documentation or data, not executed"),
)


def needles(py: PythonInfo, sources: Any, root: Path) -> tuple[str, ...]:
    """The host paths a bundle must not depend on: the interpreter's prefix, pyenv's root, venvs, the staging dir."""
    found: list[str] = [str(py.prefix), str(py.executable.parent.parent)]
    pyenv = os.environ.get("PYENV_ROOT")
    if pyenv:
        found.append(pyenv)
    if py.was_venv is not None:
        found.append(str(py.was_venv))
    found.extend(str(p) for p in getattr(sources, "host_paths", ()))
    found.append(str(root))
    # "/usr" (Debian's prefix) is in every binary and means nothing by itself.
    return tuple(sorted({n.rstrip("/") for n in found if len(n.strip("/").split("/")) >= 2}))


def classify(rel: PurePosixPath, full: Path, needle: str) -> AuditFinding:
    text = rel.as_posix()
    if elf.is_elf(full):
        info = elf.try_read(full)
        if info is not None and any(needle in p for p in info.rpath + info.runpath + info.needed):
            return AuditFinding(rel, needle, "runs", "in the ELF's dynamic section: the loader would search the build host")
        return AuditFinding(rel, needle, "metadata", "a string inside compiled code (debug info, or CPython's compiled-in default prefix, used only when the bundle's own stdlib is missing); the loader never reads it")
    for pattern, reason in _METADATA_RULES:
        if pattern.search(text):
            return AuditFinding(rel, needle, "metadata", reason)
    with full.open("rb") as f:
        head = f.read(256)
    if head.startswith(b"#!") and needle.encode() in head.split(b"\n", 1)[0]:
        return AuditFinding(rel, needle, "runs", "in the #! line: the script would run the build host's interpreter")
    if text.endswith(".pyc") or "/__pycache__/" in text:
        return AuditFinding(rel, needle, "metadata", "a string constant inside bytecode, from the package's own source")
    return AuditFinding(rel, needle, "runs", "in a file that may be executed or read at run time")


_CHUNK = 4 << 20


def scan_file(path: Path, encoded: Sequence[tuple[str, bytes]], *, digest: bool = False) -> tuple[list[str], str | None, bytes]:
    """Needles found in a file, read once in fixed chunks (bounded memory whatever its size).

    With ``digest``, the same read also gives the file's sha256 (what a layer's
    facts keep, :mod:`shipenv.build.layers`). Returns the needles found (in
    ``encoded``'s order), the hex digest or None, and the file's first 4 bytes.
    """
    found: set[str] = set()
    overlap = max((len(raw) for _, raw in encoded), default=1) - 1
    tail = b""
    hasher = hashlib.sha256() if digest else None
    head = b""
    with path.open("rb") as f:
        while hasher is not None or len(found) < len(encoded):
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            if not head:
                head = chunk[:4]
            if hasher is not None:
                hasher.update(chunk)
            if len(found) < len(encoded):
                data = tail + chunk
                found.update(needle for needle, raw in encoded if needle not in found and raw in data)
                tail = data[-overlap:] if overlap else b""
    return [needle for needle, _ in encoded if needle in found], hasher.hexdigest() if hasher else None, head


def _search(path: Path, encoded: Sequence[tuple[str, bytes]]) -> list[str]:
    return scan_file(path, encoded)[0]


def findings_for(rel: PurePosixPath, full: Path, hits: Iterable[str]) -> list[AuditFinding]:
    """Every needle found in one file, classified (all of them: :func:`most_specific` picks later)."""
    return [classify(rel, full, needle) for needle in hits]


def most_specific(findings: Sequence[AuditFinding]) -> list[AuditFinding]:
    """Of one file's findings, the most specific paths only: /a/b/c already says /a/b."""
    hits = [f.needle for f in findings]
    return [f for f in findings if not any(f.needle != o and o.startswith(f.needle) for o in hits)]


def symlink_findings(rel: PurePosixPath, target: str, search: Iterable[str]) -> list[AuditFinding]:
    """A symlink whose target names the build host runs (the loader or a script would follow it)."""
    return [AuditFinding(rel, needle, "runs", "a symlink pointing at the build host") for needle in search if needle in target]


#: What a layer already knows about a file of the tree: its findings for every needle it was
#: searched for, or None when the file must be read (:class:`shipenv.build.layers.Ledger`).
Known = Callable[[str, os.stat_result], "Sequence[AuditFinding] | None"]


def audit(root: Path, search: Iterable[str], known: Known | None = None,
          entries: Iterable[tuple[str, str, os.stat_result]] | None = None) -> list[AuditFinding]:
    """Every occurrence of every needle in the tree, classified, sorted by path.

    Files ``known`` vouches for are not read: their findings come from the
    layer they were merged from, filtered to the needles searched here.
    ``entries`` is the tree's :func:`shipenv.bundle.manifest.walk_stat`, when the caller has it.
    """
    needles = list(search)
    encoded = [(n, n.encode()) for n in needles]
    wanted = set(needles)
    findings: list[AuditFinding] = []
    for rel_text, name, st in manifest.walk_stat(root) if entries is None else entries:
        if stat.S_ISLNK(st.st_mode):
            findings.extend(symlink_findings(PurePosixPath(rel_text), os.readlink(name), needles))
            continue
        from_layer = known(rel_text, st) if known is not None else None
        if from_layer is not None:
            if from_layer:
                findings.extend(most_specific([f for f in from_layer if f.needle in wanted]))
            continue
        rel, full = PurePosixPath(rel_text), Path(name)
        try:
            hits = _search(full, encoded)
        except OSError:
            continue
        findings.extend(most_specific(findings_for(rel, full, hits)))
    return findings


def verdict(findings: Iterable[AuditFinding]) -> None:
    """Fail the build when a build-host path is left in a file that runs (DESIGN.md, property 4)."""
    runs = [f for f in findings if f.kind == "runs"]
    if runs:
        raise RelocateError(
            f"The bundle still names the build host in files that run: {listing([f'{f.path} ({f.needle})' for f in runs])}.",
            hint="Run with --report to see every finding; please report this as a shipenv bug.",
        )
