"""Deciding what of a base interpreter is copied, on a fake stdlib tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipenv.build import interpreter
from shipenv.errors import InterpreterError
from shipenv.model import PythonInfo


def fake_python(tmp_path: Path) -> PythonInfo:
    std = tmp_path / "prefix" / "lib" / "python3.12"
    for rel in ("os.py", "json/__init__.py", "json/__pycache__/x.pyc", "test/test_os.py", "idlelib/idle.py",
                "tkinter/__init__.py", "turtle.py", "turtledemo/x.py", "ensurepip/__init__.py", "ensurepip/_bundled/pip.whl",
                "site-packages/big/__init__.py", "ctypes/test/t.py", "config-3.12-x86_64-linux-gnu/libpython3.12.a",
                "config-3.12-x86_64-linux-gnu/Makefile", "lib-dynload/_ssl.so", "lib-dynload/_tkinter.so", "lib-dynload/_testcapi.so"):
        (std / rel).parent.mkdir(parents=True, exist_ok=True)
        (std / rel).write_text("x")
    exe = tmp_path / "prefix" / "bin" / "python3.12"
    exe.parent.mkdir(parents=True)
    exe.write_bytes(b"\x7fELF")
    return PythonInfo(exe, (3, 12, 1), "cpython", "", "cpython-312-x86_64-linux-gnu", ".so", "x86_64",
                      tmp_path / "prefix", std, std / "lib-dynload", None, True, None, None)


def dests(plan: interpreter.CopyPlan) -> set[str]:
    return {f.dest.as_posix() for f in plan.files}


def test_server_never_gets_tests_idle_tk_or_base_site_packages(tmp_path: Path) -> None:
    plan = interpreter.plan_copy(fake_python(tmp_path), frozenset())
    got = dests(plan)
    assert {"bin/python3.12", "lib/python3.12/os.py", "lib/python3.12/json/__init__.py", "lib/python3.12/lib-dynload/_ssl.so",
            "lib/python3.12/ensurepip/__init__.py", "lib/python3.12/config-3.12-x86_64-linux-gnu/Makefile"} <= got
    for absent in ("test/test_os.py", "idlelib/idle.py", "tkinter/__init__.py", "turtle.py", "turtledemo/x.py",
                   "ensurepip/_bundled/pip.whl", "site-packages/big/__init__.py", "json/__pycache__/x.pyc",
                   "ctypes/test/t.py", "config-3.12-x86_64-linux-gnu/libpython3.12.a", "lib-dynload/_tkinter.so", "lib-dynload/_testcapi.so"):
        assert f"lib/python3.12/{absent}" not in got
    assert "test" in plan.skipped and "tkinter" in plan.skipped


def test_keep_stdlib_keeps_parts(tmp_path: Path) -> None:
    base = fake_python(tmp_path)
    got = dests(interpreter.plan_copy(base, frozenset({"tkinter", "ensurepip"})))
    assert "lib/python3.12/tkinter/__init__.py" in got and "lib/python3.12/lib-dynload/_tkinter.so" in got
    assert "lib/python3.12/ensurepip/_bundled/pip.whl" in got
    assert "lib/python3.12/test/test_os.py" not in got
    everything = dests(interpreter.plan_copy(base, frozenset({"all"})))
    assert "lib/python3.12/test/test_os.py" in everything


def test_unknown_keep_part_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InterpreterError, match="not a known part"):
        interpreter.plan_copy(fake_python(tmp_path), frozenset({"docs"}))


def test_find_python_errors(tmp_path: Path) -> None:
    with pytest.raises(InterpreterError, match="does not exist"):
        interpreter.find_python(str(tmp_path / "nope"))
    with pytest.raises(InterpreterError, match="was not found on PATH"):
        interpreter.find_python("python-shipenv-nope")


def test_probe_reports_paths_from_sysconfig() -> None:
    import sys

    data = interpreter.probe(Path(sys.executable))
    assert data["implementation"] == "cpython"
    assert data["version"][:2] == list(sys.version_info[:2])  # type: ignore[index]
