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
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from shipenv.bundle import elf
from tests.chroots import DEFAULT_ENV, Kind, OverlayRoot
from tests.containers import PROJECT, Runtime, bundle_args, free_port, get, read_dockerfile, start_in_root
from tests.helpers import BuildFn


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return read_dockerfile()


@pytest.fixture(scope="module")
def image_tree(runtime: Runtime, built_bundle: BuildFn) -> Path:
    """The tree the build stage leaves in /out: built here with the same options."""
    return built_bundle("container-webapp-dir", *bundle_args(runtime.build_argv, PROJECT))


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
