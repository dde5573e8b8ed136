"""Issue #16, item 3: a deploy beside the current release leaves the layers it already has compressed.

Two real bundles from ``shipenv build`` (pyenv's 3.12 with pyyaml; 2.0 adds
the local srcapp package), ``.tar.zst`` with their frame index. Deploying
2.0 beside 1.0 must decode only the frames whose files are not all in 1.0
unchanged (the head, srcapp's layer, the rest, the directories), say how many
files it linked without unpacking, and give the release that GNU tar
unpacks from the same archive; deploy.sh, which ignores the index, deploys
the same archive too.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from shipenv.bundle import frames, manifest
from tests.helpers import PACKAGES_DIR, BuildFn, check_release, index_of, pyenv_python, requirements_file, run_shipenv


def _build(built_bundle: BuildFn, shared: Path, version: str, lines: list[str]) -> Path:
    (shared / version).mkdir(parents=True, exist_ok=True)
    req = requirements_file(shared / version, lines)
    return built_bundle(f"skip-c-{version}", "-r", req, "--python", pyenv_python("3.12"), "--name", "c", "--version", version,
                        "--format", "tar.zst")


@pytest.fixture(scope="module")
def v1(built_bundle: BuildFn, shared_dir: Path) -> Path:
    return _build(built_bundle, shared_dir / "skip-req", "1", ["pyyaml"])


@pytest.fixture(scope="module")
def v2(built_bundle: BuildFn, shared_dir: Path) -> Path:
    return _build(built_bundle, shared_dir / "skip-req", "2", ["pyyaml", str(PACKAGES_DIR / "srcapp")])


def _unchanged(index: frames.Index, old: dict[str, manifest.RecordEntry], new: dict[str, manifest.RecordEntry]) -> list[int]:
    """The frames past the head whose every member is a file or symlink with the same RECORD row in both."""
    return [i for i, f in enumerate(index.frames) if i and f.members
            and all(m.kind != "d" and m.path in old and old[m.path] == new.get(m.path) for m in f.members)]


def _tree(path: Path) -> dict[str, tuple[object, ...]]:
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(path))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("l", os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_size, manifest.hash_file(full)[0])
            else:
                found[rel] = ("d", stat.S_IMODE(st.st_mode))
    return found


def test_v2_beside_v1_decodes_only_what_changed_and_gives_gnu_tars_release(v1: Path, v2: Path, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    run_shipenv("deploy", v1, "--root", root)
    old = manifest.parse_record((root / "releases" / "c-1" / ".shipenv" / "RECORD").read_bytes())
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(v2), "-C", str(out)], check=True)
    new = manifest.parse_record((out / "c-2" / ".shipenv" / "RECORD").read_bytes())
    index = index_of(v2)
    skippable = _unchanged(index, old, new)
    # The interpreter's layer and pyyaml's at least; never the head, srcapp's layer or the directories.
    srcapp = next(i for i, f in enumerate(index.frames) if any("srcapp" in m.path for m in f.members))
    assert len(skippable) >= 2 and srcapp not in skippable and len(index.frames) - 1 not in skippable
    shared = sum(len(index.frames[i].members) for i in skippable)

    done = run_shipenv("deploy", v2, "--root", root)
    found = re.search(r"; ([\d,]+) files hard-linked without unpacking\)\.$", done.stdout.strip())
    assert found and int(found.group(1).replace(",", "")) == shared, done.stdout
    release = root / "releases" / "c-2"
    python = next(p for p in (release / "bin").iterdir() if p.name.startswith("python3.") and not p.is_symlink())
    assert python.stat().st_ino == (root / "releases" / "c-1" / "bin" / python.name).stat().st_ino  # linked from 1, not unpacked
    assert _tree(release) == _tree(out / "c-2")
    assert run_shipenv("verify", release).stdout.startswith("OK: ")
    check_release(release)
    ran = subprocess.run([str(root / "current" / "bin" / "python"), "-c", "import yaml, srcapp; print(yaml.__name__)"],
                         capture_output=True, text=True, check=False)
    assert ran.stdout == "yaml\n", ran.stderr

    # deploy.sh ignores the index and unpacks everything: the same release.
    sh_root = tmp_path / "srv-sh"
    for archive in (v1, v2):
        sh = subprocess.run(["sh", str(out / "c-2" / ".shipenv" / "deploy.sh"), "deploy", str(archive), str(sh_root)],
                            capture_output=True, text=True, check=False)
        assert sh.returncode == 0, sh.stderr
    assert _tree(sh_root / "releases" / "c-2") == _tree(release)
