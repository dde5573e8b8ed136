"""Launcher texts: rendered from templates, valid sh and valid Python at once."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from shipenv.build import install, launchers
from shipenv.model import PythonInfo


def py(version: tuple[int, int, int]) -> PythonInfo:
    return PythonInfo(Path("/x/bin/python3"), version, "cpython", "", "", "", "x86_64", Path("/x"), Path("/x/lib"), None, None, True, None, None)


def test_script_launcher_is_python_and_sh() -> None:
    text = launchers.script_launcher(py((3, 12, 1)), "serve", "app.main", "run")
    ast.parse(text)  # valid Python: bin/python3.12 bin/serve works without a shell
    shell_part = text.split("\n" + "'" * 3 + "\n")[0]  # sh never reads past its exec line
    assert subprocess.run(["sh", "-n"], input=shell_part, text=True, check=False).returncode == 0
    assert "from app.main import run" in text and "sys.exit(run())" in text
    assert '__PYVENV_LAUNCHER__="$d/python" exec "$d/python3.12" -E -s' in text


def test_old_pythons_get_no_launcher_variable() -> None:
    # 3.8-3.10 on Linux neither read nor unset it: it would leak into every child.
    text = launchers.script_launcher(py((3, 10, 13)), "serve", "app", "main")
    assert "__PYVENV_LAUNCHER__" not in text.split("'''")[1]


def test_dotted_attribute_entry_points() -> None:
    text = launchers.script_launcher(py((3, 12, 1)), "x", "pkg.cli", "Main.run")
    assert "from pkg.cli import Main" in text and "sys.exit(Main.run())" in text
    ast.parse(text)


def test_python_launcher_is_posix_sh() -> None:
    text = launchers.python_launcher(py((3, 11, 7)))
    assert text.startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n"], input=text, text=True, check=False).returncode == 0
    assert 'exec "$d/python3.11" -E -s "$@"' in text


def test_pip_failures_become_sentences() -> None:
    assert install._pip_failure("ERROR: No matching distribution found for nopkg==1.0\n") == (
        "No release of nopkg==1.0 matches the requirement for this bundle's Python and platform."
    )
    out = "Processing /src/badsdist\n  error: subprocess-exited-with-error\n  × Getting requirements to build wheel did not run successfully.\n"
    assert install._pip_failure(out) == "Building badsdist from source failed (Getting requirements to build wheel did not run successfully)."
