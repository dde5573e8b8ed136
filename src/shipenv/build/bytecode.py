"""Byte-compile a tree with the bundle's own interpreter (``data/compile.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

from shipenv import data
from shipenv.build.runner import REAL, Runner
from shipenv.errors import RelocateError

log = logging.getLogger(__name__)


def byte_compile(python: Path, roots: list[Path], *, relative_to: Path | None = None, runner: Runner = REAL) -> None:
    """Compile every ``.py`` under ``roots`` with the bundle's own interpreter.

    ``unchecked-hash`` pycs do not depend on file mtimes, so they stay valid
    after an archive clamps mtimes and are identical from build to build; the
    path recorded in each is relative to its root, so no build path ends up in
    a pyc (tracebacks name the file where it is at run time).
    """
    args = [str(r) for r in roots]
    if relative_to is not None:
        # Only these directories, with paths inside the pycs relative to the bundle.
        args = [f"{relative_to}::{r.relative_to(relative_to)}" for r in roots]
    proc = runner.run([str(python), "-I", "-B", str(data.path("compile.py")), *args])
    if proc.returncode != 0:
        raise RelocateError(f"Byte-compiling the bundle failed ({(proc.stderr.strip().splitlines() or ['no output'])[-1]}).")
    failed = proc.stdout.split()
    if failed:
        # A package may ship files that are not Python 3 (templates, py2 leftovers):
        # pip tolerates them too; they simply stay uncompiled.
        log.warning("byte-compilation skipped %d file(s), e.g. %s", len(failed), failed[0])
