"""Put the application's packages into the tree (placeholder until the packages stage lands)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shipenv import interpreter
from shipenv.errors import InstallError
from shipenv.model import BuildOptions, Distribution, PythonInfo


@dataclass(frozen=True)
class Scheme:
    """Where the copied interpreter itself says things go, relative to the tree root."""

    purelib: PurePosixPath
    platlib: PurePosixPath
    scripts: PurePosixPath
    data: PurePosixPath
    headers: PurePosixPath


@dataclass(frozen=True)
class Sources:
    """What goes into the bundle besides the interpreter."""

    name: str | None = None
    version: str | None = None
    python: str | None = None
    host_paths: tuple[Path, ...] = field(default_factory=tuple)


def resolve_sources(options: BuildOptions) -> Sources:
    return Sources()


def tree_scheme(python: Path, root: Path) -> Scheme:
    """Ask the copied interpreter where packages go (Debian says ``dist-packages``)."""
    data = interpreter.ask_tree(python, interpreter.SCHEME_CODE)
    assert isinstance(data, dict)
    real_root = os.path.realpath(root)
    if os.path.realpath(data["prefix"]) != real_root:
        raise InstallError(
            f"The copied interpreter reports sys.prefix {data['prefix']} instead of the bundle; it is not relocatable."
        )

    def inside(key: str) -> PurePosixPath:
        value = os.path.realpath(data["paths"][key])
        rel = os.path.relpath(value, real_root)
        if rel.startswith(".."):
            raise InstallError(f"The copied interpreter puts {key} outside the bundle ({value}).")
        return PurePosixPath(rel)

    purelib = inside("purelib")
    (root / purelib).mkdir(parents=True, exist_ok=True)
    site_dirs = [os.path.realpath(p) for p in data["site"]]
    if os.path.realpath(root / purelib) not in site_dirs:
        raise InstallError(f"The copied interpreter does not import from its own {purelib}.")
    return Scheme(
        purelib=purelib,
        platlib=inside("platlib"),
        scripts=PurePosixPath("bin"),
        data=PurePosixPath("."),
        headers=PurePosixPath("include"),
    )


def install(
    sources: Sources,
    options: BuildOptions,
    py: PythonInfo,
    root: Path,
    scheme: Scheme,
    say: Callable[[str], None],
) -> list[Distribution]:
    return []


def relocate_text(root: Path, scheme: Scheme, py: PythonInfo, sources: Sources) -> None:
    return None
