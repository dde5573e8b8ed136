"""Whole builds kept in the cache (``build/outputs.py``): a rebuild whose inputs are all what they were copies the archive.

The first build fetches six with pip (from the configured indexes), so its
key is known only afterwards; the second finds six in the wheel store and the
whole archive in the cache. Whatever changes an input builds in full, and a
stored archive that was touched is never copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import pyenv_python, requirements_file, run_shipenv
from tests.sshkeys import allowed_line, keygen_verify, make_key

REUSED = "from the cache (nothing it is made from changed)"


@dataclass(frozen=True)
class Workspace:
    root: Path
    cache: Path
    req: Path
    first: tuple[str, str]  #: stdout and stderr of the build that stored the output

    def build(self, out: str, *extra: str | Path, env: dict[str, str] | None = None, req: Path | None = None) -> tuple[str, str, Path]:
        """``shipenv build -v --report``; returns (stdout with the output directory written OUT, stderr, the output directory)."""
        directory = self.root / out
        proc = run_shipenv("build", "-v", "--report", "-r", req or self.req, "--python", pyenv_python("3.12"), "--name", "c",
                           "--version", "1", "-o", directory, "--cache-dir", self.cache, *extra, env=env)
        return proc.stdout.replace(str(directory), "OUT"), proc.stderr, directory


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("outputs")
    req = requirements_file(root, ["six==1.16.0"])
    first = Workspace(root, root / "cache", req, ("", ""))
    stdout, stderr, _ = first.build("first")
    return Workspace(root, root / "cache", req, (stdout, stderr))


def _steps(stderr: str) -> list[str]:
    return [re.sub(r" \[[0-9.]+s\]$", "", line[2:]) for line in stderr.splitlines() if line.startswith("• ")]


def test_a_rebuild_with_nothing_changed_copies_the_archive_and_prints_the_same(ws: Workspace) -> None:
    assert REUSED not in ws.first[1] and "Packing c-1.tar.zst" in ws.first[1]
    stdout, stderr, out = ws.build("again")
    assert _steps(stderr) == [f"Reusing c-1.tar.zst {REUSED}"]  # no tree made: no install, no SBOM, no packing
    assert stdout == ws.first[0]  # the same Built/sha256 lines and the same --report findings
    first = ws.root / "first"
    for name in ("c-1.tar.zst", "c-1.tar.zst.sha256", "c-1.tar.zst.cdx.json"):
        assert (out / name).read_bytes() == (first / name).read_bytes(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the staging directory is gone
    assert run_shipenv("verify", out / "c-1.tar.zst").stdout.startswith("OK: ")


@pytest.mark.parametrize("change", ["version", "epoch", "entry", "requirement"])
def test_a_changed_input_builds_in_full(ws: Workspace, change: str) -> None:
    extra: list[str] = []
    env, req = None, None
    if change == "version":
        extra = ["--version", "2"]
    elif change == "epoch":
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1600000000"}
    elif change == "entry":
        extra = ["--entry", "sixer=six:print"]
    else:
        (ws.root / "more").mkdir(exist_ok=True)
        req = requirements_file(ws.root / "more", ["six==1.16.0", "certifi==2024.8.30"])
    stdout, stderr, out = ws.build(f"changed-{change}", *extra, env=env, req=req)
    assert REUSED not in stderr and "Packing" in stderr
    assert stdout != ws.first[0]  # another archive: another sha256 (or name)
    # ... and it is kept in turn: the same build again is a copy of it.
    again_out, again_err, again = ws.build(f"changed-{change}-again", *extra, env=env, req=req)
    assert REUSED in again_err and again_out == stdout


def test_a_stored_archive_that_was_touched_is_not_reused(ws: Workspace) -> None:
    sha256 = (ws.root / "first" / "c-1.tar.zst.sha256").read_text().split()[0]
    (stored,) = [p / "archive" for p in ws.cache.glob("outputs/*/*") if json.loads((p / "output.json").read_text())["about"]["sha256"] == sha256]
    st = stored.stat()
    with stored.open("r+b") as f:  # one byte changed in place, the size and mtime put back
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
    stdout, stderr, out = ws.build("after-damage")
    assert "dropping damaged output" in stderr and REUSED not in stderr
    # (the stored archive is a hard link to the first build's artifact, damaged with it: compare with its .sha256)
    assert stdout == ws.first[0] and hashlib.sha256((out / "c-1.tar.zst").read_bytes()).hexdigest() == sha256
    assert REUSED in ws.build("after-damage-again")[1]  # the full build stored it again


def test_a_reused_archive_is_signed_afresh(ws: Workspace, tmp_path: Path) -> None:
    key = make_key(tmp_path, "ed25519", "ci")
    stdout, stderr, out = ws.build("signed", "--sign-key", key)
    assert REUSED in stderr and "Signing c-1.tar.zst" in stderr
    assert stdout.startswith(ws.first[0]) and "Signed c-1.tar.zst.sig with SHA256:" in stdout
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(allowed_line(key))
    done = keygen_verify(allowed, out / "c-1.tar.zst.sig", out / "c-1.tar.zst")
    assert done.returncode == 0, done.stderr
