"""The native launcher (src/launcher/launcher.c): bin/python and every command where there is no shell.

The bundle is examples/webapp as the container example builds it (shared
with tests/integration/test_container.py, so it is built once per run); the
shell-less root is the glibc-only one (distroless), with the bundle at /app
and symlinks to it in /usr/local/bin, on the root's PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shipenv.build import launchers
from shipenv.bundle import elf
from tests.chroots import DEFAULT_ENV, OverlayRoot, run_in_root
from tests.containers import PROJECT, bundle_args, free_port, get, read_dockerfile, start_in_root
from tests.helpers import REPO, BuildFn, run_shipenv

JUNK = {"PYTHONPATH": "/junk", "PYTHONHOME": "/junk", "PYTHONSTARTUP": "/junk/x.py", "PYTHONNOUSERSITE": ""}

REPORT = """
import json, os, sys
print(json.dumps({
    "executable": sys.executable, "prefix": sys.prefix, "path": sys.path, "argv": sys.argv,
    "write_through": sys.stdout.write_through, "launcher_var": "__PYVENV_LAUNCHER__" in os.environ,
}))
"""

CHILDREN = """
import json, multiprocessing, os, subprocess, sys
child = subprocess.run([sys.executable, "-c", "import os, sys; print(sys.executable, sys.prefix, '__PYVENV_LAUNCHER__' in os.environ)"],
                       capture_output=True, text=True, check=True)
with multiprocessing.get_context("spawn").Pool(2) as pool:
    spawned = pool.map(abs, [-1, -2, -3])
print(json.dumps({"child": child.stdout.split(), "spawned": spawned}))
"""


@pytest.fixture(scope="module")
def tree(built_bundle: BuildFn) -> Path:
    return built_bundle("container-webapp-dir", *bundle_args(read_dockerfile().build_argv, PROJECT))


@pytest.fixture
def path_links(tmp_path: Path) -> Path:
    """A /usr/local/bin for the root: symlinks to the bundle's commands, as users make them."""
    links = tmp_path / "usr-local-bin"
    links.mkdir()
    for name in ("python", "gunicorn", "app"):
        (links / name).symlink_to(f"/app/bin/{name}")
    return links


def test_every_command_is_the_static_launcher(tree: Path) -> None:
    manifest = json.loads((tree / ".shipenv" / "manifest.json").read_text())
    assert manifest["launchers"] == "native"
    binary = launchers.native_binary("x86_64")
    assert binary is not None
    for name in ("python", "python3"):
        assert (tree / "bin" / name).read_bytes() == binary
    for name in ("gunicorn", "app"):
        data = (tree / "bin" / name).read_bytes()
        assert data.startswith(binary) and data[-22:-18] == b"PK\x05\x06", f"bin/{name} is not the launcher with its script"
    info = elf.read(tree / "bin" / "python")
    assert info.needed == () and not info.is_shared  # no loader, no libc from the host
    record = (tree / ".shipenv" / "RECORD").read_text()
    assert launchers.CONFIG in record
    assert "  launchers  native (static ELF: no shell needed)\n" in run_shipenv("inspect", tree).stdout


@pytest.mark.parametrize("argv0", ["/app/bin/python", "python"], ids=["by-path", "symlink-on-PATH"])
def test_python_in_a_root_without_shell(tree: Path, path_links: Path, argv0: str) -> None:
    env = {**DEFAULT_ENV, **JUNK, "PYTHONUNBUFFERED": "1"}
    done = run_in_root("glibc", [argv0, "-c", REPORT], binds={tree: "/app", path_links: "/usr/local/bin"}, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["executable"] == "/app/bin/python"
    assert report["prefix"] == "/app"
    assert not [p for p in report["path"] if "junk" in p], report["path"]  # PYTHONPATH and PYTHONHOME ignored
    assert report["write_through"] is True  # PYTHONUNBUFFERED re-applied
    assert report["launcher_var"] is False  # nothing exported into the program or its children


def test_children_come_back_through_the_launcher(tree: Path) -> None:
    done = run_in_root("glibc", ["/app/bin/python", "-c", CHILDREN], binds={tree: "/app"}, env={**DEFAULT_ENV, **JUNK})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["child"] == ["/app/bin/python", "/app", "False"]
    assert report["spawned"] == [1, 2, 3]


def test_gunicorn_through_a_symlink_on_path_serves_a_request(tree: Path, path_links: Path) -> None:
    port = free_port()
    argv = ["gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-tmp-dir", "/dev/shm", "webapp:app"]
    env = {**DEFAULT_ENV, **JUNK}
    with OverlayRoot("glibc") as root, start_in_root(
        root, argv, binds={tree: "/app", path_links: "/usr/local/bin"}, env=env, readonly=True
    ) as container:
        status, body = get(f"http://127.0.0.1:{port}/", container)
        assert status == 200 and body["prefix"] == "/app", body
        os.kill(container.pid1(), signal.SIGTERM)
        assert container.proc.wait(timeout=60) == 0, container.output()


def test_arguments_exit_status_and_signals(tree: Path, moved_copy) -> None:  # type: ignore[no-untyped-def]
    moved = moved_copy(tree)
    python = moved / "bin" / "python"
    args = [b"a b", b"", b"line\nbreak", b"\xff\xfe not utf-8", b"-E"]
    code = "import os, sys; sys.stdout.buffer.write(repr([os.fsencode(a) for a in sys.argv[1:]]).encode())"
    done = subprocess.run([os.fsencode(python), b"-c", code.encode(), *args], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == repr(args)
    # A script: sys.argv[0] is the command itself, which the bare interpreter can run again.
    script = subprocess.run([moved / "bin" / "gunicorn", "--version"], capture_output=True, text=True, check=False)
    assert script.returncode == 0 and script.stdout.startswith("gunicorn (version "), script.stderr
    again = subprocess.run([moved / "bin" / "python3.12", "-E", "-s", moved / "bin" / "gunicorn", "--version"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert again.stdout == script.stdout, again.stderr

    assert subprocess.run([python, "-c", "import sys; sys.exit(7)"], check=False).returncode == 7
    # exec, no child process: the PID the caller started is the interpreter's, and SIGTERM reaches it.
    with subprocess.Popen([python, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"],
                          stdout=subprocess.PIPE, text=True) as proc:  # fmt: skip
        assert proc.stdout is not None
        assert int(proc.stdout.readline()) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM


def test_a_launcher_outside_a_bundle_says_so(tmp_path: Path) -> None:
    stray = tmp_path / "bin" / "python"
    launchers.write_launcher(stray, launchers.native_binary("x86_64") or b"")
    done = subprocess.run([stray, "-c", "1"], capture_output=True, text=True, check=False)
    assert done.returncode == 127
    assert "python: cannot read" in done.stderr and ".shipenv/launcher" in done.stderr and "bundle" in done.stderr


def test_aarch64_launcher_under_qemu(tree: Path, tmp_path: Path) -> None:
    # No binfmt_misc here, so qemu runs the aarch64 launcher and its execve
    # goes to the kernel, which runs the bundle's x86_64 interpreter: the
    # aarch64 build finds itself, reads the config, builds argv and env.
    qemu = shutil.which("qemu-aarch64-static")
    assert qemu, "qemu-user-static is not installed: run ci/setup.sh"
    binary = launchers.native_binary("aarch64")
    assert binary is not None and elf.read(launchers.data.path("launcher", "aarch64")).machine == "aarch64"
    copy = tmp_path / "bundle"
    shutil.copytree(tree, copy, symlinks=True)
    launchers.write_launcher(copy / "bin" / "python", binary)
    launchers.write_launcher(copy / "bin" / "app", launchers.with_zip(binary, "import sys; print(sys.argv[0], sys.argv[1:])\n"))
    done = subprocess.run([qemu, copy / "bin" / "python", "-c", REPORT, "x y"], capture_output=True, text=True, env={**os.environ, **JUNK}, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["executable"], report["prefix"], report["argv"]) == (str(copy / "bin" / "python"), str(copy), ["-c", "x y"])
    assert not [p for p in report["path"] if "junk" in p]
    script = subprocess.run([qemu, copy / "bin" / "app", ""], capture_output=True, text=True, check=False)
    assert script.stdout == f"{copy / 'bin' / 'app'} ['']\n", script.stderr


def test_committed_binaries_rebuild_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run([sys.executable, REPO / "src" / "launcher" / "build.py", "-o", tmp_path], check=True, capture_output=True)
    for machine in ("x86_64", "aarch64"):
        assert (tmp_path / machine).read_bytes() == launchers.data.path("launcher", machine).read_bytes(), (
            f"src/shipenv/data/launcher/{machine} is not what src/launcher/launcher.c builds: run src/launcher/build.py"
        )


def _fake_bundle(tmp_path: Path, config: str) -> Path:
    """A bundle whose "interpreter" and "loader" are sh scripts that print the argv they got."""
    root = tmp_path / "fake bundle"
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / ".shipenv").mkdir()
    (root / ".shipenv" / "launcher").write_text(config)
    for rel in ("bin/python3.12", "lib/ld-linux-x86-64.so.2"):
        (root / rel).write_text('#!/bin/sh\nprintf "%s\\n" "$0" "$@" "launcher=${__PYVENV_LAUNCHER__-unset}"\n')
        (root / rel).chmod(0o755)
    launchers.write_launcher(root / "bin" / "python", launchers.native_binary("x86_64") or b"")
    return root


def test_bundled_loader_mode_runs_the_interpreter_through_it(tmp_path: Path) -> None:
    # What --libc bundled writes: every way in goes through lib/ld-linux-*.so.*.
    root = _fake_bundle(tmp_path, "interpreter=bin/python3.12\nexecutable=bin/python\npyvenv-launcher=yes\nloader=lib/ld-linux-x86-64.so.2\nlibrary-path=lib\n")
    done = subprocess.run([root / "bin" / "python", "-c", "x"], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        f"{root}/lib/ld-linux-x86-64.so.2", "--inhibit-cache", "--library-path", f"{root}/lib",
        "--argv0", f"{root}/bin/python", f"{root}/bin/python3.12", "-E", "-s", "-c", "x", f"launcher={root}/bin/python",
    ]  # fmt: skip


def test_without_proc_it_follows_argv0(tmp_path: Path) -> None:
    root = _fake_bundle(tmp_path, "interpreter=bin/python3.12\nexecutable=bin/python\npyvenv-launcher=no\n")
    link_dir = tmp_path / "on path"
    link_dir.mkdir()
    (link_dir / "py").symlink_to(root / "bin" / "python")
    # A mount namespace whose /proc is an empty tmpfs: /proc/self/exe is gone.
    hide_proc = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs none /proc && exec "$@"', "sh"]
    env = {"PATH": f"{link_dir}:/usr/bin:/bin"}
    for argv0 in (str(link_dir / "py"), "py"):
        done = subprocess.run([*hide_proc, argv0, "a"], capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [f"{root}/bin/python3.12", "-E", "-s", "a", "launcher=unset"]
        assert "/proc is not mounted" in done.stderr  # the interpreter's $ORIGIN needs it: say so
    # Started under a name that leads nowhere: a sentence, not a crash.
    execv = f"import os; os.execv({str(root / 'bin' / 'python')!r}, ['nowhere', 'a'])"
    lost = subprocess.run([*hide_proc, sys.executable, "-I", "-c", execv], capture_output=True, text=True, env=env, check=False)
    assert lost.returncode == 127, lost.stderr
    assert "cannot find the bundle" in lost.stderr and "'nowhere'" in lost.stderr and "mount /proc" in lost.stderr
