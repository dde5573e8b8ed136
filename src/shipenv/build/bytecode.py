"""Byte-compile a tree with the bundle's own interpreter (``data/compile.py``).

``unchecked-hash`` pycs do not depend on file mtimes, so they stay valid after
an archive clamps mtimes and are identical from build to build; the path
recorded in each is relative to its root, so no build path ends up in a pyc
(tracebacks name the file where it is at run time).

:func:`byte_compile` compiles roots that are all there; a :class:`Compiler`
takes roots one at a time while it runs, so the standard library and the
wheels of a build are byte-compiled on every core while the next wheels are
still being installed, and says when each root is done, so each layer's facts
are read while the later ones still compile.
"""

from __future__ import annotations

import logging
import subprocess
import threading
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

    Used as a context manager: :meth:`wait` blocks until one root is compiled
    (so that layer's facts can be read while later ones still compile),
    :meth:`finish` waits for all of it; both raise :class:`RelocateError` if
    compilation failed. Leaving the block with an error stops the process (and
    wakes every thread waiting on it). The process starts with the first root,
    so a build whose layers all come from the cache starts none. A runner that
    cannot stream (a test's fake) gets every root added so far in one ``run``
    when one is waited for, or at the end.

    :meth:`add` is for one thread (the build's); :meth:`wait` for any.

    >>> with Compiler(python) as compiler:          # doctest: +SKIP
    ...     for stage in stages:
    ...         install(stage); compiler.add(stage)
    ...     compiler.wait(stages[0]); read(stages[0])
    ...     compiler.finish()
    """

    def __init__(self, python: Path, *, runner: Runner = REAL) -> None:
        self.python = python
        self.runner = runner
        self._roots: dict[Path, int] = {}
        self._batch: list[Path] = []  # roots a runner that cannot stream has not been given yet
        self._done: set[int] = set()
        self._stream: Stream | None = None
        self._ended = False  # its output ended: it exited, or was stopped
        self._result: Completed | None = None  # how it ended, once someone waited for it
        self._gone = False  # the process ended before it had all its roots
        self._lock = threading.Condition()
        self._closing = threading.Lock()

    def add(self, root: Path) -> None:
        """Compile ``root`` (with paths relative to it) from now on."""
        with self._lock:
            self._roots.setdefault(root, len(self._roots))
            if not isinstance(self.runner, StreamingRunner):
                self._batch.append(root)
                return
            if self._gone or self._result is not None:
                return
            stream = self._stream
        try:
            if stream is None:
                stream = self.runner.start([*_argv(self.python), "-"], on_line=self._heard)
                with self._lock:
                    self._stream = stream
            stream.send(str(root))
        except (BrokenPipeError, ValueError):  # it has ended (ValueError: a waiter closed its input meanwhile)
            with self._lock:
                self._gone = True  # wait() and finish() report why, from its status and stderr
                self._lock.notify_all()
        except (OSError, subprocess.SubprocessError) as exc:
            raise RelocateError(f"Byte-compiling the bundle failed (cannot run {self.python}: {exc}).") from exc

    def _heard(self, line: str | None) -> None:
        """compile.py's "=N" says root N is done; None is the end of its output."""
        with self._lock:
            if line is None:
                self._ended = True
            elif line.startswith("=") and line[1:].isdigit():
                self._done.add(int(line[1:]))
            self._lock.notify_all()

    def wait(self, root: Path) -> None:
        """Block until ``root`` (given to :meth:`add`) is compiled."""
        with self._lock:
            index = self._roots[root]
            if not isinstance(self.runner, StreamingRunner):
                if index not in self._done:
                    self._run_batch()
                return
            while index not in self._done and not self._ended and self._stream is not None and not self._gone:
                self._lock.wait()
            if index in self._done:
                return
        _check(self._close())  # it ended without compiling root: its status and stderr say why
        raise RelocateError("Byte-compiling the bundle failed (the compiler stopped before it was done).")

    def finish(self) -> None:
        """Wait until every root given is compiled."""
        if isinstance(self.runner, StreamingRunner):
            if self._stream is not None or self._result is not None:
                _check(self._close())
            return
        with self._lock:
            self._run_batch()

    def _run_batch(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            _check(self.runner.run([*_argv(self.python), *map(str, batch)]))
            self._done.update(self._roots[r] for r in batch)

    def _close(self) -> Completed:
        """End its input and wait for it, once; every caller gets the same outcome."""
        with self._closing:  # not self._lock: the thread reading its output takes that one until the output ends
            if self._result is None:
                with self._lock:
                    stream, self._stream = self._stream, None
                result = stream.close() if stream is not None else Completed(1, "", "it never started")
                with self._lock:
                    self._result = result
            return self._result

    def __enter__(self) -> Compiler:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the process (after a failure elsewhere); every :meth:`wait` then raises."""
        with self._lock:
            stream, self._stream = self._stream, None
            if stream is not None:
                self._result = Completed(1, "", "stopped")
            self._lock.notify_all()
        if stream is not None:
            stream.kill()


def _argv(python: Path) -> list[str]:
    return [str(python), "-I", "-B", str(data.path("compile.py"))]


def _check(proc: Completed) -> None:
    if proc.returncode != 0:
        raise RelocateError(f"Byte-compiling the bundle failed ({(proc.stderr.strip().splitlines() or ['no output'])[-1]}).")
    failed = [line for line in proc.stdout.splitlines() if line and not line.startswith("=")]  # "=N": root N done
    if failed:
        # A package may ship files that are not Python 3 (templates, py2 leftovers):
        # pip tolerates them too; they simply stay uncompiled.
        log.warning("byte-compilation skipped %d file(s), e.g. %s", len(failed), failed[0])
