"""Issue 13: ``--libc bundled``: a bundle built here runs on Debian 11, in a root with no libc, and on musl.

The reference service stack, built once with ``--libc bundled`` (plus a wheel
that ships an ELF executable as a command), runs a real operation per package
in the bullseye root (glibc 2.31), the busybox root (a static busybox, no libc
at all) and the musl root (musl plus a static busybox, as on Alpine): through
``bin/python``, gunicorn on PATH serving a request, children started as
``sys.executable`` (subprocess, spawn and forkserver pools,
ProcessPoolExecutor, os.execv), and host programs that see none of it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.chroots import OverlayRoot, run_in_root
from tests.helpers import REPO, STACK, STACK_CHECK, BuildFn, pyenv_python, run_shipenv

INSIDE = "/srv/app 2"
CHILDREN = r'''
import concurrent.futures, json, multiprocessing, os, platform, subprocess, sys


def square(x):
    return x * x


def where(_):
    return sys.executable, platform.libc_ver()[1]


if __name__ == "__main__":
    import locale

    out = {"executable": sys.executable, "prefix": sys.prefix, "libc": platform.libc_ver()[1], "locale": locale.setlocale(locale.LC_CTYPE), "encoding": sys.stdout.encoding}
    out["subprocess"] = subprocess.run(
        [sys.executable, "-c", "import platform, sys; print(sys.executable, platform.libc_ver()[1])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().rsplit(" ", 1)
    for method in ("spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            out[method] = pool.map(where, range(2))[0]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        out["executor"] = sum(ex.map(square, range(5)))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.execv(sys.executable, [sys.executable, "-c", "import platform; print(platform.libc_ver()[1])"])
    os.close(w)
    out["execv"] = os.read(r, 100).decode().strip()
    os.waitpid(pid, 0)
    # Host programs: what they inherit, and which libc they load.
    out["env"] = sorted(line.split("=", 1)[0] for line in subprocess.run(["env"], capture_output=True, text=True, check=True).stdout.splitlines())
    maps = subprocess.run(["cat", "/proc/self/maps"], capture_output=True, text=True, check=True).stdout
    out["host_libs"] = sorted({line.split()[-1] for line in maps.splitlines() if ".so" in line})
    print("CHILDREN " + json.dumps(out))
'''

HELLO_ELF = r'''
#include <stdio.h>
#include <stdlib.h>
#include <gnu/libc-version.h>
int main(int argc, char **argv) {
    printf("ELF %s %s %s\n", argv[0], gnu_get_libc_version(), getenv("LD_LIBRARY_PATH") ? "leaked" : "clean");
    return argc == 1 ? 0 : 3;
}
'''


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def elf_command_wheel(directory: Path) -> Path:
    """A wheel whose only command is an ELF executable linked against this machine's glibc."""
    wheel = directory / "elfcmd-1.0-py3-none-any.whl"
    if wheel.is_file():
        return wheel
    src = directory / "hello.c"
    src.write_text(HELLO_ELF)
    subprocess.run(["gcc", "-O2", "-o", str(directory / "hello-elf"), str(src)], check=True)
    files = {
        "elfcmd/__init__.py": b"",
        "elfcmd-1.0.data/scripts/hello-elf": (directory / "hello-elf").read_bytes(),
        "elfcmd-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: elfcmd\nVersion: 1.0\n",
        "elfcmd-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [_record_line(name, data) for name, data in files.items()] + ["elfcmd-1.0.dist-info/RECORD,,"]
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o755 << 16
            zf.writestr(info, data)
        zf.writestr("elfcmd-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    tmp.rename(wheel)
    return wheel


@pytest.fixture(scope="module")
def bundled_stack(built_bundle: BuildFn, shared_dir: Path) -> Path:
    work = shared_dir / "libc-stack-req"
    work.mkdir(exist_ok=True)
    req = work / "requirements.txt"
    req.write_text("\n".join([*STACK, str(REPO / "tests" / "packages" / "stackapp"), str(elf_command_wheel(work))]) + "\n")
    return built_bundle(
        "stack-3.12-bundled-libc", "-r", req, "--python", pyenv_python("3.12"), "--name", "app", "--version", "2.0.0",
        "--entry", "where=stackapp:where", "--libc", "bundled", "--format", "dir",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bundled_tree_carries_glibc_and_records_its_floor(bundled_stack: Path) -> None:
    meta = json.loads((bundled_stack / ".shipenv/manifest.json").read_text())
    platform = meta["platform"]
    assert platform["libc"] == "bundled" and platform["glibc"] == "2.36" and platform["kernel_floor"] == "3.2.0"
    assert platform["glibc_floor"] is None, "a bundle that carries its glibc has no host glibc floor"
    for name in ("ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libstdc++.so.6"):
        assert name in meta["vendored_libraries"], name
    # glibc's own files are copied byte for byte: the loader finds them through --library-path.
    assert (bundled_stack / "lib/libc.so.6").read_bytes() == Path("/lib/x86_64-linux-gnu/libc.so.6").read_bytes()
    # The wheel's ELF command moved behind a launcher that uses the loader.
    assert (bundled_stack / "libexec/hello-elf").read_bytes()[:4] == b"\x7fELF"
    assert (bundled_stack / "bin/hello-elf").read_bytes().startswith(b"#!/bin/sh\n")
    shown = run_shipenv("inspect", bundled_stack).stdout
    assert "  libc       glibc 2.36 (bundled), needs Linux >= 3.2 on x86_64\n" in shown


@pytest.mark.parametrize("kind", ["bullseye", "busybox", "musl"])
def test_stack_runs_without_the_hosts_glibc(kind: str, bundled_stack: Path, moved_copy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    moved = moved_copy(bundled_stack)
    check = tmp_path / "check"
    check.mkdir()
    (check / "stack.py").write_text(STACK_CHECK)
    (check / "children.py").write_text(CHILDREN)
    (check / "hosts").write_text("127.0.0.1 localhost\n")  # what a container runtime writes
    port = _free_port()
    client = (
        "import time, urllib.request\n"
        "for _ in range(150):\n"
        "    try:\n"
        f"        print('SERVED ' + urllib.request.urlopen('http://localhost:{port}/', timeout=5).read().decode()); break\n"
        "    except OSError: time.sleep(0.1)\n"
    )
    script = (
        "set -e\n"
        "mkdir -p /usr/local/bin\n"
        f"ln -s '{INSIDE}/bin/gunicorn' /usr/local/bin/gunicorn\n"
        "cd /tmp\n"
        f"'{INSIDE}/bin/python' /check/stack.py\n"
        f"'{INSIDE}/bin/python' /check/children.py\n"
        f"'{INSIDE}/bin/hello-elf'\n"
        f"'{INSIDE}/bin/where'\n"
        f"gunicorn -b 127.0.0.1:{port} -w 1 --worker-tmp-dir /dev/shm stackapp:app 2>/tmp/gunicorn.log & pid=$!\n"
        f"'{INSIDE}/bin/python' -c \"$1\"\n"
        "kill $pid; wait $pid || true\n"
    )
    # LANG as images set it: in the C locale CPython itself would export LC_CTYPE=C.UTF-8 (PEP 538).
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    with OverlayRoot(kind) as root:
        proc = root.run(["sh", "-c", script, "sh", client], binds={moved: INSIDE, check: "/check", check / "hosts": "/etc/hosts"}, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert json.loads(lines[0])["prefix"] == INSIDE
    children = json.loads(next(line for line in lines if line.startswith("CHILDREN "))[9:])
    launcher = f"{INSIDE}/bin/python"
    assert children["executable"] == launcher and children["prefix"] == INSIDE and children["libc"] == "2.36"
    # No locale data is bundled: bullseye's own C.UTF-8 is used, and where a root has none
    # glibc stays in "C" and CPython runs in UTF-8 mode (PEP 540): text is UTF-8 either way.
    assert children["locale"] == ("C.UTF-8" if kind == "bullseye" else "C") and children["encoding"] == "utf-8"
    assert children["subprocess"] == [launcher, "2.36"]
    assert children["spawn"] == [launcher, "2.36"] and children["forkserver"] == [launcher, "2.36"]
    assert children["executor"] == 30 and children["execv"] == "2.36"
    # Host programs inherit nothing the bundle added (PWD/SHLVL come from this test's own sh script)...
    assert set(children["env"]) <= {*env, "PWD", "SHLVL", "OLDPWD"}, children["env"]
    # ... and run on the host's own C library, never the bundle's.
    assert not any(lib.startswith(INSIDE) for lib in children["host_libs"]), children["host_libs"]
    if kind == "bullseye":
        assert any(lib.endswith("libc-2.31.so") for lib in children["host_libs"]), children["host_libs"]
    assert f"ELF {INSIDE}/bin/hello-elf 2.36 clean" in lines
    assert f"WHERE {launcher} 2.36" in lines  # an --entry command
    served = json.loads(next(line for line in lines if line.startswith("SERVED "))[7:])
    assert served["prefix"] == INSIDE and served["sum"] == 10


def test_bare_elf_command_needs_the_loader(bundled_stack: Path) -> None:
    """Why the ELF command is wrapped: on its own it asks the host (here: none) for glibc."""
    proc = run_in_root("busybox", [f"{INSIDE}/libexec/hello-elf"], binds={bundled_stack: INSIDE})
    assert proc.returncode != 0


@pytest.fixture(scope="module")
def small_apps(built_bundle: BuildFn) -> dict[str, Path]:
    """One small app as tar.gz, built with each --libc mode (the deploy tests' archives)."""
    common = ["--python", pyenv_python("3.12"), "--name", "tiny", "--version", "1.0", "--format", "tar.gz"]
    return {mode: built_bundle(f"tiny-{mode}-libc", *common, "--libc", mode) for mode in ("host", "bundled")}


def test_shipenv_deploy_takes_the_bundled_build_on_an_old_glibc(small_apps: dict[str, Path], tmp_path: Path) -> None:
    site = tmp_path / "srv"
    old = dict(os.environ, SHIPENV_HOST_GLIBC="2.31")  # what bullseye reports
    refused = run_shipenv("deploy", small_apps["host"], "--root", site, env=old, check=False)
    assert refused.returncode == 4  # a refused host
    assert refused.stderr.splitlines()[:2] == [
        "error: This host has glibc 2.31 but tiny-1.0 needs 2.36 or newer; deploy it on a newer distribution or rebuild it on an older one.",
        "hint: Or rebuild it with --libc bundled: it then carries its own glibc and needs only a Linux kernel.",
    ]
    run_shipenv("deploy", small_apps["bundled"], "--root", site, env=old)
    # The deployed release runs in the bullseye root itself.
    proc = run_in_root("bullseye", ["/srv/app/current/bin/python", "-c", "import platform, ssl; print(platform.libc_ver()[1])"], binds={site: "/srv/app"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2.36"


def test_deploy_sh_in_bullseye(small_apps: dict[str, Path], tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    incoming.mkdir()
    for archive in small_apps.values():
        shutil.copy(archive, incoming / f"{archive.parent.name}.tar.gz")
    with tarfile.open(small_apps["bundled"]) as tar:
        member = tar.extractfile("tiny-1.0/.shipenv/deploy.sh")
        assert member is not None
        (incoming / "deploy.sh").write_bytes(member.read())
    with OverlayRoot("bullseye") as root:
        refused = root.run(["sh", "/in/deploy.sh", "deploy", "/in/tiny-host-libc.tar.gz", "/srv/app"], binds={incoming: "/in"})
        assert refused.returncode == 4  # a refused host
        assert refused.stderr.splitlines() == [
            "error: This host has glibc 2.31 but tiny-1.0 needs 2.36 or newer; deploy it on a newer distribution or rebuild it on an older one.",
            "hint: Or rebuild it with --libc bundled: it then carries its own glibc and needs only a Linux kernel.",
        ]
        done = root.run(["sh", "/in/deploy.sh", "deploy", "/in/tiny-bundled-libc.tar.gz", "/srv/app", "--check", "bin/python -c 'import ssl'"], binds={incoming: "/in"})
        assert done.returncode == 0, done.stderr
        ran = root.run(["/srv/app/current/bin/python", "-c", "import platform; print(platform.libc_ver()[1])"])
        assert ran.returncode == 0 and ran.stdout.strip() == "2.36", ran.stderr


def test_kernel_floor_is_checked_by_deploy_sh(small_apps: dict[str, Path], tmp_path: Path) -> None:
    """A kernel older than the ABI note's is refused in a sentence (uname faked on PATH)."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "uname").write_text('#!/bin/sh\ncase $1 in -r) echo 2.6.32-754.el6.x86_64 ;; *) exec /bin/uname "$@" ;; esac\n')
    (fake / "uname").chmod(0o755)
    with tarfile.open(small_apps["bundled"]) as tar:
        member = tar.extractfile("tiny-1.0/.shipenv/deploy.sh")
        assert member is not None
        script = tmp_path / "deploy.sh"
        script.write_bytes(member.read())
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    done = subprocess.run(["sh", str(script), "deploy", str(small_apps["bundled"]), str(tmp_path / "srv")], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 4
    assert done.stderr == "error: This host runs Linux 2.6.32 but tiny-1.0 carries glibc 2.36, which needs Linux 3.2.0 or newer; deploy it on a newer kernel.\n"
    assert not (tmp_path / "srv" / "current").exists()


INTERPRETERS = ["3.9", "3.10", "3.11", "3.12", "3.13", "debian-3.11"]


@pytest.mark.parametrize("which", INTERPRETERS)
def test_every_base_python_runs_in_the_no_libc_root(which: str, built_bundle: BuildFn, moved_copy) -> None:  # type: ignore[no-untyped-def]
    python = Path("/usr/bin/python3.11") if which == "debian-3.11" else pyenv_python(which)
    tree = built_bundle(f"libc-bundled-{which}", "--python", python, "--name", "base", "--version", "1", "--libc", "bundled", "--format", "dir")
    moved = moved_copy(tree)
    inside = "/opt/my base"
    code = (
        "import ctypes, json, platform, sqlite3, ssl, subprocess, sys; ssl.create_default_context(); "
        "child = subprocess.run([sys.executable, '-c', 'import sys; print(sys.prefix)'], capture_output=True, text=True, check=True).stdout.strip(); "
        "print(json.dumps([sys.executable, sys.prefix, platform.libc_ver()[1], child]))"
    )
    proc = run_in_root("busybox", [f"{inside}/bin/python", "-c", code], binds={moved: inside})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [f"{inside}/bin/python", inside, "2.36", inside]


def test_without_a_shell_the_loader_is_the_command(small_apps: dict[str, Path], tmp_path: Path) -> None:
    """The loader line itself, as the README gives it for a command line that must name bin/python3.X."""
    with tarfile.open(small_apps["bundled"]) as tar:
        tar.extractall(tmp_path, filter="tar")
    app = "/app"
    argv = [f"{app}/lib/ld-linux-x86-64.so.2", "--inhibit-cache", "--library-path", f"{app}/lib", "--argv0", f"{app}/bin/python",
            f"{app}/bin/python3.12", "-E", "-s", "-c", "import platform, ssl, sys; print(sys.executable, sys.prefix, platform.libc_ver()[1])"]  # fmt: skip
    proc = run_in_root("glibc", argv, binds={tmp_path / "tiny-1.0": app})  # distroless: no shell at all
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"{app}/bin/python", app, "2.36"]
