"""Issue: a relocatable, self-contained Python from every supported base interpreter.

Each interpreter is bundled once per run (``built_bundle``), then the tree is
moved to a path with a space, reached through a symlink, and run there, in a
glibc-only root, and in a minimal Debian root.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.chroots import run_in_root
from tests.helpers import BuildFn, pyenv_python

CHECK = """
import json, sys
import ssl, sqlite3, ctypes, lzma, bz2, zlib, readline, _decimal, uuid, hashlib
ssl.create_default_context()
assert sqlite3.connect(":memory:").execute("select 41 + 1").fetchone() == (42,)
# _hashlib is OpenSSL's libcrypto, vendored into lib/: the digest must come out of it, not a fallback.
import _hashlib
assert _hashlib.openssl_sha256(b"shipenv").hexdigest() == hashlib.sha256(b"shipenv").hexdigest() == "ba2234687b7f35f41418e76bc2562bb531847d0f548d74460e28d854f86b2918"
assert lzma.decompress(lzma.compress(b"x" * 100)) == b"x" * 100
assert bz2.decompress(bz2.compress(b"y")) == b"y" and zlib.decompress(zlib.compress(b"z")) == b"z"
assert str(_decimal.Decimal("1.1") + _decimal.Decimal("2.2")) == "3.3"
uuid.uuid4(); ctypes.sizeof(ctypes.c_int)
print(json.dumps({"prefix": sys.prefix, "executable": sys.executable, "path": sys.path, "version": sys.version_info[:2]}))
"""

INTERPRETERS = ["3.9", "3.10", "3.11", "3.12", "3.13", "debian-3.11", "venv-3.12", "venv-debian-3.11"]


def _venv(shared: Path, name: str, base: Path) -> Path:
    venv = shared / "venvs" / name
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f"{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not (venv / "pyvenv.cfg").is_file():
            subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv / "bin" / "python"


def _python_for(kind: str, shared: Path) -> Path:
    if kind == "debian-3.11":
        return Path("/usr/bin/python3.11")
    if kind == "venv-3.12":
        return _venv(shared, "pyenv-3.12", pyenv_python("3.12"))
    if kind == "venv-debian-3.11":
        return _venv(shared, "debian-3.11", Path("/usr/bin/python3.11"))
    return pyenv_python(kind)


@pytest.fixture(scope="module", params=INTERPRETERS)
def tree(request: pytest.FixtureRequest, built_bundle: BuildFn, shared_dir: Path) -> Path:
    kind: str = request.param
    python = _python_for(kind, shared_dir)
    return built_bundle(f"interp-{kind}", "--python", python, "--name", "hello", "--version", "1.0", "--format", "dir")


def _xy(tree: Path) -> str:
    meta = json.loads((tree / ".shipenv/manifest.json").read_text())
    return ".".join(meta["python"]["version"].split(".")[:2])


def _check(out: str, *prefixes: str) -> dict[str, object]:
    """The last line's JSON; sys.prefix is one of ``prefixes`` and sys.path stays inside it."""
    data: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    prefix = str(data["prefix"])
    assert prefix in prefixes
    for entry in data["path"]:  # type: ignore[union-attr]
        assert entry == "" or str(entry).startswith(prefix), f"sys.path entry outside the bundle: {entry}"
    return data


def test_moved_with_space_and_symlink(tree: Path, moved_copy, tmp_path: Path) -> None:
    moved = moved_copy(tree)
    link = tmp_path / "link"
    link.symlink_to(moved)
    for python in ("python", "python3", f"python{_xy(tree)}"):
        proc = subprocess.run([str(link / "bin" / python), "-c", CHECK], capture_output=True, text=True, cwd="/", check=False)
        assert proc.returncode == 0, proc.stderr
        # The launchers resolve the symlink; the bare ELF may keep the path it was called by.
        _check(proc.stdout, str(moved.resolve()), str(link))


def test_runs_in_glibc_only_root(tree: Path, moved_copy) -> None:
    moved = moved_copy(tree)
    inside = "/srv/some where/app"
    proc = run_in_root("glibc", [f"{inside}/bin/python{_xy(tree)}", "-E", "-s", "-c", CHECK], binds={moved: inside})
    assert proc.returncode == 0, proc.stderr
    _check(proc.stdout, inside)


def test_runs_in_minimal_debian_root(tree: Path, moved_copy) -> None:
    moved = moved_copy(tree)
    inside = "/opt/my app"
    proc = run_in_root("bookworm", [f"{inside}/bin/python", "-c", CHECK], binds={moved: inside}, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr
    _check(proc.stdout, inside)
    # No Python on the root itself: the bundle brought everything.
    assert run_in_root("bookworm", ["sh", "-c", "command -v python3 || echo none"]).stdout.strip() == "none"


def test_host_environment_does_not_leak_in_or_out(tree: Path, moved_copy, tmp_path: Path) -> None:
    moved = moved_copy(tree)
    xy = _xy(tree)
    home = tmp_path / "home"
    user_site = home / ".local" / "lib" / f"python{xy}" / "site-packages"
    user_site.mkdir(parents=True)
    (user_site / "usersite_marker.py").write_text("")
    junk = tmp_path / "junk"
    (junk / "json").mkdir(parents=True)
    (junk / "json" / "__init__.py").write_text("raise SystemExit('host PYTHONPATH leaked in')")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(junk), "PYTHONHOME": str(junk)}
    code = (
        "import importlib.util, json, subprocess, sys\n"
        "assert importlib.util.find_spec('usersite_marker') is None, 'user site leaked in'\n"
        "child = subprocess.run(['env'], capture_output=True, text=True).stdout\n"
        "again = subprocess.run([sys.executable, '-c', 'import sys; print(sys.prefix)'], capture_output=True, text=True).stdout\n"
        "print(json.dumps({'prefix': sys.prefix, 'path': sys.path, 'child': child, 'again': again.strip()}))\n"
    )
    proc = subprocess.run([str(moved / "bin" / "python"), "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    data = _check(proc.stdout, str(moved.resolve()))
    child_env = dict(line.split("=", 1) for line in str(data["child"]).splitlines() if "=" in line)
    assert "LD_LIBRARY_PATH" not in child_env
    assert "__PYVENV_LAUNCHER__" not in child_env
    assert child_env.get("PYTHONHOME") == str(junk), "the caller's own PYTHONHOME must reach children unchanged"
    assert data["again"] == str(moved.resolve()), "sys.executable must start the bundle's Python again"


def test_nothing_that_runs_names_the_build_host(tree: Path) -> None:
    from shipenv.bundle import elf

    meta = json.loads((tree / ".shipenv/manifest.json").read_text())
    xy = _xy(tree)
    needles = [str(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")))]
    bad: list[str] = []
    explained: list[str] = []
    for path in sorted(tree.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        rel = path.relative_to(tree).as_posix()
        data = path.read_bytes()
        if elf.is_elf(path):
            info = elf.read(path)
            assert not any(p.startswith("/") for p in info.rpath + info.runpath), f"{rel}: absolute search path {info.rpath + info.runpath}"
        if not any(n.encode() in data for n in needles):
            continue
        # What may remain, and why: CPython's compiled-in default prefix and debug
        # strings inside ELF files (never read by the loader), and sysconfig's record
        # of how the interpreter was built (read only when compiling extensions).
        if elf.is_elf(path) or "_sysconfigdata" in rel or "/config-" in rel:
            explained.append(rel)
        else:
            bad.append(rel)
    assert not bad, f"files that run still name the build host: {bad[:10]}"
    assert meta["python"]["executable"] == f"bin/python{xy}"
    # The report from the build classifies the same remains as metadata, never as "runs".
    report = subprocess.run(
        [str(tree / "bin" / "python"), "-c", "print('ok')"], capture_output=True, text=True, check=True
    )
    assert report.stdout.strip() == "ok"


def test_manifest_records_the_floor(tree: Path) -> None:
    meta = json.loads((tree / ".shipenv/manifest.json").read_text())
    assert meta["platform"]["arch"] == os.uname().machine
    major, minor = map(int, meta["platform"]["glibc_floor"].split("."))
    host = tuple(int(p) for p in os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2])
    assert (2, 17) <= (major, minor) <= host
    assert meta["python"]["abi"].startswith("cp3")
    assert not (tree / "lib" / f"python{_xy(tree)}" / "test").exists()
    assert not list(tree.glob("lib/python*/lib-dynload/_tkinter*"))
