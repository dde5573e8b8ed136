"""Every mistake a user can make in ``shipenv build`` gets one sentence, a non-zero
exit, no traceback, and nothing half-written where the artifact would go."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import zipfile
from pathlib import Path

from tests.helpers import pyenv_python, run_shipenv, small_tmpfs


def _fails(out: Path, *args: str | Path) -> str:
    proc = run_shipenv("build", "-o", out, *args, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    leftovers = [p.name for p in out.iterdir()] if out.is_dir() else []
    assert not [n for n in leftovers if n.endswith("shipenv-tmp")], leftovers
    return errors[0]


def test_python_that_does_not_exist(tmp_path: Path) -> None:
    msg = _fails(tmp_path / "out", "--python", "/nonexistent/python3.12", "--format", "dir")
    assert "/nonexistent/python3.12 does not exist" in msg
    msg = _fails(tmp_path / "out", "--python", "python9.99", "--format", "dir")
    assert "python9.99 was not found" in msg


def test_python_that_is_not_cpython(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 'I am not Python' >&2\nexit 3\n")
    fake.chmod(0o755)
    msg = _fails(tmp_path / "out", "--python", fake, "--format", "dir")
    assert "is not a working CPython" in msg
    msg = _fails(tmp_path / "out", "--python", "/bin/ls", "--format", "dir")
    assert "/bin/ls" in msg


def test_output_that_exists_and_is_not_empty(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "hello-1.0").mkdir(parents=True)
    (out / "hello-1.0" / "keep.txt").write_text("precious")
    msg = _fails(out, "--python", pyenv_python("3.12"), "--name", "hello", "--version", "1.0", "--format", "dir")
    assert "exists and is not empty" in msg
    assert (out / "hello-1.0" / "keep.txt").read_text() == "precious"


def _wheel_needing_missing_library(tmp: Path) -> Path:
    """A wheel whose extension needs a library that was deleted after linking."""
    (tmp / "gone.c").write_text("int shipenv_gone(void) { return 1; }\n")
    (tmp / "ext.c").write_text("int shipenv_gone(void);\nint use(void) { return shipenv_gone(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libshipenvgone.so.1", "-o", "libshipenvgone.so.1", "gone.c"], cwd=tmp, check=True)
    so = "_needsgone.cpython-312-x86_64-linux-gnu.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", so, "ext.c", "-L.", "-l:libshipenvgone.so.1"], cwd=tmp, check=True)
    (tmp / "libshipenvgone.so.1").unlink()
    house = tmp / "house"
    house.mkdir()
    wheel = house / "needsgone-1.0-cp312-cp312-linux_x86_64.whl"
    files = {
        "needsgone/__init__.py": b"",
        f"needsgone/{so}": (tmp / so).read_bytes(),
        "needsgone-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: needsgone\nVersion: 1.0\n",
        "needsgone-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: cp312-cp312-linux_x86_64\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append("needsgone-1.0.dist-info/RECORD,,")
        zf.writestr("needsgone-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return house


def _pure_wheel(house: Path, name: str, files: dict[str, bytes]) -> Path:
    """A py3-none-any wheel of ``name`` 1.0 holding ``files`` (and its dist-info, with a RECORD)."""
    house.mkdir(exist_ok=True)
    wheel = house / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def test_two_wheels_that_ship_the_same_file_fail_in_one_sentence(tmp_path: Path) -> None:
    # Installed on threads, merged in order: the later wheel is named, with the file, whatever ran first.
    house = tmp_path / "house"
    for name in ("alpha", "gamma", "delta"):
        _pure_wheel(house, name, {f"{name}/__init__.py": b"", "shared/util.py": b"SAME = 1\n"})  # the same bytes: no clash
    _pure_wheel(house, "beta", {"beta/__init__.py": b"", "shared/util.py": b"OTHER = 2\n", "shared/more.py": b""})
    for extra in ((), ("--no-cache",)):
        out = tmp_path / f"out{len(extra)}"
        msg = _fails(out, "--wheels", house, "--python", pyenv_python("3.12"), "--name", "a", "--version", "1", "--format", "dir",
                     "--cache-dir", tmp_path / "cache", *extra)
        assert "beta-1.0-py3-none-any.whl would overwrite files that another package installed" in msg, msg
        assert "shared/util.py" in msg and "more.py" not in msg
        assert not (out / "a-1").exists()


def test_a_corrupt_wheel_among_good_ones_fails_in_one_sentence(tmp_path: Path) -> None:
    house = tmp_path / "house"
    for name in ("alpha", "beta", "delta"):
        _pure_wheel(house, name, {f"{name}/__init__.py": b"X = 1\n" * 1000})
    (house / "gamma-1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 this is not a zip file" * 100)
    msg = _fails(tmp_path / "out", "--wheels", house, "--python", pyenv_python("3.12"), "--name", "a", "--version", "1",
                 "--format", "dir", "--no-cache")
    assert "Cannot install gamma-1.0-py3-none-any.whl" in msg, msg


def test_missing_system_library(tmp_path: Path) -> None:
    house = _wheel_needing_missing_library(tmp_path)
    msg = _fails(tmp_path / "out", "--wheels", house, "--python", pyenv_python("3.12"), "--name", "a", "--version", "1", "--format", "dir")
    assert "libshipenvgone.so.1" in msg
    assert "_needsgone.cpython-312-x86_64-linux-gnu.so" in msg


def test_max_glibc_exceeded(tmp_path: Path) -> None:
    msg = _fails(tmp_path / "out", "--python", pyenv_python("3.12"), "--name", "a", "--version", "1", "--format", "dir", "--max-glibc", "2.31")
    assert "above --max-glibc 2.31" in msg
    assert "GLIBC_2." in msg  # names the files that need more, with what they need


def test_max_glibc_that_is_not_a_version(tmp_path: Path) -> None:
    proc = run_shipenv("build", "-o", tmp_path, "--max-glibc", "new", check=False)
    assert proc.returncode == 2 and "is not a glibc version" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_keep_stdlib_and_missing_requirements_file(tmp_path: Path) -> None:
    msg = _fails(tmp_path / "out", "-r", tmp_path / "nope.txt", "--format", "dir")
    assert "nope.txt does not exist" in msg


def test_report_prints_the_whole_audit(tmp_path: Path) -> None:
    proc = run_shipenv("build", "-o", tmp_path, "--python", pyenv_python("3.12"), "--name", "r", "--version", "1", "--format", "dir", "--report")
    findings = [line for line in proc.stdout.splitlines() if line.startswith(("metadata", "runs"))]
    assert findings, proc.stdout
    # Nothing that runs may remain; every leftover comes with its reason.
    assert all(line.startswith("metadata ") and " — " in line for line in findings)
    assert any("_sysconfigdata" in line for line in findings)


def test_full_disk(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small disk", "16m") as small:
        msg = _fails(small / "out", "--python", pyenv_python("3.12"), "--name", "a", "--version", "1", "--format", "dir", "--no-cache")
        assert "is full" in msg
        assert not [p for p in (small / "out").iterdir()], "the partial build was left on the full disk"


def test_killed_build_leaves_nothing_the_next_build_keeps(tmp_path: Path) -> None:
    import signal
    import sys
    import time

    out = tmp_path / "out"
    args = ["build", "--python", str(pyenv_python("3.12")), "--name", "k", "--version", "1", "--format", "dir", "--no-cache", "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "shipenv", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.glob(".*.shipenv-tmp/k-1/bin")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.glob(".*.shipenv-tmp")), "the build was killed before it started staging"
    assert not (out / "k-1").exists()
    run_shipenv(*args)
    assert [p.name for p in out.iterdir()] == ["k-1"]
