"""Find every remaining mention of the build host in a tree, and say whether it matters.

A host path in something that runs (an ELF's dynamic section, a script's
``#!`` line, a ``.pth`` file, Python source) would make the bundle depend on
the build machine: that is a build error. A host path in metadata (a
``RECORD``, ``direct_url.json``, the compiled-in default prefix inside
``libpython``, ``_sysconfigdata``) changes nothing at run time and is listed
with the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
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


def _search(path: Path, encoded: list[tuple[str, bytes]]) -> list[str]:
    """Needles found in a file, read in fixed chunks (bounded memory whatever its size)."""
    found: set[str] = set()
    overlap = max((len(raw) for _, raw in encoded), default=1) - 1
    tail = b""
    with path.open("rb") as f:
        while len(found) < len(encoded):
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            data = tail + chunk
            found.update(needle for needle, raw in encoded if needle not in found and raw in data)
            tail = data[-overlap:] if overlap else b""
    return [needle for needle, _ in encoded if needle in found]


def audit(root: Path, search: Iterable[str]) -> list[AuditFinding]:
    """Every occurrence of every needle in the tree, classified, sorted by path."""
    encoded = [(n, n.encode()) for n in search]
    findings: list[AuditFinding] = []
    for rel_text, full in manifest.walk(root):
        if full.is_symlink():
            target = os.readlink(full)
            for needle, _ in encoded:
                if needle in target:
                    findings.append(AuditFinding(PurePosixPath(rel_text), needle, "runs", "a symlink pointing at the build host"))
            continue
        try:
            hits = _search(full, encoded)
        except OSError:
            continue
        # Report the most specific path only: /a/b/c already says /a/b.
        hits = [h for h in hits if not any(h != o and o.startswith(h) for o in hits)]
        for needle in hits:
            findings.append(classify(PurePosixPath(rel_text), full, needle))
    return findings


def verdict(findings: Iterable[AuditFinding]) -> None:
    """Fail the build when a build-host path is left in a file that runs (DESIGN.md, property 4)."""
    runs = [f for f in findings if f.kind == "runs"]
    if runs:
        raise RelocateError(
            f"The bundle still names the build host in files that run: {listing([f'{f.path} ({f.needle})' for f in runs])}.",
            hint="Run with --report to see every finding; please report this as a shipenv bug.",
        )
