"""deploy, rollback, releases and prune on small synthetic bundles, in process.

The bundles here are made in a few milliseconds with ``manifest.write`` and
``tarfile`` (``make_tree``/``pack``), so every refusal gets its own archive,
crafted with exactly one thing wrong and a RECORD that otherwise matches: a
test passes only because the check it names works. The integration tests run
the same paths on real bundles through the command line.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from shipenv.bundle import manifest
from shipenv.bundle.manifest import RecordEntry
from shipenv.deploy import extract as _extract
from shipenv.deploy import lock as _lock
from shipenv.deploy import releases as deploy
from shipenv.errors import DeployError, HostError, ShipenvError, UsageError
from tests.helpers import (
    ARCH,
    HOST,
    check_release,
    entry,
    file_member,
    link_member,
    make_tree,
    members_of,
    pack,
    snapshot,
    with_record,
    write_tar,
)

# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def trees(tmp_path: Path) -> Path:
    return tmp_path / "trees"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    return tmp_path / "dist"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "srv" / "app"


def bundle(trees: Path, dist: Path, version: str, **kw: object) -> Path:
    return pack(make_tree(trees / version, version, **kw), dist)  # type: ignore[arg-type]


def run(archive: Path, root: Path, **kw: object) -> deploy.DeployResult:
    return deploy.deploy(archive, root, host=HOST, **kw)  # type: ignore[arg-type]


def current(root: Path) -> str:
    return os.readlink(root / "current")


def history(root: Path) -> list[tuple[str, str | None, str]]:
    return [(e.action, e.from_, e.to) for e in deploy.history(root)]


# -- deploy ------------------------------------------------------------------------------------


def test_first_deploy_unpacks_verifies_and_points_current_at_it(trees: Path, dist: Path, root: Path) -> None:
    result = run(bundle(trees, dist, "1.0"), root)
    assert current(root) == "releases/app-1.0"
    assert (root / "current" / "bin" / "app").read_text() == "#!/bin/sh\necho app 1.0\n"
    assert os.access(root / "current" / "bin" / "app", os.X_OK)
    assert check_release(root / "releases" / "app-1.0") > 5
    assert result.message.startswith(f"Deployed app-1.0 and pointed {root}/current to it (")
    assert history(root) == [("deploy", None, "app-1.0")]
    assert sorted(os.listdir(root)) == [".shipenv.lock", "current", "history.jsonl", "releases"]


def test_second_deploy_switches_and_hard_links_unchanged_files(trees: Path, dist: Path, root: Path) -> None:
    run(bundle(trees, dist, "1.0", big=300_000), root)
    result = run(bundle(trees, dist, "2.0", big=300_000), root)
    assert current(root) == "releases/app-2.0"
    assert result.message.startswith(f"Deployed app-2.0 and switched {root}/current from app-1.0 to app-2.0 (")
    assert "hard-linked from app-1.0" in result.message
    v1, v2 = root / "releases" / "app-1.0", root / "releases" / "app-2.0"
    # Same bytes and mode: one inode. Different bytes: separate files.
    assert (v1 / "lib/shared.txt").stat().st_ino == (v2 / "lib/shared.txt").stat().st_ino
    assert (v1 / "lib/data.bin").stat().st_ino != (v2 / "lib/data.bin").stat().st_ino
    assert result.linked_bytes >= len(b"the same in every version\n" * 2000)
    assert result.written_bytes >= 300_000
    # A release stands on its own: remove the other one and it still verifies.
    import shutil

    shutil.rmtree(v1)
    check_release(v2)
    assert history(root) == [("deploy", None, "app-1.0"), ("deploy", "app-1.0", "app-2.0")]


def test_shared_file_edited_in_place_is_written_fresh(trees: Path, dist: Path, root: Path) -> None:
    run(bundle(trees, dist, "1.0"), root)
    edited = root / "releases" / "app-1.0" / "lib" / "shared.txt"
    edited.write_text("someone edited the running release\n")
    run(bundle(trees, dist, "2.0"), root)
    fresh = root / "releases" / "app-2.0" / "lib" / "shared.txt"
    assert fresh.stat().st_ino != edited.stat().st_ino
    check_release(root / "releases" / "app-2.0")


def test_shared_file_with_another_mode_is_not_linked(trees: Path, dist: Path, root: Path) -> None:
    run(bundle(trees, dist, "1.0"), root)
    tree = make_tree(trees / "2.0", "2.0")
    (tree / "lib" / "shared.txt").chmod(0o600)
    run(pack(tree, dist), root)
    new = root / "releases" / "app-2.0" / "lib" / "shared.txt"
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "releases" / "app-1.0" / "lib" / "shared.txt").stat().st_mode) == 0o644


def test_redeploying_the_same_archive_changes_nothing(trees: Path, dist: Path, root: Path) -> None:
    archive = bundle(trees, dist, "1.0")
    run(archive, root)
    before = snapshot(root)
    result = run(archive, root)
    assert not result.changed
    assert result.message == f"app-1.0 is already deployed with the same content and is current in {root}; nothing changed."
    assert snapshot(root) == before


def test_same_version_with_other_content_is_refused(trees: Path, dist: Path, root: Path) -> None:
    run(bundle(trees, dist, "1.0"), root)
    before = snapshot(root)
    other = make_tree(trees / "other", "1.0", shared=b"rebuilt with a change\n")
    with pytest.raises(DeployError, match=r"releases/app-1\.0 already exists with different content than app-1\.0\.tar\.gz; a version is deployed only once\."):
        run(pack(other, trees / "other-dist"), root)
    assert snapshot(root) == before


def test_redeploying_an_unpacked_release_switches_back_to_it(trees: Path, dist: Path, root: Path) -> None:
    v1 = bundle(trees, dist, "1.0")
    run(v1, root)
    run(bundle(trees, dist, "2.0"), root)
    result = run(v1, root)
    assert current(root) == "releases/app-1.0"
    assert result.message == f"app-1.0 was already unpacked with the same content; switched {root}/current from app-2.0 to app-1.0."
    assert history(root)[-1] == ("deploy", "app-2.0", "app-1.0")


def test_check_runs_in_the_new_release_before_the_switch(trees: Path, dist: Path, root: Path, tmp_path: Path) -> None:
    run(bundle(trees, dist, "1.0"), root)
    out = tmp_path / "check-saw"
    run(bundle(trees, dist, "2.0"), root, check=f"bin/app > '{out}' && readlink -f ../../current >> '{out}'")
    seen = out.read_text().splitlines()
    assert seen[0] == "app 2.0"  # ran the new release's own files...
    assert seen[1] == str((root / "releases" / "app-1.0").resolve())  # ...while current was still the old one


def test_failing_check_leaves_current_and_releases_untouched(trees: Path, dist: Path, root: Path) -> None:
    run(bundle(trees, dist, "1.0"), root)
    before = snapshot(root)
    with pytest.raises(DeployError) as err:
        run(bundle(trees, dist, "2.0"), root, check="echo self-test failed; exit 3")
    assert err.value.message == f"The check 'echo self-test failed; exit 3' failed in app-2.0 (exit status 3); {root}/current still points to app-1.0."
    assert err.value.hint is not None and "self-test failed" in err.value.hint
    assert snapshot(root) == before


def test_keep_prunes_after_the_switch(trees: Path, dist: Path, root: Path) -> None:
    for v in ("1.0", "2.0", "3.0"):
        run(bundle(trees, dist, v), root)
    result = run(bundle(trees, dist, "4.0"), root, keep=2)
    assert result.pruned == ("app-2.0", "app-1.0")
    assert sorted(os.listdir(root / "releases")) == ["app-3.0", "app-4.0"]
    assert result.message.endswith("Removed app-2.0, app-1.0.")


def test_leftovers_of_a_killed_run_are_removed_by_the_next(trees: Path, dist: Path, root: Path) -> None:
    run(bundle(trees, dist, "1.0"), root)
    (root / ".deploy-abc123" / "app-2.0" / "lib").mkdir(parents=True)
    (root / ".prune-xyz" / "app-0.1").mkdir(parents=True)
    os.symlink("releases/app-2.0", root / ".current.new.4242")
    run(bundle(trees, dist, "2.0"), root)
    assert sorted(os.listdir(root)) == [".shipenv.lock", "current", "history.jsonl", "releases"]


def test_current_that_is_a_directory_is_not_replaced(trees: Path, dist: Path, root: Path) -> None:
    (root / "current").mkdir(parents=True)
    with pytest.raises(DeployError, match=r"current is not the symlink shipenv makes \(it is a directory\); nothing was changed\."):
        run(bundle(trees, dist, "1.0"), root)
    assert (root / "current").is_dir() and os.listdir(root / "releases") == []


# -- the host ----------------------------------------------------------------------------------


def test_host_with_older_glibc_is_refused_before_anything_moves(trees: Path, dist: Path, root: Path) -> None:
    run(bundle(trees, dist, "1.0"), root)
    before = snapshot(root)
    with pytest.raises(HostError) as err:
        deploy.deploy(bundle(trees, dist, "2.0", floor="2.36"), root, host=deploy.HostFacts(ARCH, (2, 31)))
    assert err.value.message == "This host has glibc 2.31 but app-2.0 needs 2.36 or newer; deploy it on a newer distribution or rebuild it on an older one."
    assert snapshot(root) == before


def test_host_with_other_arch_is_refused(trees: Path, dist: Path, root: Path) -> None:
    with pytest.raises(HostError, match=r"^This host is x86_64 but app-1\.0 was built for aarch64; deploy it on an aarch64 host or build it on x86_64\.$"):
        deploy.deploy(bundle(trees, dist, "1.0", arch="aarch64"), root, host=deploy.HostFacts("x86_64", (2, 36)))
    assert not (root / "current").exists()


def test_host_without_glibc_is_refused_for_a_glibc_bundle(trees: Path, dist: Path, root: Path) -> None:
    with pytest.raises(HostError, match="This host has no glibc but app-1.0 needs glibc 2.17 or newer"):
        deploy.deploy(bundle(trees, dist, "1.0"), root, host=deploy.HostFacts(ARCH, None))


def test_host_detection_reads_the_c_library_and_honours_the_override() -> None:
    detected = deploy.HostFacts.detect()
    assert (detected.arch, detected.glibc) == (os.uname().machine, manifest.parse_version(os.confstr("CS_GNU_LIBC_VERSION").split()[1]))  # type: ignore[union-attr]
    assert detected.kernel is not None and ".".join(map(str, detected.kernel)) in os.uname().release
    assert deploy.HostFacts.detect("2.17").glibc == (2, 17)
    with pytest.raises(UsageError, match="SHIPENV_HOST_GLIBC='new' is not a glibc version"):
        deploy.HostFacts.detect("new")


# -- rollback, releases, prune ---------------------------------------------------------------


def deployed(trees: Path, dist: Path, root: Path, *versions: str) -> None:
    for v in versions:
        run(bundle(trees, dist, v), root)


def test_rollback_follows_the_history_not_mtimes(trees: Path, dist: Path, root: Path) -> None:
    deployed(trees, dist, root, "1.0", "2.0", "3.0")
    # Make mtimes lie: the oldest release looks newest.
    os.utime(root / "releases" / "app-1.0", (2_000_000_000, 2_000_000_000))
    result = deploy.rollback(root)
    assert result.message == f"Switched {root}/current from app-3.0 to app-2.0."
    assert current(root) == "releases/app-2.0"


def test_repeated_rollbacks_walk_further_back_then_stop(trees: Path, dist: Path, root: Path) -> None:
    deployed(trees, dist, root, "1.0", "2.0", "3.0")
    assert deploy.rollback(root).current == "app-2.0"
    assert deploy.rollback(root).current == "app-1.0"
    with pytest.raises(DeployError, match="There is no earlier release to roll back to from app-1.0"):
        deploy.rollback(root)
    assert current(root) == "releases/app-1.0"
    assert history(root)[-2:] == [("rollback", "app-3.0", "app-2.0"), ("rollback", "app-2.0", "app-1.0")]


def test_rollback_to_a_version_or_a_name(trees: Path, dist: Path, root: Path) -> None:
    deployed(trees, dist, root, "1.0", "2.0", "3.0")
    assert deploy.rollback(root, to="1.0").message == f"Switched {root}/current from app-3.0 to app-1.0."
    assert deploy.rollback(root, to="app-3.0").current == "app-3.0"
    with pytest.raises(DeployError, match=r"There is no release 9\.9 under .*; there are: app-1\.0, app-2\.0, app-3\.0\."):
        deploy.rollback(root, to="9.9")
    with pytest.raises(DeployError, match="app-3.0 is already current"):
        deploy.rollback(root, to="3.0")
    assert history(root)[-2:] == [("rollback-to", "app-3.0", "app-1.0"), ("rollback-to", "app-1.0", "app-3.0")]


def test_rollback_stack_replays_deploys_and_rollbacks() -> None:
    def h(*rows: tuple[str, str | None, str]) -> list[deploy.HistoryEntry]:
        return [deploy.HistoryEntry("t", a, f, t) for a, f, t in rows]

    assert deploy.rollback_stack(h(("deploy", None, "a"), ("deploy", "a", "b"), ("deploy", "b", "c")), "c") == ["a", "b", "c"]
    assert deploy.rollback_stack(h(("deploy", None, "a"), ("deploy", "a", "b"), ("rollback", "b", "a")), "a") == ["a"]
    # A redeploy of an older release moves it up; the one left stays below it.
    assert deploy.rollback_stack(h(("deploy", None, "a"), ("deploy", "a", "b"), ("deploy", "b", "a")), "a") == ["b", "a"]
    # A switch that never reached the history (a crash right after it) still counts.
    assert deploy.rollback_stack(h(("deploy", None, "a"), ("deploy", "a", "b")), "c") == ["a", "b", "c"]
    # History that starts mid-life (deploy.sh on a root made by hand).
    assert deploy.rollback_stack(h(("deploy", "x", "y")), "y") == ["x", "y"]


def test_torn_history_line_is_skipped_and_not_glued_to(trees: Path, dist: Path, root: Path) -> None:
    deployed(trees, dist, root, "1.0", "2.0")
    with (root / "history.jsonl").open("a") as f:
        f.write('{"action": "deploy", "from": "app-2.0", "ti')  # killed mid-write
    run(bundle(trees, dist, "3.0"), root)
    lines = (root / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["to"] == "app-3.0"
    assert deploy.rollback(root).current == "app-2.0"


def test_releases_lists_the_most_recently_current_first(trees: Path, dist: Path, root: Path) -> None:
    deployed(trees, dist, root, "1.0", "2.0", "3.0")
    deploy.rollback(root, to="1.0")
    listed = deploy.releases(root)
    assert [(r.name, r.current, r.rollback) for r in listed] == [
        ("app-1.0", True, False), ("app-3.0", False, False), ("app-2.0", False, True),
    ]
    assert listed[0].deployed_at is not None and listed[0].deployed_at.endswith("Z")
    assert json.loads(json.dumps([r.as_dict() for r in listed]))[0]["path"] == str(root / "releases" / "app-1.0")
    assert deploy.releases(root.parent / "nothing-here") == []


def test_prune_never_removes_current_nor_the_rollback_target(trees: Path, dist: Path, root: Path) -> None:
    deployed(trees, dist, root, "1.0", "2.0", "3.0", "4.0")
    deploy.rollback(root, to="1.0")  # current: 1.0, rollback target: 3.0 (4.0 was left)
    result = deploy.prune(root, keep=1)
    assert sorted(os.listdir(root / "releases")) == ["app-1.0", "app-3.0"]
    assert set(result.removed) == {"app-2.0", "app-4.0"}
    assert result.message.startswith(f"Removed app-4.0, app-2.0 from {root}/releases; kept ")
    assert deploy.prune(root, keep=5).message == f"Nothing to prune in {root}/releases: kept app-1.0, app-3.0."
    assert current(root) == "releases/app-1.0"
    assert deploy.rollback(root).current == "app-3.0"


def test_prune_keeps_the_newest(trees: Path, dist: Path, root: Path) -> None:
    deployed(trees, dist, root, "1.0", "2.0", "3.0", "4.0", "5.0")
    deploy.prune(root, keep=3)
    assert sorted(os.listdir(root / "releases")) == ["app-3.0", "app-4.0", "app-5.0"]
    with pytest.raises(UsageError, match="keep at least 1"):
        deploy.prune(root, keep=0)


# -- one at a time ---------------------------------------------------------------------------


def test_a_held_lock_refuses_at_once_naming_the_holder(trees: Path, dist: Path, root: Path) -> None:
    archive = bundle(trees, dist, "1.0")
    root.mkdir(parents=True)
    with _lock.hold(root):
        with pytest.raises(DeployError) as err:
            run(archive, root)
        assert err.value.message == f"Another deploy is running on {root} (pid {os.getpid()}); try again or pass --wait SECONDS."
        with pytest.raises(DeployError, match=r"still running on .* after waiting 0\.2 seconds"):
            run(archive, root, wait=0.2)
    assert not (root / "current").exists()
    run(archive, root)
    assert current(root) == "releases/app-1.0"


def test_wait_takes_the_lock_when_the_other_deploy_ends(trees: Path, dist: Path, root: Path) -> None:
    archive = bundle(trees, dist, "1.0")
    root.mkdir(parents=True)
    held = threading.Event()
    release = threading.Event()
    # What the holder saw while it still held the lock, in order: the waiting
    # deploy must not have switched anything before the lock was let go.
    seen: list[str] = []

    def holder() -> None:
        with _lock.hold(root):
            held.set()
            release.wait(10)
            seen.append(f"current exists: {(root / 'current').exists()}")
            seen.append("released")

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    threading.Timer(0.3, release.set).start()
    run(archive, root, wait=10)
    seen.append("deployed")
    t.join()
    assert seen == ["current exists: False", "released", "deployed"]
    assert current(root) == "releases/app-1.0"


# -- hostile and broken archives ---------------------------------------------------------------


@pytest.fixture
def live(trees: Path, dist: Path, root: Path, tmp_path: Path) -> Path:
    """app-1.0 deployed and current; returns the app-2.0 tree to craft archives from."""
    run(bundle(trees, dist, "1.0"), root)
    return make_tree(trees / "2.0", "2.0")


def refused(archive: Path, root: Path, tmp_path: Path, reason: str) -> DeployError:
    """Deploying ``archive`` fails with one sentence naming ``reason`` and changes nothing at all."""
    before = snapshot(tmp_path)
    passwd = os.stat("/etc/passwd")
    with pytest.raises(DeployError) as err:
        run(archive, root)
    message = err.value.message
    assert message.startswith(f"Refused {archive.name}: ") and message.endswith("; nothing was deployed."), message
    assert reason in message, message
    assert message.count(". ") == 0, message  # one sentence
    assert snapshot(tmp_path) == before
    assert os.stat("/etc/passwd") == passwd
    assert current(root) == "releases/app-1.0"
    check_release(root / "releases" / "app-1.0")
    return err.value


def test_refuses_an_entry_climbing_out_with_dotdot(live: Path, root: Path, tmp_path: Path) -> None:
    members = members_of(live) + [file_member("app-2.0/../../../escaped", b"pwned\n")]
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "entry 'app-2.0/../../../escaped' climbs out of its directory with '..'")
    assert not (tmp_path / "srv" / "escaped").exists()


def test_refuses_an_absolute_path(live: Path, root: Path, tmp_path: Path) -> None:
    target = tmp_path / "absolute-escape"
    members = members_of(live) + [file_member(str(target), b"pwned\n")]
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, f"entry '{target}' is an absolute path")
    assert not target.exists()


def test_refuses_an_entry_outside_the_top_directory(live: Path, root: Path, tmp_path: Path) -> None:
    members = members_of(live) + [file_member("other-dir/file", b"x\n")]
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "entry 'other-dir/file' is outside app-2.0/")


def test_refuses_an_escaping_symlink_and_the_file_written_through_it(live: Path, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    up = "../" * (len((root / ".deploy-x" / "app-2.0" / "lib").relative_to(tmp_path).parts))
    members = members_of(live) + [link_member("app-2.0/lib/esc", f"{up}outside"), file_member("app-2.0/lib/esc/planted", b"pwned\n")]
    members = with_record(members, RecordEntry("lib/esc", symlink=f"{up}outside"), entry("lib/esc/planted", b"pwned\n"))
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "the symlink 'app-2.0/lib/esc' points outside the release")
    assert os.listdir(outside) == []


def test_refuses_a_file_written_through_an_earlier_symlink(live: Path, root: Path, tmp_path: Path) -> None:
    members = members_of(live) + [link_member("app-2.0/lib/alias", "app"), file_member("app-2.0/lib/alias/planted.py", b"x = 1\n")]
    members = with_record(members, RecordEntry("lib/alias", symlink="app"), entry("lib/alias/planted.py", b"x = 1\n"))
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "'app-2.0/lib/alias/planted.py' would be written through the symlink 'app-2.0/lib/alias'")


def test_refuses_a_symlink_escaping_through_another_symlink(live: Path, root: Path, tmp_path: Path) -> None:
    # Each link looks harmless on its own; together "up" resolves to releases/.
    members = members_of(live) + [link_member("app-2.0/here", "."), link_member("app-2.0/up", "here/..")]
    members = with_record(members, RecordEntry("here", symlink="."), RecordEntry("up", symlink="here/.."))
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "the symlink 'app-2.0/up' -> 'here/..' resolves outside the release")


def test_refuses_a_hard_link_to_etc_passwd(live: Path, root: Path, tmp_path: Path) -> None:
    members = members_of(live) + [link_member("app-2.0/lib/passwd", "/etc/passwd", tarfile.LNKTYPE)]
    passwd = Path("/etc/passwd").read_bytes()
    members = with_record(members, entry("lib/passwd", passwd))
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path,
            "the hard link 'app-2.0/lib/passwd' points to '/etc/passwd', which is not a file unpacked earlier from this archive")


def test_refuses_a_hard_link_climbing_out(live: Path, root: Path, tmp_path: Path) -> None:
    members = members_of(live) + [link_member("app-2.0/lib/stolen", "app-2.0/../app-1.0/bin/app", tarfile.LNKTYPE)]
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "the hard link 'app-2.0/lib/stolen' points to 'app-2.0/../app-1.0/bin/app'")


def test_accepts_a_hard_link_to_a_file_of_the_same_archive(live: Path, root: Path, tmp_path: Path) -> None:
    data = (live / "lib" / "shared.txt").read_bytes()
    members = members_of(live) + [link_member("app-2.0/lib/shared-again.txt", "app-2.0/lib/shared.txt", tarfile.LNKTYPE)]
    members = with_record(members, entry("lib/shared-again.txt", data))
    run(write_tar(tmp_path / "app-2.0.tar.gz", members), root)
    release = root / "releases" / "app-2.0"
    assert (release / "lib/shared-again.txt").stat().st_ino == (release / "lib/shared.txt").stat().st_ino
    check_release(release)


def test_refuses_a_device_node(live: Path, root: Path, tmp_path: Path) -> None:
    info = tarfile.TarInfo("app-2.0/lib/null")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members_of(live) + [(info, None)]), root, tmp_path,
            "entry 'app-2.0/lib/null' is a character device; a bundle holds only files, directories and symlinks")


def test_refuses_a_fifo(live: Path, root: Path, tmp_path: Path) -> None:
    info = tarfile.TarInfo("app-2.0/lib/pipe")
    info.type = tarfile.FIFOTYPE
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members_of(live) + [(info, None)]), root, tmp_path, "entry 'app-2.0/lib/pipe' is a FIFO")


def test_refuses_a_setuid_file(live: Path, root: Path, tmp_path: Path) -> None:
    data = b"#!/bin/sh\nid\n"
    members = with_record(members_of(live) + [file_member("app-2.0/bin/rootme", data, 0o4755)], entry("bin/rootme", data))
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "'app-2.0/bin/rootme' has the setuid or setgid bit set (mode 4755)")


def test_refuses_a_file_whose_bytes_differ_from_record(live: Path, root: Path, tmp_path: Path) -> None:
    members = [(info, b"VERSION = 'ev1'\n" if info.name == "app-2.0/lib/app/__init__.py" else data) for info, data in members_of(live)]
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "the bytes of 'app-2.0/lib/app/__init__.py' differ from its RECORD entry")


def test_refuses_a_member_whose_size_differs_from_record_before_writing_it(live: Path, root: Path, tmp_path: Path) -> None:
    members = [(info, b"VERSION = 'tampered'\n" if info.name == "app-2.0/lib/app/__init__.py" else data) for info, data in members_of(live)]
    for info, data in members:
        if data is not None:
            info.size = len(data)
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path,
            "'app-2.0/lib/app/__init__.py' is 21 bytes in the archive but RECORD says 16")


def test_refuses_record_listing_a_missing_file(live: Path, root: Path, tmp_path: Path) -> None:
    members = with_record(members_of(live), entry("lib/app/ghost.py", b"boo\n"))
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "RECORD lists 1 file(s) the archive lacks: lib/app/ghost.py")


def test_refuses_a_file_not_in_record(live: Path, root: Path, tmp_path: Path) -> None:
    members = members_of(live) + [file_member("app-2.0/lib/app/extra.py", b"import os\n")]
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "'app-2.0/lib/app/extra.py' is not listed in RECORD")


def test_refuses_the_same_path_twice(live: Path, root: Path, tmp_path: Path) -> None:
    members = members_of(live)
    again = next(m for m in members if m[0].name == "app-2.0/lib/shared.txt")
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members + [again]), root, tmp_path, "'app-2.0/lib/shared.txt' appears twice")


def test_refuses_an_archive_that_does_not_start_with_the_manifest(live: Path, root: Path, tmp_path: Path) -> None:
    members = members_of(live)
    members = [members[0], *members[3:], members[1], members[2]]
    refused(write_tar(tmp_path / "app-2.0.tar.gz", members), root, tmp_path, "it does not start with app-2.0/.shipenv/manifest.json and .shipenv/RECORD")


def test_refuses_a_top_directory_that_is_not_the_manifests(live: Path, root: Path, tmp_path: Path) -> None:
    members = []
    for info, data in members_of(live):
        info.name = info.name.replace("app-2.0", "app-9.9", 1)
        members.append((info, data))
    refused(write_tar(tmp_path / "app-9.9.tar.gz", members), root, tmp_path, "its top directory app-9.9/ does not match the manifest's app-2.0")


def test_a_truncated_archive_changes_nothing(live: Path, root: Path, tmp_path: Path) -> None:
    archive = pack(live, tmp_path / "whole")
    cut = tmp_path / "app-2.0.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    before = snapshot(tmp_path)
    with pytest.raises(ShipenvError):
        run(cut, root)
    assert snapshot(tmp_path) == before


def test_shared_file_edited_with_its_size_and_mtime_kept_is_written_fresh(trees: Path, dist: Path, root: Path) -> None:
    # Neither mtime nor size gives the edit away: the ctime does, and the old file is hashed.
    run(bundle(trees, dist, "1.0"), root)
    time.sleep(0.05)  # an edit after the deploy, not within the clock tick of its last rename
    edited = root / "releases" / "app-1.0" / "lib" / "shared.txt"
    before = edited.stat()
    data = edited.read_bytes()
    edited.write_bytes(data[::-1])
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = run(bundle(trees, dist, "2.0"), root)
    fresh = root / "releases" / "app-2.0" / "lib" / "shared.txt"
    assert fresh.stat().st_ino != edited.stat().st_ino
    assert fresh.read_bytes() == data
    assert result.linked_bytes > 0  # the untouched files are still linked
    check_release(root / "releases" / "app-2.0")


def test_untouched_shared_files_are_linked_without_being_read(trees: Path, dist: Path, root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # The current release's files are as deployed (fstat says so): none is hashed again.
    run(bundle(trees, dist, "1.0"), root)

    def no_reading(fd: int, sha256: str) -> bool:
        raise AssertionError("an untouched file of the current release was hashed again")

    monkeypatch.setattr(_extract, "_same_bytes", no_reading)
    shared = root / "releases" / "app-1.0" / "lib" / "shared.txt"
    result = run(bundle(trees, dist, "2.0"), root)
    assert (root / "releases" / "app-2.0" / "lib" / "shared.txt").stat().st_ino == shared.stat().st_ino
    assert result.linked_bytes >= len(b"the same in every version\n" * 2000)
