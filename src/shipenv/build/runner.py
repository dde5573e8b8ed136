"""The one way the build side runs another program (pip, uv, the probe, the byte-compiler, ldconfig).

Every stage that runs a process takes a :class:`Runner` (the real one by
default), so unit tests can swap in a fake and check what a stage does with
an answer without running anything. The real runner removes the host's
``PYTHON*`` variables from the child's environment in one place: a host's ``PYTHONPATH`` or ``PYTHONHOME`` must never change what
pip, uv or the bundled interpreter see.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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


#: The runner every stage uses unless it is given another.
REAL: Runner = SubprocessRunner()
