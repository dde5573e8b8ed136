"""Build options from the command line merged over ``[tool.shipenv]`` of a project.

Command-line flags win; the table uses the flags' long names::

    [tool.shipenv]
    python = "python3.12"
    entry = ["serve=app.main:run"]
    format = "tar.zst"
    max-glibc = "2.31"
    base = "oci:distroless:latest"    # --format oci / oci-archive: the base image
    user = "65532:65532"
    libc = "bundled"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from shipenv.bundle.manifest import parse_version
from shipenv.errors import UsageError
from shipenv.model import FORMATS, IMAGE_FORMATS, LIBC_MODES, BuildOptions, ImageOptions, LibcMode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_KNOWN = {"python", "name", "version", "entry", "format", "max-glibc", "libc", "keep-stdlib", "system-lib", "level", "requirement", "constraint", "output",
          "base", "cmd", "user", "image-root"}


def read_pyproject(pyproject: Path) -> dict[str, Any]:
    """The parsed ``pyproject.toml`` (``tomli`` before 3.11; the other TOML shipenv reads is uv's lock, in ``build.resolver``)."""
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
    libc: LibcMode = getattr(args, "libc", None) or table.get("libc") or "host"
    if libc not in LIBC_MODES:
        raise UsageError(f"[tool.shipenv] libc {libc!r} is not one of {', '.join(LIBC_MODES)}.")
    requirements = list(args.requirements) or [base / p for p in _list(table.get("requirement"))]
    constraints = list(args.constraints) or [base / p for p in _list(table.get("constraint"))]
    for path in requirements + constraints:
        if not path.is_file():
            raise UsageError(f"The requirements file {path} does not exist.",
                             hint="Check the path given to -r/-c (relative to the current directory) or to requirement/constraint in [tool.shipenv].")
    if args.wheels is not None and not args.wheels.is_dir():
        raise UsageError(f"--wheels {args.wheels} is not a directory.")
    if args.venv is not None and not (args.venv / "pyvenv.cfg").is_file():
        raise UsageError(f"--venv {args.venv} is not a virtual environment (it has no pyvenv.cfg).",
                         hint="Give the directory that python -m venv (or uv venv) made, the one holding pyvenv.cfg.")
    image = image_options(args, table, project)
    flags = [f"--{name.replace('_', '-')}" for name in ("base", "cmd", "user", "image_root") if getattr(args, name, None)]
    if flags and fmt not in IMAGE_FORMATS and not str(args.output).endswith(".oci.tar"):
        raise UsageError(f"{flags[0]} only applies to container images.", hint="Add --format oci (or oci-archive), or leave it out.")
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
        libc=libc,
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
        image=image,
        sign_key=getattr(args, "sign_key", None),
    )


def parse_command(text: str) -> tuple[str, ...]:
    """``--cmd``: a JSON array (``'["/app/bin/app", "--workers", "2"]'``) or words split as a shell would."""
    try:
        words = json.loads(text) if text.lstrip().startswith("[") else shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--cmd {text!r} is neither a JSON array nor a command line ({exc}).") from exc
    if not words or not all(isinstance(w, str) for w in words):
        raise UsageError(f"--cmd {text!r} names no command.", hint='Give the command as it runs in the image: --cmd "/app/bin/app --port 8000".')
    if not words[0].startswith("/"):
        raise UsageError(f"--cmd starts with {words[0]!r}, which is not an absolute path.", hint="Images run commands without a shell: give the full path.")
    return tuple(words)


def image_options(args: argparse.Namespace, table: dict[str, Any], project: Path | None) -> ImageOptions:
    """``--base``, ``--cmd``, ``--user``, ``--image-root``, and what the image says about its source."""
    root_text = getattr(args, "image_root", None) or table.get("image-root") or "/app"
    root = PurePosixPath(str(root_text))
    if not root.is_absolute() or root == PurePosixPath("/") or ".." in root.parts:
        raise UsageError(f"--image-root {root_text!r} must be an absolute directory other than /, such as /app.")
    cmd_value = getattr(args, "cmd", None) or table.get("cmd")
    if isinstance(cmd_value, list):
        cmd_value = json.dumps([str(w) for w in cmd_value])
    base = getattr(args, "base", None)
    if base is None and table.get("base") and project is not None:
        # A path in [tool.shipenv] is relative to the project, after any oci:/oci-archive: prefix.
        text = str(table["base"])
        kind, sep, rest = text.partition(":") if text.startswith(("oci:", "oci-archive:")) else ("", "", text)
        base = text if rest.startswith("/") or rest == "scratch" else f"{kind}{sep}{project / rest}"
    return ImageOptions(
        root=root,
        base=None if base is None else str(base),
        cmd=parse_command(cmd_value) if cmd_value else None,
        user=getattr(args, "user", None) or table.get("user"),
        revision=_git_revision(project),
        source=_source_url(project),
    )


def _git_revision(project: Path | None) -> str | None:
    """The commit the project is checked out at, when it is in a git work tree (org.opencontainers.image.revision)."""
    if project is None:
        return None
    try:
        done = subprocess.run(["git", "-C", str(project), "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    revision = done.stdout.strip()
    return revision if done.returncode == 0 and len(revision) in (40, 64) else None


def _source_url(project: Path | None) -> str | None:
    """``[project.urls]`` Source / Repository / Homepage (org.opencontainers.image.source)."""
    if project is None or not (project / "pyproject.toml").is_file():
        return None
    urls = read_pyproject(project / "pyproject.toml").get("project", {}).get("urls", {})
    if not isinstance(urls, dict):
        return None
    by_key = {str(k).lower().replace(" ", "").replace("-", ""): str(v) for k, v in urls.items()}
    return next((by_key[k] for k in ("source", "sourcecode", "repository", "homepage") if k in by_key), None)
