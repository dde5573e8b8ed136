"""Build options from the command line merged over ``[tool.shipenv]`` of a project.

Command-line flags win; the table uses the flags' long names::

    [tool.shipenv]
    python = "python3.12"
    entry = ["serve=app.main:run"]
    format = "tar.zst"
    max-glibc = "2.31"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shipenv.bundle.manifest import parse_version
from shipenv.errors import UsageError
from shipenv.model import FORMATS, BuildOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_KNOWN = {"python", "name", "version", "entry", "format", "max-glibc", "keep-stdlib", "system-lib", "level", "requirement", "constraint", "output"}


def read_pyproject(pyproject: Path) -> dict[str, Any]:
    """The parsed ``pyproject.toml``: the one place shipenv reads TOML (``tomli`` before 3.11)."""
    try:
        data: dict[str, Any] = tomllib.loads(pyproject.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{pyproject} is not valid TOML ({exc}).") from exc
    return data


def project_table(project: Path | None) -> dict[str, Any]:
    if project is None:
        return {}
    pyproject = project / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    table = read_pyproject(pyproject).get("tool", {}).get("shipenv", {})
    if not isinstance(table, dict):
        raise UsageError(f"[tool.shipenv] in {pyproject} must be a table.")
    unknown = sorted(set(table) - _KNOWN)
    if unknown:
        raise UsageError(
            f"[tool.shipenv] in {pyproject} has unknown key {unknown[0]!r}.",
            hint=f"Known keys: {', '.join(sorted(_KNOWN))}.",
        )
    return table


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def build_options(args: argparse.Namespace) -> BuildOptions:
    project = args.project
    if project is not None and not project.is_dir():
        raise UsageError(f"The project {project} is not a directory.", hint="Give a directory holding a pyproject.toml.")
    table = project_table(project)
    base = project if project is not None else Path(".")
    fmt = args.fmt or table.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"format {fmt!r} is not one of {', '.join(FORMATS)}.")
    entries = list(args.entries)
    if not entries:
        for text in _list(table.get("entry")):
            name, _, target = text.partition("=")
            if not name or ":" not in target:
                raise UsageError(f"[tool.shipenv] entry {text!r} is not NAME=module:function.")
            entries.append((name.strip(), target.strip()))
    max_glibc = args.max_glibc
    if max_glibc is None and table.get("max-glibc"):
        try:
            max_glibc = parse_version(str(table["max-glibc"]))
        except ValueError as exc:
            raise UsageError(f"[tool.shipenv] max-glibc {table['max-glibc']!r} is not a version such as 2.31.") from exc
    requirements = list(args.requirements) or [base / p for p in _list(table.get("requirement"))]
    constraints = list(args.constraints) or [base / p for p in _list(table.get("constraint"))]
    for path in requirements + constraints:
        if not path.is_file():
            raise UsageError(f"The requirements file {path} does not exist.")
    if args.wheels is not None and not args.wheels.is_dir():
        raise UsageError(f"--wheels {args.wheels} is not a directory.")
    if args.venv is not None and not (args.venv / "pyvenv.cfg").is_file():
        raise UsageError(f"--venv {args.venv} is not a virtual environment (it has no pyvenv.cfg).")
    output = args.output if args.output != Path("dist") or "output" not in table else base / table["output"]
    return BuildOptions(
        output=output,
        python=args.python or table.get("python"),
        name=args.name or table.get("name"),
        version=args.bundle_version or table.get("version"),
        fmt=fmt,
        keep_stdlib=frozenset(args.keep_stdlib or _list(table.get("keep-stdlib"))),
        max_glibc=max_glibc,
        system_libs=frozenset(args.system_libs or _list(table.get("system-lib"))),
        project=project,
        requirements=tuple(requirements),
        constraints=tuple(constraints),
        wheels=args.wheels,
        venv=args.venv,
        entries=tuple(entries),
        report=args.report,
        compress_level=args.level if args.level is not None else table.get("level"),
        threads=args.threads,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
    )
