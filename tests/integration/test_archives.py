"""Issue #4: bundle archives end to end, through the real CLI and the system's tar.

Real interpreter-only bundles of pyenv's 3.12 are built once per run in each
format, unpacked by GNU tar (what a server has) into a path with a space, and
run there; two builds a second apart give the same bytes; ``verify`` catches
a changed byte, a deleted file and an added file by name; ``inspect --json``
says everything a deploy script needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from shipenv.bundle import manifest
from tests.helpers import BuildFn, pyenv_python, run_shipenv

IMPORTS = "import ssl, sqlite3; print(1)"
TAR_FLAGS = {"tar.zst": "--zstd", "tar.gz": "-z", "tar.xz": "-J"}


def hello(built_bundle: BuildFn, fmt: str) -> Path:
    """hello-1.0 in ``fmt``; tar.zst is built without --format, as the default; xz at level 2 to stay quick."""
    args: list[str | os.PathLike[str]] = ["--python", pyenv_python("3.12"), "--name", "hello", "--version", "1.0"]
    if fmt == "tar.xz":
        args += ["--format", fmt, "--level", "2"]
    elif fmt != "tar.zst":
        args += ["--format", fmt]
    return built_bundle(f"archives-hello-{fmt}", *args)


@pytest.fixture(params=list(TAR_FLAGS))
def packed(request: pytest.FixtureRequest, built_bundle: BuildFn) -> tuple[str, Path]:
    return request.param, hello(built_bundle, request.param)


def system_untar(path: Path, fmt: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", TAR_FLAGS[fmt], "-xf", str(path), "-C", str(dest)], check=True)
    return dest / "hello-1.0"


def test_system_tar_unpacks_a_bundle_that_runs_and_verifies(packed: tuple[str, Path], tmp_path: Path) -> None:
    fmt, path = packed
    assert path.name == f"hello-1.0.{fmt}"
    listing = subprocess.run(["tar", TAR_FLAGS[fmt], "-tvf", str(path)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split()[-1] for line in listing[:4]] == ["hello-1.0/", "hello-1.0/.shipenv/", "hello-1.0/.shipenv/manifest.json", "hello-1.0/.shipenv/RECORD"]
    assert all(" 0/0 " in line for line in listing)

    root = system_untar(path, fmt, tmp_path / "un packed here")
    done = subprocess.run([str(root / "bin" / "python3.12"), "-c", IMPORTS], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout == "1\n", done.stderr

    for target in (path, root):
        ok = run_shipenv("verify", target)
        assert ok.stdout.startswith("OK: ") and "match the manifest of hello-1.0" in ok.stdout

    if fmt == "tar.xz":  # --level 2 reached lzma through the CLI and the pipeline: preset 2 means a 2 MiB dictionary
        assert "--lzma2=dict=2MiB" in subprocess.run(["xz", "-lvv", str(path)], capture_output=True, text=True, check=True).stdout


def test_verify_run_uses_a_moved_copy(built_bundle: BuildFn) -> None:
    path = hello(built_bundle, "tar.gz")
    check = "bin/python3.12 -c 'import ssl, sqlite3, sys; assert \" \" in sys.prefix, sys.prefix; print(sys.prefix)'"
    assert run_shipenv("verify", path, "--run", check).returncode == 0
    failed = run_shipenv("verify", path, "--run", "bin/python3.12 -c 'import no_such_module'", check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr.split("it printed:")[0]
    assert "ModuleNotFoundError: No module named 'no_such_module'" in failed.stderr


def test_two_builds_a_second_apart_are_identical(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    # --no-cache: both trees are built from scratch, not one copied from the other's cached layers.
    common = ["--python", str(pyenv_python("3.12")), "--name", "app", "--version", "2.0.0", "--no-cache"]
    run_shipenv("build", *common, "-o", tmp_path / "one" / "app-2.0.0.tar.gz", env=env)  # -o names the file
    time.sleep(1.1)
    run_shipenv("build", *common, "--format", "tar.gz", "-o", tmp_path / "two", env=env)
    one, two = tmp_path / "one" / "app-2.0.0.tar.gz", tmp_path / "two" / "app-2.0.0.tar.gz"
    assert manifest.hash_file(one) == manifest.hash_file(two)
    for artifact in (one, two):
        sums = artifact.with_name(artifact.name + ".sha256")
        assert sums.read_text() == f"{manifest.hash_file(artifact)[0]}  app-2.0.0.tar.gz\n"
        check = subprocess.run(["sha256sum", "-c", sums.name], cwd=artifact.parent, capture_output=True, text=True, check=False)
        assert check.returncode == 0 and check.stdout.strip() == "app-2.0.0.tar.gz: OK"


@pytest.fixture
def unpacked(built_bundle: BuildFn, tmp_path: Path) -> Path:
    return system_untar(hello(built_bundle, "tar.zst"), "tar.zst", tmp_path / "a copy")


def _verify_fails(root: Path, *expected: str) -> None:
    done = run_shipenv("verify", root, check=False)
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    first = done.stderr.splitlines()[0]
    for text in expected:
        assert text in first, first


def test_verify_catches_a_changed_byte_a_deleted_file_and_an_added_file(unpacked: Path) -> None:
    os_py = unpacked / "lib" / "python3.12" / "os.py"
    original = os_py.read_bytes()
    os_py.write_bytes(original.replace(b"import abc", b"import abd", 1))
    _verify_fails(unpacked, "does not match its manifest: 1 changed (lib/python3.12/os.py)")
    os_py.write_bytes(original)

    decoder = unpacked / "lib" / "python3.12" / "json" / "decoder.py"
    kept = decoder.read_bytes()
    decoder.unlink()
    _verify_fails(unpacked, "1 missing (lib/python3.12/json/decoder.py)")
    decoder.write_bytes(kept)

    (unpacked / "lib" / "python3.12" / "site-packages" / "evil.py").write_text("print('hi')\n")
    _verify_fails(unpacked, "1 extra (lib/python3.12/site-packages/evil.py)")


def test_verify_catches_a_host_runpath_in_an_unpacked_copy(unpacked: Path) -> None:
    real = unpacked / "bin" / "python3.12"
    shutil.copyfile(pyenv_python("3.12").resolve(), real)  # the unrelocated original
    _verify_fails(unpacked, "1 changed (bin/python3.12)", "bin/python3.12 (RUNPATH /")


def test_inspect_json_carries_every_field(built_bundle: BuildFn, tmp_path: Path) -> None:
    path = hello(built_bundle, "tar.zst")
    info = json.loads(run_shipenv("inspect", "--json", path).stdout)
    assert info["name"] == "hello" and info["version"] == "1.0"
    assert info["python"]["implementation"] == "cpython" and info["python"]["version"].startswith("3.12.")
    assert info["python"]["abi"] == "cp312" and info["python"]["executable"] == "bin/python3.12"
    assert info["platform"]["arch"] == "x86_64"
    assert info["platform"]["glibc_floor"] == "2.36" and info["platform"]["tag"] == "manylinux_2_36_x86_64"
    assert info["distributions"] == []
    assert "libssl.so.3" in info["vendored_libraries"]
    assert info["build"]["source_date_epoch"] == 1577836800 and info["build"]["time"] == "2020-01-01T00:00:00Z"
    sha = path.with_name(path.name + ".sha256").read_text().split()[0]
    assert info["archive"] == {"format": "tar.zst", "size": path.stat().st_size, "sha256": sha}

    root = system_untar(path, "tar.zst", tmp_path / "x")
    files = [p for _, p in manifest.walk(root)]
    assert info["files"] == len(files)
    record = manifest.parse_record((root / ".shipenv" / "RECORD").read_bytes())
    assert info["size"] == sum(e.size or 0 for e in record.values())
    same = json.loads(run_shipenv("inspect", "--json", root).stdout)
    assert same == {**info, "archive": None}

    text = run_shipenv("inspect", path).stdout
    assert text.startswith("hello 1.0\n") and "glibc >= 2.36" in text and f"sha256 {sha}" in text
