"""Static checks of the activate templates, the files every bundle carries in ``bin/``.

They are copied verbatim, so whatever they say lands in every release: they
must parse in the shells they are for (and plain sh must get as far as its
message), and must not name this machine. The behaviour in real shells is
tested in ``tests/integration/test_activate.py``.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from shipenv import templates
from tests.helpers import REPO

TEMPLATES = REPO / "templates"
NAMES = ("activate", "activate.fish", "activate.csh")
PACKAGES = "apt-get install -y dash zsh ksh fish tcsh shellcheck"


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    if shutil.which(str(argv[0])) is None:
        pytest.fail(f"{argv[0]} is not installed; run ci/setup.sh or `{PACKAGES}`.")
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    "argv",
    [
        ("bash", "-n", "activate"),
        ("zsh", "-n", "activate"),
        ("ksh", "-n", "activate"),
        # Plain sh must parse it too, or it never reaches its "cannot find its
        # own location" message: bash/zsh/ksh93-only syntax stays inside eval.
        ("dash", "-n", "activate"),
        ("shellcheck", "--shell=sh", "--severity=warning", "activate"),
        ("shellcheck", "--shell=bash", "--severity=warning", "activate"),
        ("fish", "--no-execute", "activate.fish"),
        # tcsh's -n catches lexical errors (quotes, parentheses), not unclosed
        # blocks. BSD csh's -n is not used: it runs some of the commands.
        ("tcsh", "-n", "-f", "activate.csh"),
    ],
    ids=lambda argv: " ".join(argv[:-1]),
)
def test_parses(argv: tuple[str, ...]) -> None:
    proc = run(*argv[:-1], TEMPLATES / argv[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""


@pytest.mark.parametrize("name", NAMES)
def test_names_no_machine_and_needs_no_rendering(name: str) -> None:
    text = (TEMPLATES / name).read_text()
    for pattern in (r"/tmp\b", r"/work\b", r"/root\b", r"/home/", r"\.pyenv", r"/opt/", r"site-packages", r"python3\.\d+", re.escape(str(REPO))):
        assert not re.search(pattern, text), f"templates/{name} names {pattern!r}: it is copied into every bundle as is"
    # Copied verbatim, never rendered: no placeholders waiting for a value.
    assert not re.search(r"__[A-Z][A-Z_]*__|@[A-Z][A-Z_]*@", text)


@pytest.mark.parametrize("name", NAMES)
def test_sets_shipenv_bundle_and_never_virtual_env(name: str) -> None:
    """VIRTUAL_ENV would make pip and tools treat a release as a venv to install into."""
    code = "\n".join(line for line in (TEMPLATES / name).read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"VIRTUAL_ENV\s*=|(setenv|set -gx|export)\s+VIRTUAL_ENV\b", code)
    assert "SHIPENV_BUNDLE" in code
    assert "SHIPENV_DISABLE_PROMPT" in code
    assert "nondestructive" in code


@pytest.mark.parametrize("name", NAMES)
def test_plain_ascii_lines_and_not_executable(name: str) -> None:
    """Sourced, never run: no shebang, and a shell on any locale reads the same bytes."""
    data = (TEMPLATES / name).read_bytes()
    data.decode("ascii")
    assert b"\r" not in data and data.endswith(b"\n")
    assert not data.startswith(b"#!")


def test_every_bundle_gets_them_in_bin(tmp_path: Path) -> None:
    templates.install_bundle_files(tmp_path)
    for name in NAMES:
        dest = tmp_path / templates.BUNDLE_FILES[name]
        assert dest == tmp_path / "bin" / name
        assert dest.read_bytes() == (TEMPLATES / name).read_bytes()
        assert not stat.S_IMODE(dest.stat().st_mode) & 0o111, f"bin/{name} must be sourced, not run"


def test_csh_looks_for_its_own_installed_name() -> None:
    """activate.csh finds itself among the shell's open files by this name."""
    assert templates.BUNDLE_FILES["activate.csh"].rsplit("/", 1)[-1] == "activate.csh"
    assert '== "activate.csh"' in (TEMPLATES / "activate.csh").read_text()
