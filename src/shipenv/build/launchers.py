"""Launchers: ``bin/python``, console scripts, ``--entry`` commands, and host shebangs.

Every launcher finds the bundle from its own location (symlinks followed, so
``/usr/local/bin/app -> /srv/app/current/bin/app`` works) and runs the bundle's
interpreter with ``-E -s``. There are two kinds, and a bundle has one of them
(the manifest's ``launchers`` says which):

``native`` (x86_64 and aarch64)
    One small static ELF (``src/launcher/launcher.c``, prebuilt as package data
    in ``shipenv/data/launcher/MACHINE``) copied to every name: it needs no
    shell, no libc and no loader on the host, so ``CMD ["/app/bin/app"]`` works
    in a distroless or ``FROM scratch`` image. What it execs comes from
    ``.shipenv/launcher`` (:func:`config_text`). A console script is the binary
    with a zip appended that holds its ``__main__.py``: Python runs a zip with
    data before it, so the launcher hands the interpreter its own path, and
    ``sys.argv[0]`` is ``bin/NAME``, which ``bin/python3.X bin/NAME`` and
    gunicorn's re-exec (``sys.executable`` + ``sys.argv``) run again. One file
    per command, with its code inside, means no table of names to keep in
    step with what a wheel installs.
``sh`` (any other arch)
    ``#!/bin/sh`` scripts (``templates/python.sh``, ``templates/script.py``);
    console scripts are sh/Python polyglots, so ``bin/python3.X bin/NAME`` works
    without a shell there too.

With ``--libc bundled`` both kinds start the interpreter through the bundled
loader: the native one because ``.shipenv/launcher`` names it
(:mod:`shipenv.build.libc` rewrites the config), the sh ones (and scripts
whose host shebang became a polyglot header) because ``lib/`` holds it
(:func:`loader_prefix`). ``bin/python-env`` is an sh launcher in that mode only.

Copies rather than hard links: every stage (RECORD, archives, deploy's link
rules, the build cache) already handles regular files, and a copy is 30 KB.

Launchers are planned as :class:`~shipenv.model.WriteLauncher` items (so
``--dry-run`` can print them) and written by :func:`write`; scripts with a host
``#!`` line are rewritten by :mod:`shipenv.build.relocate` with
:func:`shebang_header`.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Literal

from shipenv import data, templates
from shipenv.build import policy
from shipenv.model import LibcMode, PythonInfo, Scheme, WriteLauncher

LauncherKind = Literal["native", "sh"]

#: What every native launcher of a bundle reads, relative to the bundle's root.
CONFIG = ".shipenv/launcher"
#: Installed beside the packages: re-applies the safe PYTHON* settings at start-up.
RUNTIME_FILES = ("_shipenv_runtime.py", "_shipenv_runtime.pth")


def native_binary(machine: str) -> bytes | None:
    """The prebuilt launcher for ``machine`` (``x86_64``, ``aarch64``), or None where there is none."""
    path = data.path("launcher", machine)
    return path.read_bytes() if path.is_file() else None


def kind(py: PythonInfo) -> LauncherKind:
    return "native" if native_binary(py.machine) is not None else "sh"


def launcher_env(py: PythonInfo) -> str:
    """3.11+ takes ``__PYVENV_LAUNCHER__`` as ``sys.executable`` and unsets it at start-up,
    so children that run ``sys.executable`` come back through ``bin/python``; older
    versions would leave it in the environment for every child, so they get nothing."""
    return '__PYVENV_LAUNCHER__="$d/python" ' if py.version[:2] >= (3, 11) else ""


def config_text(py: PythonInfo, loader: str | None = None, library_path: str = "lib") -> str:
    """``.shipenv/launcher``: ``key=value`` lines, paths relative to the bundle's root.

    ``loader`` (``--libc bundled``: ``lib/ld-linux-x86-64.so.2``) makes every
    native launcher exec ``LOADER --inhibit-cache --library-path LIB --argv0
    bin/python bin/python3.X -E -s ...`` instead of the interpreter itself.

    >>> print(config_text(py), end="")  # doctest: +SKIP
    interpreter=bin/python3.12
    executable=bin/python
    pyvenv-launcher=yes
    """
    lines = [
        "# Read by the native launchers in bin/ (shipenv's src/launcher/launcher.c).",
        f"interpreter=bin/python{py.xy}",
        "executable=bin/python",
        f"pyvenv-launcher={'yes' if py.version[:2] >= (3, 11) else 'no'}",
    ]
    if loader is not None:
        lines += [f"loader={loader}", f"library-path={library_path}"]
    return "\n".join(lines) + "\n"


def write_config(py: PythonInfo, root: Path, loader: str | None = None) -> None:
    """Write :data:`CONFIG`; the libc stage calls it again with ``loader`` for ``--libc bundled``."""
    path = root / CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # replaced, never edited: it may be a hard link into a cache entry
    path.write_text(config_text(py, loader))
    os.chmod(path, 0o644)


def loader_prefix(loader: str | None, argv0: str) -> str:
    """The start of an sh launcher's line that execs through the bundled loader, when there is one.

    Every sh launcher carries it (the same text in both ``--libc`` modes, so
    cached layers of console scripts do not depend on the mode): the test runs
    in the shell, and only a tree with ``lib/LOADER`` takes the ``exec``. A
    machine with no known loader gets a no-op (``:``) instead.

    >>> loader_prefix("ld-linux-x86-64.so.2", "python")[:38]
    '[ ! -f "$d/../lib/ld-linux-x86-64.so.2'
    """
    if loader is None:
        return ": "
    lib = "$d/../lib"
    return f'[ ! -f "{lib}/{loader}" ] || exec "{lib}/{loader}" --inhibit-cache --library-path "{lib}" --argv0 "$d/{argv0}" '


def _render(template: str, py: PythonInfo, **values: str) -> str:
    """A launcher template with the interpreter's name and the shared locate.sh fragment."""
    loader = policy.loader_name(py.machine)
    return templates.render(
        template, xy=py.xy, launcher_env=launcher_env(py), locate=templates.read("locate.sh"),
        through_loader=loader_prefix(loader, "python"), through_loader_env=loader_prefix(loader, "python-env"), **values,
    )


def python_launcher(py: PythonInfo) -> str:
    """The sh ``bin/python``, for arches without a native launcher (and the benchmark)."""
    return _render("python.sh", py)


def _entry_values(name: str, module: str, attr: str) -> dict[str, str]:
    """Template values for an entry point ``module:attr`` (or ``module`` alone: its ``main()``)."""
    if attr:
        return {"name": name, "target": f"{module}:{attr}", "module": module, "import_name": attr.split(".")[0], "call": f"{attr}()"}
    module_text, _, import_name = module.rpartition(".")
    if not module_text:
        return {"name": name, "target": module, "module": module, "import_name": "main", "call": "main()"}
    return {"name": name, "target": module, "module": module_text, "import_name": import_name, "call": f"{import_name}.main()"}


def script_main(name: str, module: str, attr: str) -> str:
    """The Python of a console script: import the entry point, exit with what it returns."""
    return templates.render("script_main.py", **_entry_values(name, module, attr))


def script_launcher(py: PythonInfo, name: str, module: str, attr: str) -> str:
    """The sh/Python polyglot console script, for arches without a native launcher."""
    values = _entry_values(name, module, attr)
    return _render("script.py", py, name=name, target=values["target"], main=script_main(name, module, attr))


def with_zip(binary: bytes, main: str) -> bytes:
    """``binary`` with a zip appended that holds ``__main__.py`` (stored, fixed time: reproducible)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo("__main__.py", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, main)
    return binary + buffer.getvalue()


def script_file(py: PythonInfo, name: str, module: str, attr: str) -> bytes:
    """What ``bin/NAME`` holds for an entry point: the native launcher with its script, or the polyglot."""
    binary = native_binary(py.machine)
    if binary is None:
        return script_launcher(py, name, module, attr).encode()
    return with_zip(binary, script_main(name, module, attr))


def python_launchers(py: PythonInfo, scheme: Scheme, libc: LibcMode = "host") -> tuple[WriteLauncher, ...]:
    """``bin/python``, ``bin/python3``, their config, and the start-up module that re-applies safe settings.

    With ``--libc bundled``, also ``bin/python-env``: the interpreter through
    the bundled loader with the caller's environment (for Spark's PYTHONPATH).
    """
    binary = native_binary(py.machine)
    content = binary if binary is not None else python_launcher(py).encode()
    items = [WriteLauncher(scheme.scripts / name, content) for name in ("python", f"python{py.version[0]}")]
    items.append(WriteLauncher(PurePosixPath(CONFIG), config_text(py).encode(), 0o644))
    if libc == "bundled":
        items.append(WriteLauncher(scheme.scripts / "python-env", _render("python-env.sh", py).encode()))
    items += [WriteLauncher(scheme.purelib / name, templates.read(name).encode(), 0o644) for name in RUNTIME_FILES]
    return tuple(items)


def entry_launchers(entries: Iterable[tuple[str, str]], py: PythonInfo, scheme: Scheme) -> tuple[WriteLauncher, ...]:
    """Launchers for ``--entry NAME=module:function`` (and a venv's console scripts)."""
    items = []
    for name, target in entries:
        module, _, attr = target.partition(":")
        items.append(WriteLauncher(scheme.scripts / name, script_file(py, name, module, attr)))
    return tuple(items)


def write(items: Iterable[WriteLauncher], root: Path) -> None:
    """Write planned launchers, replacing whatever is at their place (the interpreter's symlinks)."""
    for item in items:
        write_launcher(root / item.path, item.content, item.mode)


def write_launcher(path: Path, content: str | bytes, mode: int = 0o755) -> None:
    """Write one launcher file in place of whatever is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    os.chmod(path, mode)


def shebang_header(py: PythonInfo, name: str) -> str:
    """The polyglot first lines that replace a host ``#!`` line (the script's body stays).

    Such scripts (a wheel's ``.data/scripts``, a venv's hand-written tools) stay
    sh launchers even where the native one exists: their ``__file__`` and
    ``sys.path[0]`` must stay what their author saw.
    """
    header = _render("script.py", py, name=name, target="script", main="").split("'''\n", 2)
    return header[0] + "'''\n" + header[1] + "'''\n"
