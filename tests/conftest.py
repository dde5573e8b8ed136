"""Shared fixtures: real interpreters, and real bundles built once per test run.

Building a bundle takes seconds to minutes, so each distinct bundle is built
once per run and shared by every test (and every xdist worker) that asks for
it, under a file lock. Tests that change a bundle copy it first.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import BuildFn, pyenv_python, run_shipenv
from tests.sshkeys import agent  # noqa: F401  (a fixture: a real ssh-agent for the signing tests)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory shared by all xdist workers of this run."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path = base / "shared"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def built_bundle(shared_dir: Path) -> BuildFn:
    """``built_bundle(key, *build_args)`` → path of the artifact, built once per run.

    ``build_args`` are passed to ``shipenv build`` after ``-o DIR``; the result
    is the single artifact (directory or archive) that the build produced.
    Never modify what this returns: copy it first.
    """

    def build(key: str, *args: str | os.PathLike[str]) -> Path:
        out = shared_dir / "bundles" / key
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = out.parent / f"{key}.lock"
        with lock.open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            done = out / ".done.json"
            if not done.is_file():
                if out.exists():
                    shutil.rmtree(out)
                out.mkdir()
                run_shipenv("build", "-o", out, *args)
                artifacts = [p for p in out.iterdir() if not p.name.endswith((".sha256", ".cdx.json", ".sig"))]
                assert len(artifacts) == 1, artifacts
                done.write_text(json.dumps({"artifact": artifacts[0].name}))
            return out / json.loads(done.read_text())["artifact"]

    return build


@pytest.fixture(scope="session")
def py312_tree(built_bundle: BuildFn) -> Path:
    """An interpreter-only bundle of pyenv's 3.12, as a directory."""
    return built_bundle("py312-dir", "--python", pyenv_python("3.12"), "--name", "hello", "--version", "1.0", "--format", "dir")


@pytest.fixture
def moved_copy(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Copy a bundle directory to a path with a space in it; returns the copy's path."""

    def copy(tree: Path) -> Path:
        dest = tmp_path / "moved here" / tree.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tree, dest, symlinks=True)
        return dest

    yield copy
