"""examples/container/Dockerfile, run the way a container runtime would run it.

There is no Docker engine here, so the runtime stage is a chroot: the bundle,
built by shipenv with the build stage's own ``shipenv build`` options, is
bind-mounted where the runtime stage's ``COPY`` puts it, and the stage's
``CMD`` runs exactly as written (exec form, no shell) with the stage's
``ENV``, as PID 1 of its own PID namespace, in the glibc-only root (what
``gcr.io/distroless/base-debian12`` is) and in a bare Debian 12. The chroot
shares the host's network, so the test talks HTTP to it on 127.0.0.1 and then
stops it with SIGTERM, as ``docker stop`` does.

Everything is read from the Dockerfile, so the example cannot drift from what
is tested.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import stat
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
from shipenv.bundle import elf
from shipenv.cli import _parser
from tests.chroots import DEFAULT_ENV, Kind, OverlayRoot, RootError
from tests.helpers import REPO, BuildFn

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


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return read_dockerfile()


@pytest.fixture(scope="module")
def image_tree(runtime: Runtime, built_bundle: BuildFn) -> Path:
    """The tree the build stage leaves in /out: built here with the same options."""
    return built_bundle("container-webapp-dir", *bundle_args(runtime.build_argv, PROJECT))


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


# --------------------------------------------------------------------------- tests


def test_dockerfile_stages_say_what_the_example_promises(runtime: Runtime) -> None:
    assert runtime.base == "gcr.io/distroless/base-debian12"
    assert runtime.dest == "/app"
    assert Path(runtime.cmd[0]).is_relative_to(runtime.dest), "CMD must run a file of the bundle"
    assert runtime.cmd == [f"{runtime.dest}/bin/app"], "CMD runs the app's command, as users write it"
    assert "sh" not in {Path(a).name for a in runtime.cmd}, runtime.cmd
    assert "PORT" in runtime.env


def test_runtime_stage_copies_the_tree_the_build_stage_makes(runtime: Runtime, image_tree: Path) -> None:
    manifest = json.loads((image_tree / ".shipenv" / "manifest.json").read_text())
    assert runtime.source == f"/out/{manifest['name']}-{manifest['version']}"
    assert image_tree.name == Path(runtime.source).name
    # Everything CMD names inside /app exists in the tree, and argv[0] is the
    # native launcher: a static ELF, so the image needs no shell and no loader.
    for arg in runtime.cmd:
        if arg.startswith(runtime.dest + "/"):
            assert (image_tree / Path(arg).relative_to(runtime.dest)).is_file(), arg
    command = image_tree / Path(runtime.cmd[0]).relative_to(runtime.dest)
    assert manifest["launchers"] == "native"
    assert elf.read(command).needed == () and not elf.read(command).is_shared, "the launcher must be static"
    # The glibc floor fits the runtime image: what --max-glibc in the build stage promises.
    floor = tuple(int(x) for x in manifest["platform"]["glibc_floor"].split("."))
    assert floor <= (2, 36), manifest["platform"]


def test_tree_is_usable_by_the_images_unprivileged_user(runtime: Runtime, image_tree: Path) -> None:
    # USER nonroot runs as uid 65532: every file must be readable, every
    # directory searchable, and what the owner may execute, others may too.
    assert runtime.user == "nonroot"
    unreadable = []
    for path in [image_tree, *image_tree.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        need = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() or mode & stat.S_IXUSR else 0)
        if mode & need != need:
            unreadable.append(f"{path.relative_to(image_tree)} ({stat.filemode(mode)})")
    assert not unreadable, unreadable[:10]


@pytest.mark.parametrize(
    ("kind", "readonly"),
    [("glibc", True), ("bookworm", False)],
    ids=["distroless-read-only", "debian12"],
)
def test_cmd_serves_http_and_stops_on_sigterm(kind: Kind, readonly: bool, runtime: Runtime, image_tree: Path) -> None:
    port = free_port()
    # The image's environment: the base's PATH, the stage's ENV, and PORT as
    # `docker run -e PORT=...` would set it (the host's network is shared).
    env = {**DEFAULT_ENV, **runtime.env, "PORT": str(port)}
    with OverlayRoot(kind) as root, start_in_root(
        root, runtime.cmd, binds={image_tree: runtime.dest}, env=env, readonly=readonly
    ) as container:
        status, body = get(f"http://127.0.0.1:{port}/", container)
        assert status == 200
        assert body["app"] == "webapp"
        assert body["prefix"] == runtime.dest, body  # the bundle at /app, not the host's path
        assert str(body["python"]).startswith("3.12."), body
        status, health = get(f"http://127.0.0.1:{port}/healthz", container)
        assert (status, health) == (200, {"status": "ok"})

        # `docker stop`: SIGTERM to PID 1, which must shut down cleanly.
        os.kill(container.pid1(), signal.SIGTERM)
        try:
            code = container.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server ignored SIGTERM:\n{container.output()}")
        output = container.output()
    assert code == 0, output
    assert f"Listening at: http://0.0.0.0:{port}" in output
    assert '"GET / HTTP/1.1" 200' in output  # the access log reaches stdout (`docker logs`)
    assert "Shutting down: Master" in output
    assert "Traceback" not in output, output
