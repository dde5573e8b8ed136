"""Issue 11: deploying as root into a root that is not what shipenv made, in both implementations.

Each row of the table is a root a service user (uid 1000, the root's owner) or
the server itself made hostile: planted symlinks for ``.shipenv.lock``,
``history.jsonl``, ``releases/``, ``current`` and a release, a hard-linked
lock, a FIFO, modes others can write, a read-only file system, a full disk,
``releases/`` on another file system. Every row runs ``shipenv deploy`` /
``rollback`` / ``prune`` / ``releases`` on this host, and the same command of
``deploy.sh`` inside the Debian 12 root (dash, GNU coreutils), each on its own
copy of the same root, and expects the same exit status and the same sentence
(paths written as ROOT and SENTINEL) from both; and, compared by a listing
with hashes, nothing changed in the sentinel directory outside the root, nor
in the root where the command was refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipenv.deploy import releases as deploy
from tests.chroots import OverlayRoot
from tests.helpers import HOST, SHIPENV, make_tree, pack

SCRIPT = Path(__file__).resolve().parents[2] / "templates" / "deploy.sh"
OWNER = 1000  #: the service user who owns the root (no account needed: a numeric uid)
INSIDE_ROOT, INSIDE_SENTINEL = "/srv/app", "/sentinel"

Setup = Callable[[Path, str], None]  #: (root, the sentinel's path as the command sees it)


@dataclass(frozen=True)
class Case:
    setup: Setup
    #: command -> (exit status, first line of output: stderr's "error: ..." or stdout)
    expect: dict[str, tuple[int, str]]
    mount: str = ""  #: "" (a plain directory), "ro", "full", "inodes", "xdev"
    as_user: bool = False  #: run as uid 1000 in a root that belongs to root (else as root)


def _plant(link: str, target: Callable[[str], str]) -> Setup:
    def setup(root: Path, sentinel: str) -> None:
        path = root / link
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        path.symlink_to(target(sentinel))
        os.lchown(path, OWNER, OWNER)

    return setup


def _hard_linked_lock(root: Path, sentinel: str) -> None:
    (root / ".shipenv.lock").unlink()
    os.link(root.parent.parent / "sentinel" / "victim", root / ".shipenv.lock")  # as with protected_hardlinks=0


def _fifo_lock(root: Path, sentinel: str) -> None:
    (root / ".shipenv.lock").unlink()
    os.mkfifo(root / ".shipenv.lock")


def _world_writable(root: Path, sentinel: str) -> None:
    root.chmod(0o777)


def _foreign_history(root: Path, sentinel: str) -> None:
    os.chown(root / "history.jsonl", 1001, 1001)


def _fake_release(root: Path, sentinel: str) -> None:
    # A symlink to a directory outside that even holds a manifest naming app-0.9: still not a release.
    _plant("releases/app-0.9", lambda s: f"{s}/etc")(root, sentinel)


def _nothing(root: Path, sentinel: str) -> None:
    pass


def _refused(what: str) -> dict[str, tuple[int, str]]:
    line = f"error: {what}; nothing was changed."
    return {"deploy": (1, line), "rollback": (1, line), "prune": (1, line)}


NOT_A_LINK = "is not the plain file shipenv makes (it is a symlink)"
STILL = "ROOT/current still points to app-2.0"
CASES: dict[str, Case] = {
    "lock-symlink": Case(_plant(".shipenv.lock", lambda s: f"{s}/victim"), _refused(f"ROOT/.shipenv.lock {NOT_A_LINK}")),
    "history-symlink": Case(_plant("history.jsonl", lambda s: f"{s}/victim"), _refused(f"ROOT/history.jsonl {NOT_A_LINK}")),
    "releases-symlink": Case(_plant("releases", lambda s: f"{s}/dir"),
                             _refused("ROOT/releases is not the directory shipenv makes (it is a symlink)")),
    "current-outside": Case(_plant("current", lambda s: f"{s}/dir"),
                            _refused("ROOT/current points to SENTINEL/dir, not to a release in ROOT/releases")),
    "release-symlink": Case(_fake_release, {
        "rollback --to app-0.9": (1, "error: There is no release app-0.9 under ROOT/releases; there are: app-1.0, app-2.0."),
        "rollback --to 0.9": (1, "error: There is no release 0.9 under ROOT/releases; there are: app-1.0, app-2.0."),
        "prune": (0, "Nothing to prune in ROOT/releases: kept app-2.0, app-1.0."),
        "releases": (0, f"* {'app-2.0':30} TIME\n< {'app-1.0':30} TIME\n(* current, < where rollback goes)"),
    }),
    "lock-hard-link": Case(_hard_linked_lock, _refused("ROOT/.shipenv.lock is not the plain file shipenv makes (it is a file with 2 hard links)")),
    "lock-fifo": Case(_fifo_lock, _refused("ROOT/.shipenv.lock is not the plain file shipenv makes (it is a FIFO)")),
    "world-writable": Case(_world_writable, _refused(
        "ROOT is writable by group or others (mode 0777), so anyone could change what runs from it")),
    "foreign-history": Case(_foreign_history, _refused(
        f"ROOT/history.jsonl belongs to uid 1001, neither root nor the owner of ROOT (uid {OWNER})")),
    "read-only": Case(_nothing, {
        "deploy": (5, f"error: ROOT is on a read-only file system; nothing was deployed and {STILL}."),
        "rollback": (5, f"error: ROOT is on a read-only file system; {STILL}."),
        "prune": (5, f"error: ROOT is on a read-only file system; {STILL}."),
    }, mount="ro"),
    "full-disk": Case(_nothing, {"deploy big": (  # RECORD's total against the free space, before unpacking
        5, f"error: The disk holding ROOT has SIZE free but app-9.0 needs about SIZE; nothing was deployed and {STILL}.")},
                      mount="full"),
    "no-inodes": Case(_nothing, {"deploy many": (  # the bytes fit, the files do not: the disk fills while unpacking
        5, f"error: The disk holding ROOT is full; nothing was deployed and {STILL}.")}, mount="inodes"),
    "not-permitted": Case(_nothing, {
        "deploy": (5, f"error: Permission denied in ROOT; nothing was deployed and {STILL}."),
        "rollback": (5, f"error: Permission denied in ROOT; {STILL}."),
    }, as_user=True),
    "releases-elsewhere": Case(_nothing, {
        "deploy": (5, "error: ROOT/releases is on another file system than ROOT; nothing was deployed and ROOT/current was not created."),
    }, mount="xdev"),
}


# -- the two implementations --------------------------------------------------------------------------


def _argv(command: str, root: str, dist: str) -> tuple[list[str], list[str]]:
    """(shipenv's arguments, deploy.sh's arguments) for a command of the table."""
    verb, *rest = command.split()
    if verb == "deploy":
        archive = f"{dist}/app-{ {'big': '9.0', 'many': '8.0'}.get(''.join(rest), '3.0')}.tar.gz"
        return ["deploy", archive, "--root", root], ["deploy", archive, root]
    if verb == "prune":
        return ["prune", "--root", root, "--keep", "1"], ["prune", root, "--keep", "1"]
    return [verb, "--root", root, *rest], [verb, root, *rest]


def _first_line(done: subprocess.CompletedProcess[str]) -> str:
    """All of stdout, or the error's first line (deploy.sh says what it does on stderr before it)."""
    if done.returncode == 0:
        return done.stdout.rstrip("\n")
    return next((line for line in done.stderr.splitlines() if line.startswith("error: ")), done.stderr)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small bundles: app-1.0 and 2.0 (deployed first), 3.0 (deployed by the rows), 9.0 (3 MB, for the full disk),
    8.0 (200 small files, for the disk without inodes)."""
    base = tmp_path_factory.mktemp("hostile-dist")
    out = base / "dist"
    for version in ("1.0", "2.0", "3.0"):
        pack(make_tree(base / f"t{version}", version), out)
    pack(make_tree(base / "t9", "9.0", big=3_000_000), out)
    pack(make_tree(base / "t8", "8.0", files=200), out)
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[OverlayRoot]:
    with OverlayRoot("bookworm") as root:
        yield root


def _mount(point: Path, options: str) -> None:
    point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)


def _prepare(base: Path, case: Case, dist: Path, sentinel_seen: str) -> tuple[Path, list[Path]]:
    """BASE/srv/app with app-1.0 then app-2.0 deployed, made hostile; BASE/sentinel beside it."""
    srv, sentinel = base / "srv", base / "sentinel"
    (sentinel / "dir").mkdir(parents=True)
    (sentinel / "victim").write_text("precious\n")
    make_tree(sentinel / "trees", "0.9").rename(sentinel / "etc")
    shutil.rmtree(sentinel / "trees")
    mounts: list[Path] = []
    if case.mount:
        # "inodes": 40 are taken by app-1.0 and 2.0, 50 more hold deploy.sh's listings but not 200 files.
        _mount(srv, {"full": "size=2m", "inodes": "size=16m,nr_inodes=90"}.get(case.mount, "size=16m"))
        mounts.append(srv)
    root = srv / "app"
    if case.mount == "xdev":
        _mount(root / "releases", "size=16m,mode=755")
        mounts.append(root / "releases")
    else:
        for version in ("1.0", "2.0"):
            deploy.deploy(dist / f"app-{version}.tar.gz", root, host=HOST)
        if not case.as_user:
            os.chown(root, OWNER, OWNER)  # the service user's root; the deploys (as root) made the rest
    case.setup(root, sentinel_seen)
    if case.mount == "ro":
        subprocess.run(["mount", "-o", "remount,ro", str(srv)], check=True)
    return root, mounts


def snapshot(base: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``base``: type and mode, owner, link count, target or size and sha256 (lock mtime aside)."""
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            extra: object = None
            if stat.S_ISLNK(st.st_mode):
                extra = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                extra = (st.st_size, st.st_mtime_ns if name != ".shipenv.lock" else 0, hashlib.sha256(Path(full).read_bytes()).hexdigest())
            result[os.path.relpath(full, base)] = (st.st_mode, st.st_uid, st.st_nlink, extra)
    return result


def _normalise(line: str, root: str, sentinel: str) -> str:
    line = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "TIME", line)
    line = re.sub(r"\b\d[\d,]*(\.\d)? (bytes|kB|MB|GB)\b", "SIZE", line)  # shipenv counts less: it hard-links
    return line.replace(root, "ROOT").replace(sentinel, "SENTINEL")


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_root_same_verdict_from_both_and_nothing_outside_changes(
        case: str, dist: Path, server: OverlayRoot, tmp_path: Path) -> None:
    row = CASES[case]
    # A user other than root must be able to reach the root: not below pytest's 0700 directories.
    top = Path(tempfile.mkdtemp(prefix="shipenv-hostile-", dir="/tmp")) if row.as_user else tmp_path
    user = ["setpriv", f"--reuid={OWNER}", f"--regid={OWNER}", "--clear-groups"] if row.as_user else []
    try:
        top.chmod(0o755)
        _run_row(row, dist, server, top, user)
    finally:
        if row.as_user:
            shutil.rmtree(top)


def _run_row(row: Case, dist: Path, server: OverlayRoot, top: Path, user: list[str]) -> None:
    inbox = top / "in"
    shutil.copytree(dist, inbox)
    shutil.copy(SCRIPT, inbox / "deploy.sh")
    for path in (inbox, *inbox.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    for command, (status, line) in row.expect.items():
        results = {}
        for impl in ("shipenv", "deploy.sh"):
            base = top / f"{impl}-{command.replace(' ', '_')}"
            in_chroot = impl == "deploy.sh"
            sentinel_seen = INSIDE_SENTINEL if in_chroot else str(base / "sentinel")
            root, mounts = _prepare(base, row, dist, sentinel_seen)
            base.chmod(0o755)
            try:
                before = (snapshot(base / "srv"), snapshot(base / "sentinel"))
                if in_chroot:
                    _, args = _argv(command, INSIDE_ROOT, "/in")
                    done = server.run([*user, "sh", "/in/deploy.sh", *args], binds={
                        inbox: "/in", base / "srv": "/srv", base / "sentinel": INSIDE_SENTINEL})
                    shown = _normalise(_first_line(done), INSIDE_ROOT, INSIDE_SENTINEL)
                else:
                    args, _ = _argv(command, str(root), str(inbox))
                    done = subprocess.run([*user, *SHIPENV, *args], capture_output=True, text=True, check=False)
                    shown = _normalise(_first_line(done), str(root), str(base / "sentinel"))
                after = (snapshot(base / "srv"), snapshot(base / "sentinel"))
            finally:
                for point in reversed(mounts):
                    subprocess.run(["umount", str(point)], check=True)
            assert "Traceback" not in done.stderr, done.stderr
            results[impl] = (done.returncode, shown)
            assert after[1] == before[1], f"{impl} {command}: the sentinel outside the root changed"
            if status != 0:
                assert after[0] == before[0], f"{impl} {command}: refused, but the root changed"
        assert results["shipenv"] == results["deploy.sh"], (command, results)
        got_status, got_line = results["shipenv"]
        assert got_status == status, (command, results)
        assert got_line == line, (command, got_line)


def test_the_chroot_sees_no_change_under_etc(dist: Path, server: OverlayRoot, tmp_path: Path) -> None:
    """releases/x -> /etc inside the Debian root: rollback --to x and prune leave the root's /etc alone."""
    root, _ = _prepare(tmp_path, Case(_plant("releases/x", lambda s: "/etc"), {}), dist, INSIDE_SENTINEL)
    binds = {dist: "/in", SCRIPT: "/opt/deploy.sh", tmp_path / "srv": "/srv"}
    done = server.run(["sh", "/opt/deploy.sh", "rollback", INSIDE_ROOT, "--to", "x"], binds=binds)
    assert (done.returncode, done.stderr) == (1, "error: There is no release x under /srv/app/releases; there are: app-1.0, app-2.0.\n")
    done = server.run(["sh", "/opt/deploy.sh", "prune", INSIDE_ROOT, "--keep", "1"], binds=binds)
    assert (done.returncode, done.stdout) == (0, "Nothing to prune in /srv/app/releases: kept app-2.0, app-1.0.\n")
    assert not server.upper_path("/etc").exists() or not any(server.upper_path("/etc").iterdir())
    assert os.readlink(root / "releases" / "x") == "/etc"
