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


def test_native_config_names_the_interpreter_and_sys_executable() -> None:
    assert launchers.config_text(py((3, 12, 1))).splitlines()[1:] == [
        "interpreter=bin/python3.12", "executable=bin/python", "pyvenv-launcher=yes",
    ]  # fmt: skip
    # 3.8-3.10 would keep __PYVENV_LAUNCHER__ for every child: not set, as in the sh launcher.
    assert "pyvenv-launcher=no" in launchers.config_text(py((3, 10, 13)))
    bundled = launchers.config_text(py((3, 12, 1)), loader="lib/ld-linux-x86-64.so.2")
    assert bundled.endswith("loader=lib/ld-linux-x86-64.so.2\nlibrary-path=lib\n")


def test_native_script_is_the_launcher_with_a_zip_python_can_run(tmp_path: Path) -> None:
    import zipfile

    binary = launchers.native_binary("x86_64")
    assert binary is not None and binary[:4] == b"\x7fELF"
    data = launchers.script_file(py((3, 12, 1)), "serve", "app.main", "run")
    assert data.startswith(binary)
    assert data == launchers.script_file(py((3, 12, 1)), "serve", "app.main", "run")  # reproducible
    (tmp_path / "serve").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "serve") as zf:  # data before the zip, as zipimport allows
        main = zf.read("__main__.py").decode()
    assert "from app.main import run" in main and "sys.exit(run())" in main
    ast.parse(main)


def test_arch_without_a_native_launcher_keeps_sh_launchers() -> None:
    other = PythonInfo(Path("/x/bin/python3"), (3, 12, 1), "cpython", "", "", "", "riscv64", Path("/x"), Path("/x/lib"), None, None, True, None, None)
    assert launchers.kind(other) == "sh" and launchers.kind(py((3, 12, 1))) == "native"
    assert launchers.script_file(other, "serve", "app", "main").startswith(b"#!/bin/sh\n")
