"""``shipenv build --dry-run``: the plan of a real build, computed without writing anything.

The same stages as :mod:`shipenv.build.pipeline` decide what they would do:
the interpreter's copy plan, the ELF edits of that copy (planned on the host
files it would be copied from, through :func:`shipenv.build.relocate.plan`'s
``virtual`` tree), the launchers, and the wheels uv resolves for the base
interpreter. No output, no staging directory and no cache entry are made;
``cli.py`` prints the result. A wheel's own ELF edits depend on its files, so
they are planned only when a real build has installed it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from shipenv.build import install, interpreter, launchers, output, policy, relocate, resolver
from shipenv.model import BuildOptions, BuildPlan, PythonInfo, Scheme

#: Planning is relative to a root that does not exist: nothing may be read or written there.
_NOWHERE = Path("/nonexistent/shipenv-dry-run")


def plan(options: BuildOptions) -> BuildPlan:
    """Everything a build with ``options`` would do, as data."""
    sources = install.resolve_sources(options)
    py = interpreter.inspect(options.python or sources.python)
    name, version = options.name or sources.name or "python", options.version or sources.version or py.version_str
    target = output.target(options, name, version, py.machine)
    copy = interpreter.plan_copy(py, options.keep_stdlib)
    virtual = {item.dest: item.src for item in copy.files}
    relocation = relocate.plan(_NOWHERE, policy.load(options.system_libs, options.libc), machine=py.machine, virtual=virtual)
    scheme = base_scheme(py)
    planned_launchers = launchers.python_launchers(py, scheme, options.libc) + launchers.entry_launchers(options.entries, py, scheme)
    wheels, note = _wheels(sources, options, py)
    return BuildPlan(target.tree_name, target.artifact, target.fmt, py, copy, relocation, planned_launchers, wheels, note)


def base_scheme(py: PythonInfo) -> Scheme:
    """Where packages would go, as the base interpreter says relative to its prefix (the copy says the same)."""
    paths = interpreter.probe(py.executable)["paths"]
    assert isinstance(paths, dict)

    def inside(key: str) -> PurePosixPath:
        return PurePosixPath(os.path.relpath(str(paths[key]), str(py.prefix)))

    return Scheme(inside("purelib"), inside("platlib"), PurePosixPath("bin"), PurePosixPath("."), PurePosixPath("include"))


def _wheels(sources: install.Sources, options: BuildOptions, py: PythonInfo) -> tuple[tuple[str, ...], str | None]:
    if options.venv is not None:
        return (), f"the packages installed in {options.venv} are copied as they are"
    if options.wheels is not None and not options.requirements and options.project is None:
        return tuple(w.name for w in install.select_wheels(options.wheels, py)), None
    if not (options.requirements or options.project is not None):
        return (), None
    uv = resolver.find_uv()
    pins = resolver.uv_compile(uv, py.executable, options) if uv is not None else None
    if pins is None:
        return (), "pip resolves the requirements during the build (uv is not available or could not resolve them)"
    return tuple(pins), None
