"""Byte-compile a tree with the bundle's own interpreter (``data/compile.py``).

``unchecked-hash`` pycs do not depend on file mtimes, so they stay valid after
an archive clamps mtimes and are identical from build to build; the path
recorded in each is relative to its root, so no build path ends up in a pyc
(tracebacks name the file where it is at run time).

:func:`byte_compile` compiles roots that are all there; a :class:`Compiler`
takes roots one at a time while it runs, so the wheels of a build are
byte-compiled on every core while the next ones are still being installed.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from types import TracebackType

from shipenv import data
from shipenv.build.runner import REAL, Completed, Runner, Stream, StreamingRunner
from shipenv.errors import RelocateError

log = logging.getLogger(__name__)


def byte_compile(python: Path, roots: list[Path], *, relative_to: Path | None = None, runner: Runner = REAL) -> None:
    """Compile every ``.py`` under ``roots`` with the bundle's own interpreter."""
    args = [str(r) for r in roots]
    if relative_to is not None:
        # Only these directories, with paths inside the pycs relative to the bundle.
        args = [f"{relative_to}::{r.relative_to(relative_to)}" for r in roots]
    _check(runner.run([*_argv(python), *args]))


class Compiler:
    """One ``compile.py`` process that compiles each root :meth:`add` gives it, as soon as it is given.

    Used as a context manager: :meth:`finish` waits for all of it (and raises
    :class:`RelocateError` if compilation failed); leaving the block with an
    error stops the process. The process starts with the first root, so a
    build whose layers all come from the cache starts none. A runner that
    cannot stream (a test's fake) gets every root in one ``run`` at the end.

    >>> with Compiler(python) as compiler:          # doctest: +SKIP
    ...     for stage in stages:
    ...         install(stage); compiler.add(stage)
    ...     compiler.finish()
    """

    def __init__(self, python: Path, *, runner: Runner = REAL) -> None:
        self.python = python
        self.runner = runner
        self._roots: list[Path] = []
        self._stream: Stream | None = None
        self._gone = False  # the process ended before it had all its roots

    def add(self, root: Path) -> None:
        """Compile ``root`` (with paths relative to it) from now on."""
        self._roots.append(root)
        if not isinstance(self.runner, StreamingRunner) or self._gone:
            return
        try:
            if self._stream is None:
                self._stream = self.runner.start([*_argv(self.python), "-"])
            self._stream.send(str(root))
        except BrokenPipeError:
            self._gone = True  # finish() reports why, from its status and stderr
        except (OSError, subprocess.SubprocessError) as exc:
            raise RelocateError(f"Byte-compiling the bundle failed (cannot run {self.python}: {exc}).") from exc

    def finish(self) -> None:
        """Wait until every root given is compiled."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            _check(stream.close())
        elif self._roots and not isinstance(self.runner, StreamingRunner):
            _check(self.runner.run([*_argv(self.python), *map(str, self._roots)]))

    def __enter__(self) -> Compiler:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._stream is not None:
            self._stream.kill()
            self._stream = None


def _argv(python: Path) -> list[str]:
    return [str(python), "-I", "-B", str(data.path("compile.py"))]


def _check(proc: Completed) -> None:
    if proc.returncode != 0:
        raise RelocateError(f"Byte-compiling the bundle failed ({(proc.stderr.strip().splitlines() or ['no output'])[-1]}).")
    failed = proc.stdout.split()
    if failed:
        # A package may ship files that are not Python 3 (templates, py2 leftovers):
        # pip tolerates them too; they simply stay uncompiled.
        log.warning("byte-compilation skipped %d file(s), e.g. %s", len(failed), failed[0])
