"""The one way the build side runs another program (pip, uv, the probe, the byte-compiler, ldconfig).

Every stage that runs a process takes a :class:`Runner` (the real one by
default), so unit tests can swap in a fake and check what a stage does with
an answer without running anything. A :class:`StreamingRunner` can also start
a process and feed it lines while it runs (the byte-compiler takes each layer
as soon as it is installed), and hear each line it prints as it prints it (the
byte-compiler says when each layer is done); a runner without ``start`` still
works, the work is then handed over in one ``run``. The real runner removes the host's
``PYTHON*`` variables from the child's environment in one place: a host's ``PYTHONPATH`` or ``PYTHONHOME`` must never change what
pip, uv or the bundled interpreter see.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, runtime_checkable


@dataclass(frozen=True)
class Completed:
    """What a finished process said."""

    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Runs ``argv`` to completion and returns its output; raises ``OSError`` or ``subprocess.TimeoutExpired``."""

    def run(
        self, argv: Sequence[str], *, env_extra: Mapping[str, str | None] | None = None, cwd: Path | None = None, timeout: float | None = None
    ) -> Completed: ...


class Stream(Protocol):
    """A running process that reads lines on its stdin (see :class:`StreamingRunner`)."""

    def send(self, line: str) -> None:
        """Write one line to its stdin; raises ``OSError`` (``BrokenPipeError``) if it has gone."""

    def close(self) -> Completed:
        """End its stdin, wait for it to finish and return its output."""

    def kill(self) -> None:
        """Stop it and wait for it (after a failure elsewhere)."""


#: Hears each line a started process prints (without its newline), then None when its output ends.
OnLine = Callable[[str | None], None]


@runtime_checkable
class StreamingRunner(Runner, Protocol):
    """A runner that can also start a process and feed it work while it runs (the byte-compiler).

    With ``on_line``, each line the process prints is given to it as it comes (on
    another thread), and still ends up in :meth:`Stream.close`'s ``stdout``.
    """

    def start(self, argv: Sequence[str], *, env_extra: Mapping[str, str | None] | None = None,
              on_line: OnLine | None = None) -> Stream: ...


def scrubbed_env(env_extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment without ``PYTHON*``, changed by ``env_extra`` (``None`` removes a variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    for key, value in (env_extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass(frozen=True)
class SubprocessRunner:
    """The real runner: :func:`subprocess.run`, output captured as text, the environment scrubbed."""

    def run(
        self, argv: Sequence[str], *, env_extra: Mapping[str, str | None] | None = None, cwd: Path | None = None, timeout: float | None = None
    ) -> Completed:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, env=scrubbed_env(env_extra), cwd=cwd, timeout=timeout, check=False,
        )
        return Completed(proc.returncode, proc.stdout, proc.stderr)


    def start(self, argv: Sequence[str], *, env_extra: Mapping[str, str | None] | None = None,
              on_line: OnLine | None = None) -> Stream:
        return _Popen(list(argv), env_extra, on_line)


class _Popen:
    """A :class:`Stream` over :class:`subprocess.Popen`; its output goes to files, so a chatty child never blocks on a full pipe.

    With ``on_line`` its stdout is a pipe instead, drained line by line by a thread of its own (which never blocks the child either).
    """

    def __init__(self, argv: list[str], env_extra: Mapping[str, str | None] | None, on_line: OnLine | None = None) -> None:
        self._out: IO[str] = tempfile.TemporaryFile("w+")
        self._err: IO[str] = tempfile.TemporaryFile("w+")
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None
        try:
            # A session of its own, so that kill() stops the children it started too (compile.py's pool
            # workers would otherwise wait forever for work from a parent that is gone).
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE if on_line else self._out,
                                          stderr=self._err, text=True, env=scrubbed_env(env_extra), start_new_session=True)
        except OSError:
            self._out.close()
            self._err.close()
            raise
        if on_line is not None:
            self._reader = threading.Thread(target=self._drain, args=(on_line,), name="shipenv-stdout", daemon=True)
            self._reader.start()

    def _drain(self, on_line: OnLine) -> None:
        assert self._proc.stdout is not None
        try:
            for line in self._proc.stdout:
                self._lines.append(line)
                on_line(line.rstrip("\n"))
        finally:
            on_line(None)

    def send(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def close(self) -> Completed:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:  # it ended early: its status and stderr say why
            pass
        returncode = self._proc.wait()
        if self._reader is not None:
            self._reader.join()
            assert self._proc.stdout is not None
            self._proc.stdout.close()
            self._out.close()
            return Completed(returncode, "".join(self._lines), self._read(self._err))
        return Completed(returncode, self._read(self._out), self._read(self._err))

    def kill(self) -> None:
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it and its children have ended
            pass
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        self._proc.wait()
        if self._reader is not None:
            # Its output ends when the last process holding the pipe (a pool worker, maybe) is gone.
            self._reader.join(timeout=10)
            if not self._reader.is_alive():
                assert self._proc.stdout is not None
                self._proc.stdout.close()
        self._out.close()
        self._err.close()

    @staticmethod
    def _read(stream: IO[str]) -> str:
        stream.seek(0)
        text = stream.read()
        stream.close()
        return text


#: The runner every stage uses unless it is given another.
REAL: Runner = SubprocessRunner()
