"""``shipenv modulefile``: Tcl and Lua modulefiles, loaded by a real Lmod.

Releases of examples/webapp (``app`` 1.0.0 and 2.0.0) are deployed with
``shipenv deploy`` under a root whose path has a space; the modulefiles are
written by the real CLI and loaded in bash through Debian's Lmod, which reads
both Tcl and Lua modulefiles. A loaded module must put exactly one release's
``bin/`` first on PATH and change nothing else; unloading must give back the
PATH from before.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipenv.deploy import modulefile
from tests.helpers import REPO, BuildFn, run_shipenv

WEBAPP = REPO / "examples" / "webapp"
LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")
#: A PATH without duplicates: Lmod removes duplicate entries whenever it edits PATH.
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Variables Lmod keeps for itself; everything else must be as the module left it.
LMOD_OWN = ("_ModuleTable", "__LMOD", "LMOD", "MODULEPATH", "LOADEDMODULES", "_LMFILES_", "MODULESHOME", "BASH_ENV", "__Init")


@dataclass(frozen=True)
class Shell:
    stdout: str
    stderr: str
    env: dict[str, dict[str, str]]  #: snapshots taken with `snap NAME`


def lmod(script: str, tmp_path: Path) -> Shell:
    """Run `script` in bash with Lmod's ``module`` function; ``snap NAME`` records the environment."""
    if not LMOD_INIT.is_file():
        pytest.fail(f"Lmod is missing ({LMOD_INIT}): apt-get install lmod (ci/setup.sh installs it)")
    snaps = tmp_path / "snaps"
    snaps.mkdir(exist_ok=True)
    prelude = f"""
set -u
source {LMOD_INIT}
snap() {{ env -0 > "{snaps}/$1"; }}
"""
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", prelude + script],
        env={"PATH": CLEAN_PATH, "HOME": str(tmp_path), "LANG": "C.UTF-8"},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, f"bash with Lmod failed ({done.returncode}):\n{script}\n{done.stdout}\n{done.stderr}"
    env = {}
    for snap in snaps.iterdir():
        pairs = (item.partition("=") for item in snap.read_text().split("\0") if item)
        env[snap.name] = {k: v for k, _, v in pairs}
        snap.unlink()
    return Shell(done.stdout, done.stderr, env)


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    keys = set(before) | set(after)
    return {k for k in keys if before.get(k) != after.get(k) and not k.startswith(LMOD_OWN)}


@pytest.fixture(scope="module")
def root(built_bundle: BuildFn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deploy root with app 1.0.0 and app 2.0.0; current -> 2.0.0."""
    root = tmp_path_factory.mktemp("modules") / "srv app"
    for version in ("1.0.0", "2.0.0"):
        archive = built_bundle(f"app-{version}", WEBAPP, "--name", "app", "--version", version)
        run_shipenv("deploy", archive, "--root", root)
    return root


def release(root: Path, version: str) -> Path:
    return root / "releases" / f"app-{version}"


@pytest.mark.parametrize("syntax", ["tcl", "lua"])
def test_module_puts_the_release_on_path_and_unload_restores_it(syntax: str, root: Path, tmp_path: Path) -> None:
    out = tmp_path / "mods"
    done = run_shipenv("modulefile", "--root", root, "--syntax", syntax, "-o", out)
    expected = out / "app" / ("2.0.0.lua" if syntax == "lua" else "2.0.0")
    assert sorted(p for p in out.rglob("*") if p.is_file()) == [expected]
    assert f"Wrote {expected}" in done.stdout
    if syntax == "tcl":
        assert expected.read_text().startswith("#%Module1.0\n")

    shell = lmod(
        f"""
snap before
module use "{out}"
module load app/2.0.0
snap loaded
command -v app
app --version
python -m webapp --selftest
module unload app
snap unloaded
""",
        tmp_path,
    )
    bin_dir = release(root, "2.0.0") / "bin"
    lines = shell.stdout.splitlines()
    assert lines[0] == str(bin_dir / "app")
    assert lines[1].startswith("app (version ")  # gunicorn, started through the bundle's launcher
    assert lines[2].startswith("webapp 0.1.0 selftest ok") and lines[2].endswith(str(release(root, "2.0.0")))

    before, loaded, unloaded = shell.env["before"], shell.env["loaded"], shell.env["unloaded"]
    assert loaded["PATH"] == f"{bin_dir}:{CLEAN_PATH}"
    assert changed(before, loaded) == {"PATH"}, "a module of a bundle sets PATH and nothing else"
    assert unloaded["PATH"] == before["PATH"] == CLEAN_PATH
    assert changed(before, unloaded) == set()


def test_help_and_whatis_come_from_the_manifest(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "mods"
    run_shipenv("modulefile", "--root", root, "-o", out)  # both syntaxes in one directory
    assert sorted(p.name for p in (out / "app").iterdir()) == ["2.0.0", "2.0.0.lua"]
    shell = lmod(f'module use "{out}"\nmodule help app/2.0.0\nmodule whatis app/2.0.0\nmodule avail app', tmp_path)
    text = shell.stdout + shell.stderr  # Lmod writes its reports to stderr
    for expected in (
        "app-2.0.0: a relocatable Python application bundle made by shipenv.",
        f"bundle     {release(root, '2.0.0')}",
        "python     CPython 3.12.",
        "glibc >= 2.36",
        "commands   app, gunicorn",
        "gunicorn 27.0.1, webapp 0.1.0",
        "Name: app",
        "Version: 2.0.0",
        "Description: app-2.0.0, Python 3.12.",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert text.count("app/2.0.0") >= 1 and "2.0.0.lua" not in text  # one module, not two


@pytest.mark.parametrize("syntax", ["tcl", "lua"])
def test_release_modules_swap_and_current_follows_rollback(syntax: str, root: Path, tmp_path: Path) -> None:
    out = tmp_path / "mods"
    for extra in (["--release", "1.0.0"], [], ["--current"]):
        done = run_shipenv("modulefile", "--root", root, "--syntax", syntax, *extra, "-o", out)
    assert "module load app/current" in done.stdout
    current_file = out / "app" / ("current.lua" if syntax == "lua" else "current")
    assert f'"{root}/current/bin"' in current_file.read_text()

    # Lmod's one-name rule: loading app/2.0.0 over app/1.0.0 swaps them.
    shell = lmod(
        f"""
module use "{out}"
module load app/1.0.0
command -v app
module load app/2.0.0
echo "$PATH"
module load app/current
python -c 'import sys; print(sys.prefix)'
""",
        tmp_path,
    )
    one, path, current = shell.stdout.splitlines()
    assert one == str(release(root, "1.0.0") / "bin" / "app")
    assert path == f"{release(root, '2.0.0') / 'bin'}:{CLEAN_PATH}"
    assert current == str(release(root, "2.0.0"))

    # --to: the module root is shared by the tests of this file, and its
    # history decides where a plain rollback goes.
    run_shipenv("rollback", "--root", root, "--to", "1.0.0")
    try:
        shell = lmod(
            f"""
module use "{out}"
module load app/current
python -c 'import sys; print(sys.prefix)'
module load app/2.0.0
python -c 'import sys; print(sys.prefix)'
""",
            tmp_path,
        )
        # The same app/current file now loads the release rolled back to; app/2.0.0 stays pinned.
        assert shell.stdout.splitlines() == [str(release(root, "1.0.0")), str(release(root, "2.0.0"))]
    finally:
        run_shipenv("rollback", "--root", root, "--to", "2.0.0")


def test_paths_that_need_quoting_survive_both_syntaxes(root: Path, tmp_path: Path) -> None:
    # An unpacked bundle (not a deploy root) in a directory no shell or Tcl
    # would take unquoted.
    odd = tmp_path / "odd $HOME [x] {b} 'q' dir" / "app-2.0.0"
    shutil.copytree(release(root, "2.0.0"), odd, symlinks=True)
    for syntax in ("tcl", "lua"):
        out = tmp_path / syntax
        run_shipenv("modulefile", "--root", odd, "--syntax", syntax, "--name", "odd", "-o", out)
        shell = lmod(f'module use "{out}"\nmodule load odd/2.0.0\ncommand -v app\nmodule help odd/2.0.0', tmp_path)
        assert shell.stdout.splitlines()[0] == str(odd / "bin" / "app"), syntax
        assert f"bundle     {odd}" in shell.stderr + shell.stdout, syntax


def test_paths_lmod_cannot_read_in_tcl_get_lua_only(root: Path, tmp_path: Path) -> None:
    # A double quote or a backslash is valid Tcl, but Lmod's Tcl reader turns
    # such a path into another one: refuse the Tcl file, write the Lua one.
    odd = tmp_path / 'say "hi" \\ there' / "app-2.0.0"
    shutil.copytree(release(root, "2.0.0"), odd, symlinks=True)
    done = run_shipenv("modulefile", "--root", odd, "-o", tmp_path / "both", check=False)
    assert done.returncode == 2
    assert "Lmod's reader of Tcl modulefiles" in done.stderr and "--syntax lua" in done.stderr
    assert not (tmp_path / "both").exists(), "refused: nothing written, not even the Lua file"

    out = tmp_path / "lua"
    run_shipenv("modulefile", "--root", odd, "--syntax", "lua", "-o", out)
    shell = lmod(f'module use "{out}"\nmodule load app/2.0.0\ncommand -v app', tmp_path)
    assert shell.stdout.splitlines() == [str(odd / "bin" / "app")]


def test_quoting_is_exact() -> None:
    text = 'a "b" $c [d] {e} \\f\ng'
    assert modulefile.tcl_quote(text) == '"a \\"b\\" \\$c \\[d\\] {e} \\\\f\\ng"'
    assert modulefile.lua_quote(text + "\t") == '"a \\"b\\" $c [d] {e} \\\\f\\ng\\009"'


def test_errors_say_what_to_do(root: Path, tmp_path: Path) -> None:
    done = run_shipenv("modulefile", "--root", root, "--release", "9.9.9", "-o", tmp_path, check=False)
    assert done.returncode == 1  # no such release: as for rollback --to (README, exit status)
    assert "There is no release 9.9.9" in done.stderr and "app-1.0.0, app-2.0.0" in done.stderr

    done = run_shipenv("modulefile", "--root", tmp_path / "nowhere", "-o", tmp_path, check=False)
    assert done.returncode == 2
    assert "neither a deploy root" in done.stderr and "hint:" in done.stderr

    done = run_shipenv("modulefile", "--root", root, "--name", "a/b", "-o", tmp_path, check=False)
    assert done.returncode == 2 and "cannot be a modulefile name" in done.stderr
    assert not list(tmp_path.rglob("*")), "a refused modulefile writes nothing"
