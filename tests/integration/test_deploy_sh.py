"""Issue #5, item 7: deploying with only sh, tar and coreutils (the bundle's .shipenv/deploy.sh).

The real thing runs inside the Debian 12 minbase root (dash, GNU tar,
coreutils; no Python, no zstd) and the Debian 11 one (glibc 2.31, older than
the 2.36 a bundle built here needs). Hostile archives and the interplay with
``shipenv deploy`` run on this host's dash, which is the same shell.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from shipenv.bundle import archive
from shipenv.deploy import lock as _lock
from shipenv.deploy import releases as deploy
from tests.chroots import OverlayRoot
from tests.helpers import (
    ASK_VERSION,
    BuildFn,
    make_tree,
    pack,
    real_bundle,
    run_shipenv,
)

SCRIPT = Path(__file__).resolve().parents[2] / "templates" / "deploy.sh"
GLIBC_231 = "error: This host has glibc 2.31 but app-2.0 needs 2.36 or newer; deploy it on a newer distribution or rebuild it on an older one."
BUNDLED_HINT = "hint: Or rebuild it with --libc bundled: it then carries its own glibc and needs only a Linux kernel."


def piped(archive: str, root: str = "/srv/app") -> list[str]:
    """The README's one-liner: the script straight out of the archive into sh."""
    top = Path(archive).name.removesuffix(".tar.gz")
    return ["sh", "-c", f"tar -xzf {archive} -O {top}/.shipenv/deploy.sh | sh -s -- deploy {archive} {root}"]


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def test_deploy_sh_on_a_bare_debian_12(built_bundle: BuildFn, tmp_path: Path) -> None:
    v1, v2 = real_bundle(built_bundle, "1.0"), real_bundle(built_bundle, "2.0")
    zst = archive.write(make_tree(tmp_path / "z", "3.0"), tmp_path / "app-3.0.tar.zst", "tar.zst", level=3, threads=1,
                        mtime=1577836800, arcname="app-3.0").path
    binds = {v1: "/in/app-1.0.tar.gz", v2: "/in/app-2.0.tar.gz", zst: "/in/app-3.0.tar.zst"}
    with OverlayRoot("bookworm") as server:

        def sh(*argv: str) -> subprocess.CompletedProcess[str]:
            return server.run(list(argv), binds=binds)

        def answers() -> str:
            return ok(sh("/srv/app/current/bin/python3.12", "-c", ASK_VERSION)).strip()

        assert sh("sh", "-c", "command -v python3 || command -v zstd").returncode != 0  # really bare
        out = ok(sh(*piped("/in/app-1.0.tar.gz")))
        assert out.startswith("Deployed app-1.0 and pointed /srv/app/current to it (") and out.endswith(" files).\n")
        assert answers() == "1.0 /srv/app/releases/app-1.0"

        # Saved once, reused for any bundle.
        ok(sh("sh", "-c", "tar -xzf /in/app-2.0.tar.gz -O app-2.0/.shipenv/deploy.sh > /tmp/deploy.sh"))
        out = ok(sh("sh", "/tmp/deploy.sh", "deploy", "/in/app-2.0.tar.gz", "/srv/app"))
        assert out.startswith("Deployed app-2.0 and switched /srv/app/current from app-1.0 to app-2.0 (")
        assert answers() == "2.0 /srv/app/releases/app-2.0"
        assert ok(sh("sh", "/tmp/deploy.sh", "deploy", "/in/app-2.0.tar.gz", "/srv/app")) == (
            "app-2.0 is already deployed with the same content and is current in /srv/app; nothing changed.\n")

        assert ok(sh("sh", "/tmp/deploy.sh", "rollback", "/srv/app")) == "Switched /srv/app/current from app-2.0 to app-1.0.\n"
        assert answers() == "1.0 /srv/app/releases/app-1.0"
        listing = ok(sh("sh", "/tmp/deploy.sh", "releases", "/srv/app")).splitlines()
        assert len(listing) == 3 and listing[0].startswith("* app-1.0 ") and listing[1].startswith("  app-2.0 "), listing
        assert listing[2] == "(* current, < where rollback goes)"  # as shipenv releases says it
        assert ok(sh("sh", "/tmp/deploy.sh", "rollback", "/srv/app", "--to", "2.0")) == "Switched /srv/app/current from app-1.0 to app-2.0.\n"
        assert answers() == "2.0 /srv/app/releases/app-2.0"

        done = sh("sh", "/tmp/deploy.sh", "deploy", "/in/app-3.0.tar.zst", "/srv/app")
        assert done.returncode == 1  # this server lacks a tool: not the archive's fault
        assert done.stderr == ("error: /in/app-3.0.tar.zst is compressed with zstd, which this server lacks; "
                               "install zstd (apt-get install zstd) or build the bundle with --format tar.gz.\n")

        # shipenv reads what deploy.sh wrote: same layout, same history, releases that verify.
        root = server.upper_path("/srv/app")
        assert [(e.action, e.from_, e.to) for e in deploy.history(root)] == [
            ("deploy", None, "app-1.0"), ("deploy", "app-1.0", "app-2.0"),
            ("rollback", "app-2.0", "app-1.0"), ("rollback-to", "app-1.0", "app-2.0"),
        ]
        assert sorted(os.listdir(root)) == [".shipenv.lock", "current", "history.jsonl", "releases"]
        run_shipenv("verify", root / "current")
        assert [(r.name, r.current) for r in deploy.releases(root)] == [("app-2.0", True), ("app-1.0", False)]


def test_deploy_sh_on_debian_11_refuses_a_newer_glibc_before_the_switch(built_bundle: BuildFn, tmp_path: Path) -> None:
    v2 = real_bundle(built_bundle, "2.0")
    old = pack(make_tree(tmp_path / "t", "0.9", floor="2.17"), tmp_path / "dist")
    binds = {v2: "/in/app-2.0.tar.gz", old: "/in/app-0.9.tar.gz"}
    with OverlayRoot("bullseye") as server:
        assert ok(server.run(["getconf", "GNU_LIBC_VERSION"])) == "glibc 2.31\n"
        ok(server.run(piped("/in/app-0.9.tar.gz"), binds=binds))
        done = server.run(piped("/in/app-2.0.tar.gz"), binds=binds)
        assert done.returncode == 4  # a refused host
        assert done.stderr.strip().splitlines()[-2:] == [GLIBC_231, BUNDLED_HINT]
        assert ok(server.run(["readlink", "/srv/app/current"])) == "releases/app-0.9\n"
        assert ok(server.run(["ls", "-A", "/srv/app", "/srv/app/releases"])) == (
            "/srv/app:\n.shipenv.lock\ncurrent\nhistory.jsonl\nreleases\n\n/srv/app/releases:\napp-0.9\n")
        assert ok(server.run(["/srv/app/current/bin/app"])) == "app 0.9\n"


# -- on this host's dash --------------------------------------------------------------------------


def run_sh(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """app-1.0 deployed by deploy.sh into tmp_path/srv."""
    root = tmp_path / "srv"
    ok(run_sh("deploy", pack(make_tree(tmp_path / "t1", "1.0"), tmp_path / "dist"), root))
    return root


# Hostile archives: tests/integration/test_hostile_archives.py runs each against both implementations.


def test_deploy_sh_honours_the_glibc_override(site: Path, tmp_path: Path) -> None:
    newer = pack(make_tree(tmp_path / "t2", "2.0", floor="2.36"), tmp_path / "dist")
    done = run_sh("deploy", newer, site, env=dict(os.environ, SHIPENV_HOST_GLIBC="2.17"))
    assert done.returncode == 4
    assert done.stderr == "error: This host has glibc 2.17 but app-2.0 needs 2.36 or newer; deploy it on a newer distribution or rebuild it on an older one.\n" + BUNDLED_HINT + "\n"
    assert os.readlink(site / "current") == "releases/app-1.0"


def test_deploy_sh_and_shipenv_take_turns_on_one_root(site: Path, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    v2, v3 = (pack(make_tree(tmp_path / f"t{v}", v), dist) for v in ("2.0", "3.0"))
    assert run_shipenv("deploy", v2, "--root", site).stdout.startswith("Deployed app-2.0 and switched")
    assert ok(run_sh("deploy", v3, site)).startswith(f"Deployed app-3.0 and switched {site}/current from app-2.0 to app-3.0")
    assert run_shipenv("rollback", "--root", site).stdout == f"Switched {site}/current from app-3.0 to app-2.0.\n"
    assert ok(run_sh("rollback", site)) == f"Switched {site}/current from app-2.0 to app-1.0.\n"
    assert [json.loads(line)["to"] for line in (site / "history.jsonl").read_text().splitlines()] == [
        "app-1.0", "app-2.0", "app-3.0", "app-2.0", "app-1.0"]
    # ...and exclude each other: deploy.sh waits on the lock shipenv holds.
    with _lock.hold(site):
        done = run_sh("deploy", v3, site)
    assert done.returncode == 1
    assert done.stderr == f"error: Another deploy is running on {site} (pid {os.getpid()}); try again or pass --wait SECONDS.\n"
    assert os.readlink(site / "current") == "releases/app-1.0"


def test_deploy_sh_check_failure_keeps_current(site: Path, tmp_path: Path) -> None:
    v2 = pack(make_tree(tmp_path / "t2", "2.0"), tmp_path / "dist")
    done = run_sh("deploy", v2, site, "--check", "bin/app && exit 7")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"error: The check 'bin/app && exit 7' failed in app-2.0; {site}/current still points to app-1.0."
    assert "app 2.0" in done.stderr  # the check ran the new release's own files
    assert os.readlink(site / "current") == "releases/app-1.0" and os.listdir(site / "releases") == ["app-1.0"]
    assert sorted(os.listdir(site)) == [".shipenv.lock", "current", "history.jsonl", "releases"]


def released_tree(release: Path) -> dict[str, tuple[object, ...]]:
    """Everything a release holds as ``lstat`` and the bytes see it: type, mode, mtime, and content or target."""
    seen: dict[str, tuple[object, ...]] = {}
    for path in [release, *sorted(release.rglob("*"))]:
        st = path.lstat()
        rel = path.relative_to(release).as_posix()
        if path.is_symlink():
            seen[rel] = ("symlink", os.readlink(path))
        elif path.is_dir():
            seen[rel] = ("dir", oct(st.st_mode & 0o7777), int(st.st_mtime))
        else:
            seen[rel] = ("file", oct(st.st_mode & 0o7777), int(st.st_mtime), path.read_bytes())
    return seen


def test_deploy_sh_and_shipenv_make_the_same_release_of_one_archive(tmp_path: Path) -> None:
    # Modes, mtimes (directories' too: 2020-01-01, as the archive says), symlinks and bytes, entry for entry.
    archive_path = pack(make_tree(tmp_path / "t", "1.0"), tmp_path / "dist")
    ok(run_sh("deploy", archive_path, tmp_path / "by-sh"))
    run_shipenv("deploy", archive_path, "--root", tmp_path / "by-shipenv")
    by_sh, by_shipenv = (released_tree(tmp_path / side / "releases" / "app-1.0") for side in ("by-sh", "by-shipenv"))
    assert by_sh == by_shipenv
    dirs = [v for v in by_sh.values() if v[0] == "dir"]
    assert len(dirs) > 3 and {v[2] for v in dirs} == {1577836800}
