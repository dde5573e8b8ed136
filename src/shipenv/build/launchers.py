"""Launchers: ``bin/python``, console scripts, ``--entry`` commands, and host shebangs.

Every launcher finds the bundle from its own location (symlinks followed, so
``/usr/local/bin/app -> /srv/app/current/bin/app`` works) and runs the bundle's
interpreter with ``-E -s``. Console-script launchers are sh/Python polyglots
(``templates/script.py``): the shell part finds the interpreter, and the whole
file is also valid Python, so ``bin/python3.X bin/NAME`` works without a shell.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from shipenv import templates
from shipenv.model import BuildOptions, PythonInfo, Scheme


def launcher_env(py: PythonInfo) -> str:
    """3.11+ takes ``__PYVENV_LAUNCHER__`` as ``sys.executable`` and unsets it at start-up,
    so children that run ``sys.executable`` come back through ``bin/python``; older
    versions would leave it in the environment for every child, so they get nothing."""
    return '__PYVENV_LAUNCHER__="$d/python" ' if py.version[:2] >= (3, 11) else ""


def _render(template: str, py: PythonInfo, **values: str) -> str:
    """A launcher template with the interpreter's name and the shared locate.sh fragment."""
    return templates.render(template, xy=py.xy, launcher_env=launcher_env(py), locate=templates.read("locate.sh"), **values)


def python_launcher(py: PythonInfo) -> str:
    return _render("python.sh", py)


def script_launcher(py: PythonInfo, name: str, module: str, attr: str) -> str:
    import_name = attr.split(".")[0] if attr else module.rsplit(".", 1)[-1]
    if attr:
        call = f"{attr}()"
        module_text = module
    else:
        # "name = package.module" with no attribute: run the module's main().
        module_text, _, import_name = module.rpartition(".")
        call = f"{import_name}.main()" if module_text else f"{module}.main()"
        if not module_text:
            return _render("script.py", py, name=name, target=module, module=module, import_name="main", call="main()")
    return _render("script.py", py, name=name, target=f"{module}:{attr}", module=module_text, import_name=import_name, call=call)


def write_python_launchers(py: PythonInfo, root: Path) -> None:
    text = python_launcher(py)
    for name in ("python", f"python{py.version[0]}"):
        path = root / "bin" / name
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_text(text)
        os.chmod(path, 0o755)


def prepare_tree(py: PythonInfo, root: Path, scheme: Scheme) -> None:
    """Launchers for ``bin/python`` and the start-up module that re-applies safe settings."""
    write_python_launchers(py, root)
    _install_runtime(root, scheme)


def write_entries(options: BuildOptions, py: PythonInfo, root: Path, scheme: Scheme) -> None:
    """``--entry NAME=module:function`` commands in ``bin/``."""
    for name, target in options.entries:
        module, _, attr = target.partition(":")
        write_launcher(root / scheme.scripts / name, script_launcher(py, name, module, attr))


def _install_runtime(root: Path, scheme: Scheme) -> None:
    site = root / scheme.purelib
    site.mkdir(parents=True, exist_ok=True)
    for name in ("_shipenv_runtime.py", "_shipenv_runtime.pth"):
        (site / name).write_text(templates.read(name))


def write_launcher(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    os.chmod(path, 0o755)


_SHEBANG = re.compile(rb"^#!\s*(\S*python[\d.]*)\b")


def relocate_shebangs(root: Path, scheme: Scheme, py: PythonInfo) -> None:
    """Scripts in ``bin/`` whose ``#!`` names a host Python become bundle launchers.

    Scripts that are not entry points (a wheel's ``.data/scripts``, a venv's
    hand-written tools) keep their body; only the first line changes, to the
    polyglot header that finds the bundle's interpreter.
    """
    bin_dir = root / scheme.scripts
    for path in sorted(bin_dir.iterdir()) if bin_dir.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as f:
            head = f.read(512)
        m = _SHEBANG.match(head)
        if not m or not m.group(1).startswith(b"/"):
            continue
        body = path.read_bytes().split(b"\n", 1)[1] if b"\n" in path.read_bytes() else b""
        header = _render("script.py", py, name=path.name, target="script", module="sys", import_name="exit", call="0").split("'''\n", 2)
        text = header[0] + "'''\n" + header[1] + "'''\n"
        path.write_bytes(text.encode() + body)
        os.chmod(path, 0o755)
