"""Running examples/container/Dockerfile's stages the way a container runtime would, in a chroot.

Shared by the container, OCI and native-launcher tests: the Dockerfile parsed
into its stages, the build stage's ``shipenv build`` options, and a runtime
stage started as PID 1 of its own PID namespace in one of the chroot roots.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tests.chroots as chroots
from shipenv.cli import _parser
from tests.chroots import OverlayRoot, RootError
from tests.helpers import REPO

DOCKERFILE = REPO / "examples" / "container" / "Dockerfile"
PROJECT = REPO / "examples" / "webapp"


# --------------------------------------------------------------------------- the Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in the stage FROM {self.base}, found {len(found)}"
        return found[0]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages and their instructions; comments dropped, continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"ENV {args!r}: use the KEY=VALUE form"
            env[key] = value
    return env


@dataclass(frozen=True)
class Runtime:
    """What the runtime stage says: where the bundle goes and how it runs."""

    base: str
    copy_from: str
    source: str
    dest: str
    cmd: list[str]
    env: dict[str, str]
    user: str | None
    build_argv: list[str]  #: the build stage's `shipenv build ...`, without "shipenv"


def read_dockerfile() -> Runtime:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) == 2, "expected a build stage and a runtime stage"
    build, runtime = stages
    runs = [args for args in build.all("RUN")]
    assert any("pip install" in r and "shipenv" in r for r in runs), "the build stage must pip install shipenv"
    shipenv_runs = []
    for r in runs:
        words = shlex.split(r)
        for i, word in enumerate(words[:-1]):
            if word == "shipenv" and words[i + 1] == "build":
                shipenv_runs.append(words[i + 1 :])
    assert len(shipenv_runs) == 1, f"expected one `shipenv build` in the build stage, found {shipenv_runs}"

    copies = [shlex.split(c) for c in runtime.all("COPY")]
    assert len(copies) == 1, f"expected one COPY in the runtime stage, found {copies}"
    flags = [w for w in copies[0] if w.startswith("--")]
    paths = [w for w in copies[0] if not w.startswith("--")]
    assert flags == [f"--from={build.name}"], f"the runtime COPY must take the tree from the build stage: {flags}"
    assert len(paths) == 2, paths
    cmd = json.loads(runtime.one("CMD"))  # exec form: a JSON array, no shell involved
    assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd), cmd
    users = runtime.all("USER")
    return Runtime(
        base=runtime.base, copy_from=build.name or "", source=paths[0], dest=paths[1], cmd=cmd,
        env=env_of(runtime), user=users[-1] if users else None, build_argv=shipenv_runs[0],
    )  # fmt: skip


def bundle_args(build_argv: Sequence[str], project: Path) -> list[str]:
    """The Dockerfile's `shipenv build` options for `built_bundle` (which adds its own -o)."""
    args = _parser().parse_args(build_argv)  # SystemExit here: the Dockerfile has a bad option
    assert args.command == "build", build_argv
    assert args.project == Path("."), "the build stage should build the project it COPYs to its WORKDIR"
    out: list[str] = []
    skip = False
    for word in build_argv[1:]:
        if skip:
            skip = False
            continue
        # Where the image build writes and caches is the test's business.
        if word in ("-o", "--output", "--cache-dir"):
            skip = True
            continue
        if word.startswith(("--output=", "--cache-dir=")) or word == ".":
            continue
        out.append(word)
    return [*out, str(project)]


# --------------------------------------------------------------------------- a container, as a chroot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Container:
    """A command running in a root: the `unshare` process and the command as PID 1."""

    proc: subprocess.Popen[bytes]
    log: Path
    status_fd: int  #: the helper writes "started", then "\nerror: ..." if setting up the root failed

    def pid1(self) -> int:
        """Host PID of the command (PID 1 inside): the child of `unshare --fork`."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def output(self) -> str:
        """What the command printed, or why the root could not be set up."""
        text = self.log.read_text(errors="replace")
        if self.proc.poll() is not None:
            status = os.read(self.status_fd, 65536).decode("utf-8", "replace")  # the writers are gone: no blocking
            if "\nerror: " in status:
                raise RootError(f"could not set up the root: {status.split(chr(10) + 'error: ', 1)[1]}\n{text}")
        return text


@contextmanager
def start_in_root(
    root: OverlayRoot, argv: Sequence[str], *, binds: Mapping[Path, str], env: Mapping[str, str], readonly: bool
) -> Iterator[Container]:
    """Like `OverlayRoot.run`, but returns at once with the command running.

    The same machinery: ``unshare`` a mount and PID namespace and run
    tests/chroots.py as the helper that mounts, chroots and execs `argv`.
    Whatever is left running is killed on exit (`--kill-child` takes the
    whole PID namespace with it).
    """
    base = Path(root.upper).parent
    spec: dict[str, object] = {
        "lower": str(root.lower),
        "upper": str(base / "upper"),
        "work": str(base / "work"),
        "merged": str(base / "merged"),
        "binds": chroots._bind_list(dict(binds)),
        "argv": list(argv),
        "env": dict(env),
        "cwd": "/",
        "readonly": readonly,
    }
    status_r, status_w = os.pipe()
    spec["status_fd"] = status_w
    cmd = [
        "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
        "--", sys.executable, "-I", chroots.__file__, "--helper", json.dumps(spec),
    ]  # fmt: skip
    with tempfile.NamedTemporaryFile(prefix="container-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(status_w,))
        finally:
            os.close(status_w)
    container = Container(proc, log_path, status_r)
    try:
        yield container
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        os.close(status_r)
        log_path.unlink(missing_ok=True)


def get(url: str, container: Container, timeout: float = 60.0) -> tuple[int, dict[str, object]]:
    """GET `url`, retrying while the server starts; fails at once if it died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            if container.proc.poll() is not None:
                pytest.fail(f"the container exited with {container.proc.returncode} before answering:\n{container.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from {url} within {timeout:.0f} s:\n{container.output()}")
            time.sleep(0.2)
