"""Issue: put the app in the bundle (a real service stack, four sources, launchers)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chroots import OverlayRoot, run_in_root
from tests.helpers import REPO, STACK, STACK_CHECK, BuildFn, pyenv_python, requirements_file, run_shipenv

PACKAGES = REPO / "tests" / "packages"


_requirements = requirements_file


@pytest.fixture(scope="module", params=["3.11", "3.12"])
def stack(request: pytest.FixtureRequest, built_bundle: BuildFn, shared_dir: Path) -> Path:
    xy: str = request.param
    req_dir = shared_dir / f"stack-req-{xy}"
    req_dir.mkdir(exist_ok=True)
    req = _requirements(req_dir, [*STACK, str(PACKAGES / "stackapp")])
    return built_bundle(
        f"stack-{xy}", "-r", req, "--python", pyenv_python(xy), "--name", "app", "--version", "2.0.0",
        "--entry", "serve=stackapp:serve", "--format", "dir",
    )


def _xy(tree: Path) -> str:
    return ".".join(json.loads((tree / ".shipenv/manifest.json").read_text())["python"]["version"].split(".")[:2])


def test_stack_runs_in_glibc_only_root(stack: Path, moved_copy, tmp_path: Path) -> None:
    moved = moved_copy(stack)
    check = tmp_path / "check.py"
    check.write_text(STACK_CHECK)
    inside = "/srv/my app"
    proc = run_in_root(
        "glibc", [f"{inside}/bin/python{_xy(stack)}", "-E", "-s", "/check/check.py"],
        binds={moved: inside, tmp_path: "/check"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["prefix"] == inside


def test_stack_distributions_recorded(stack: Path) -> None:
    meta = json.loads((stack / ".shipenv/manifest.json").read_text())
    names = {d["name"] for d in meta["distributions"]}
    for wanted in ("django", "gunicorn", "numpy", "pandas", "psycopg", "psycopg-binary", "stackapp", "lxml", "pillow"):
        assert wanted in names
    # libstdc++/libgcc_s come along by policy so numpy/pillow import in a glibc-only root.
    assert "libstdc++.so.6" in meta["vendored_libraries"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_stack_in_minimal_debian_root(stack: Path, moved_copy) -> None:
    moved = moved_copy(stack)
    port = _free_port()
    client = (
        "import json, time, urllib.request\n"
        "for _ in range(100):\n"
        "    try:\n"
        f"        print(urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=5).read().decode()); break\n"
        "    except OSError: time.sleep(0.1)\n"
    )
    script = (
        "set -e\n"
        "ln -s '/srv/app 2/bin/gunicorn' /usr/local/bin/gunicorn\n"
        "ln -s '/srv/app 2/bin/serve' /usr/local/bin/serve\n"
        "cd /\n"
        "gunicorn --version\n"
        f"serve {port} & pid=$!\n"
        f"'/srv/app 2/bin/python' -c \"$1\"\n"
        "wait $pid\n"
    )
    with OverlayRoot("bookworm") as root:
        proc = root.run(["sh", "-c", script, "sh", client], binds={moved: "/srv/app 2"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gunicorn (version ")
    answer = json.loads(lines[-1])
    assert answer["prefix"] == "/srv/app 2" and answer["sum"] == 10


def test_pythonpath_cannot_shadow_bundle_packages(stack: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "numpy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise SystemExit('the host PYTHONPATH won')\n")
    env = dict(os.environ, PYTHONPATH=str(fake.parent))
    code = "import numpy, sys; print(numpy.__file__)"
    # f2py is numpy's console script: a launcher, which must be isolated too.
    proc = subprocess.run([str(stack / "bin" / "f2py"), "-v"], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()[0].isdigit()  # numpy's own version string
    out = subprocess.run([str(stack / "bin" / "python"), "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().startswith(str(stack.resolve()))


def test_console_scripts_are_relocatable_launchers(stack: Path, moved_copy, tmp_path: Path) -> None:
    moved = moved_copy(stack)
    link = tmp_path / "usr-local-bin-django-admin"
    link.symlink_to(moved / "bin" / "django-admin")
    proc = subprocess.run([str(link), "--version"], capture_output=True, text=True, cwd="/", check=False)
    assert proc.returncode == 0, proc.stderr
    # Without a shell: the launcher is also valid Python for the bare interpreter.
    proc2 = subprocess.run([str(moved / "bin" / f"python{_xy(stack)}"), str(moved / "bin" / "django-admin"), "--version"], capture_output=True, text=True, check=False)
    assert proc2.returncode == 0 and proc2.stdout == proc.stdout
    for script in (moved / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            head = script.read_bytes()[:200]
            if head.startswith(b"#!"):
                assert head.split(b"\n")[0] == b"#!/bin/sh", f"{script.name} has a host shebang"


def test_sdist_extension_against_missing_system_library(built_bundle: BuildFn, shared_dir: Path, moved_copy) -> None:
    req_dir = shared_dir / "zext-req"
    req_dir.mkdir(exist_ok=True)
    req = _requirements(req_dir, [str(PACKAGES / "zext")])
    tree = built_bundle("zext", "-r", req, "--python", pyenv_python("3.12"), "--name", "zext", "--version", "1", "--format", "dir")
    from shipenv.bundle import elf

    ext = next(tree.glob("lib/python3.12/site-packages/zext/_zext*.so"))
    info = elf.read(ext)
    assert not any(p.startswith("/") for p in info.rpath + info.runpath), info
    assert (tree / "lib" / "libz.so.1").is_file()
    moved = moved_copy(tree)
    proc = run_in_root("glibc", ["/app/bin/python3.12", "-E", "-s", "-c", "import zext; print(zext.zlib_version())"], binds={moved: "/app"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("1.")


def _dists(artifact: Path) -> set[tuple[str, str]]:
    meta = json.loads((artifact / ".shipenv/manifest.json").read_text())
    return {(d["name"], d["version"]) for d in meta["distributions"]}


def test_four_sources_give_the_same_distributions(built_bundle: BuildFn, shared_dir: Path, tmp_path: Path) -> None:
    py = pyenv_python("3.11")
    project = PACKAGES / "srcapp"
    work = shared_dir / "four-sources"
    work.mkdir(exist_ok=True)
    wheelhouse = work / "wheelhouse"
    if not wheelhouse.is_dir():
        subprocess.run([str(py), "-m", "pip", "wheel", "-q", "-w", str(wheelhouse), str(project)], check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    venv = work / "venv"
    if not (venv / "pyvenv.cfg").is_file():
        subprocess.run([str(py), "-m", "venv", "--without-pip", str(venv)], check=True)
        subprocess.run([sys.executable, "-m", "pip", "-q", "--python", str(venv / "bin" / "python"), "install", "--no-index", "--find-links", str(wheelhouse), "srcapp"], check=True)
    req = _requirements(work, [str(project)])
    common = ["--python", py, "--name", "srcapp", "--version", "0.2.0", "--format", "dir"]
    bundles = {
        "requirements": built_bundle("src-req", "-r", req, *common),
        "project": built_bundle("src-project", project, "--format", "dir", "--python", py),
        "wheelhouse": built_bundle("src-wheels", "--wheels", wheelhouse, *common),
        "venv": built_bundle("src-venv", "--venv", venv, "--name", "srcapp", "--version", "0.2.0", "--format", "dir"),
    }
    found = {source: _dists(path) for source, path in bundles.items()}
    assert {("srcapp", "0.2.0")} <= found["requirements"]
    assert len({frozenset(v) for v in found.values()}) == 1, found
    for source, path in bundles.items():
        out = subprocess.run([str(path / "bin" / "srcapp")], capture_output=True, text=True, check=False)
        assert out.returncode == 0 and out.stdout == "host: xn--bcher-kva.example\n", (source, out.stderr)
    # Name and version come from the project's metadata when there is one.
    assert bundles["project"].name == "srcapp-0.2.0"


def _pure_wheel(house: Path, name: str, version: str, *requires: str) -> None:
    """A minimal pure-Python wheel: ``name`` with ``VERSION = version``, depending on ``requires``."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(), f"{dist}/METADATA": meta.encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}" for n, d in files.items()]
    with zipfile.ZipFile(house / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
        zf.writestr(f"{dist}/RECORD", "\n".join([*record, f"{dist}/RECORD,,"]) + "\n")


def test_a_wheelhouse_with_requirements_is_resolved_by_uv_and_never_starts_pip(tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    _pure_wheel(house, "alpha", "1.0", "beta>=1")
    _pure_wheel(house, "beta", "1.0")
    _pure_wheel(house, "beta", "2.0")
    _pure_wheel(house, "gamma", "1.0")  # in the wheelhouse, not required: stays out
    req = _requirements(tmp_path, ["alpha"])
    cache = tmp_path / "cache"
    proc = run_shipenv("build", "-v", "-o", tmp_path / "out", "-r", req, "--wheels", house, "--python", pyenv_python("3.12"),
                       "--name", "a", "--version", "1", "--format", "dir", "--cache-dir", cache)
    assert "wheels for 2 pin(s) found without pip; pip fetches or builds 0" in proc.stderr, proc.stderr
    assert "pip wheel output" not in proc.stderr  # no pip process ...
    assert not (cache / "pip").exists() and not (cache / "wheels").exists()  # ... no copy of pip, nothing stored
    tree = tmp_path / "out" / "a-1"
    assert _dists(tree) == {("alpha", "1.0"), ("beta", "2.0")}
    run = subprocess.run([str(tree / "bin" / "python"), "-c", "import alpha, beta; print(alpha.VERSION, beta.VERSION)"],
                         capture_output=True, text=True, check=False)
    assert run.stdout == "1.0 2.0\n", run.stderr
    # Byte-compiled while installing, like every wheel: the pyc is there and names the file relative to the bundle.
    pyc = tree / "lib" / "python3.12" / "site-packages" / "beta" / "__pycache__" / "__init__.cpython-312.pyc"
    assert b"lib/python3.12/site-packages/beta/__init__.py" in pyc.read_bytes() and str(tmp_path).encode() not in pyc.read_bytes()


def _fails(tmp_path: Path, *args: str | os.PathLike[str]) -> str:
    out = tmp_path / "out"
    proc = run_shipenv("build", "-o", out, *args, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert not out.exists() or not [p for p in out.iterdir()], "a failed build left files behind"
    return errors[0]


def test_unresolvable_requirement(tmp_path: Path) -> None:
    req = _requirements(tmp_path, ["shipenv-no-such-package-xyz==1.0"])
    msg = _fails(tmp_path, "-r", req, "--python", pyenv_python("3.12"), "--name", "a", "--version", "1", "--format", "dir")
    assert "shipenv-no-such-package-xyz" in msg


def test_wheel_for_another_platform(tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    (house / "foo-1.0-cp27-cp27mu-manylinux1_i686.whl").write_bytes(b"not really a wheel")
    msg = _fails(tmp_path, "--wheels", house, "--python", pyenv_python("3.12"), "--name", "a", "--version", "1", "--format", "dir")
    assert "foo-1.0-cp27-cp27mu-manylinux1_i686.whl" in msg and "3.12" in msg


def test_sdist_that_fails_to_build(tmp_path: Path) -> None:
    req = _requirements(tmp_path, [str(PACKAGES / "badsdist")])
    msg = _fails(tmp_path, "-r", req, "--python", pyenv_python("3.12"), "--name", "a", "--version", "1", "--format", "dir")
    assert "badsdist" in msg


def test_editable_install_in_venv_is_refused(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([str(pyenv_python("3.12")), "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "-q", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-e", str(PACKAGES / "srcapp")], check=True)
    msg = _fails(tmp_path, "--venv", venv, "--name", "a", "--version", "1", "--format", "dir")
    assert "editable" in msg and "srcapp" in msg
