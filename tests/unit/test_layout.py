"""The root side of deploy, in process: what a release is, control files, OS errors as sentences.

Small synthetic bundles (``tests.unit.test_deploy.make_tree``); the table of
hostile roots against both implementations is ``tests/integration/test_hostile_root.py``.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from shipenv.deploy import fs, modulefile
from shipenv.deploy import releases as deploy
from shipenv.errors import DeployError, FilesystemError, RootError, UsageError
from tests.helpers import HOST, make_tree, pack

SCRIPT = Path(__file__).resolve().parents[2] / "templates" / "deploy.sh"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """app-1.0 then app-2.0 deployed under tmp_path/srv/app."""
    root = tmp_path / "srv" / "app"
    for version in ("1.0", "2.0"):
        deploy.deploy(pack(make_tree(tmp_path / f"t{version}", version), tmp_path / "dist"), root, host=HOST)
    return root


def _not_releases(site: Path) -> None:
    (site / "releases" / "empty").mkdir()  # no manifest
    lying = make_tree(site.parent / "lying", "7.0")
    lying.rename(site / "releases" / "app-8.0")  # its manifest names app-7.0
    (site / "releases" / "app-0.9").symlink_to(site / "releases" / "app-1.0")  # a symlink, even to a release


def test_only_real_directories_whose_manifest_names_them_are_releases(site: Path) -> None:
    _not_releases(site)
    assert [r.name for r in deploy.releases(site)] == ["app-2.0", "app-1.0"]
    for to in ("empty", "app-8.0", "7.0", "app-0.9", "0.9"):
        with pytest.raises(DeployError, match=rf"^There is no release {to} under .*; there are: app-1.0, app-2.0\.$"):
            deploy.rollback(site, to=to)
    assert os.readlink(site / "current") == "releases/app-2.0"
    deploy.deploy(pack(make_tree(site.parent / "t3", "3.0"), site.parent / "dist"), site, host=HOST)
    pruned = deploy.prune(site, keep=1)  # app-3.0 is current, app-2.0 where rollback goes
    assert (pruned.removed, pruned.kept) == (("app-1.0",), ("app-3.0", "app-2.0"))
    assert sorted(os.listdir(site / "releases")) == ["app-0.9", "app-2.0", "app-3.0", "app-8.0", "empty"]


def test_the_modulefile_offers_only_releases(site: Path) -> None:
    """``modulefile --release`` looks releases up as rollback does: no empty, lying or symlinked directory."""
    _not_releases(site)
    for to in ("empty", "app-8.0", "7.0", "app-0.9", "0.9"):
        with pytest.raises(DeployError, match=rf"^There is no release {to} under .*; there are: app-1.0, app-2.0\.$"):
            modulefile.find_target(site, release=to)
    assert modulefile.find_target(site, release="1.0").path == site / "releases" / "app-1.0"
    assert modulefile.find_target(site).path == site / "releases" / "app-2.0"  # pinned to what current points to
    assert modulefile.find_target(site, follow_current=True).path == site / "current"
    os.replace(site / "releases" / "app-8.0", site / "releases" / "app-3.0")  # a manifest naming app-7.0
    (site / "current.new").symlink_to("releases/app-3.0")
    os.replace(site / "current.new", site / "current")
    with pytest.raises(DeployError, match=r"^.*/current points to app-3.0, which is not a release in .*/releases\.$"):
        modulefile.find_target(site)


def test_rollback_to_an_empty_name_is_a_usage_error_in_both(site: Path) -> None:
    with pytest.raises(UsageError, match=r"^--to needs a version or a NAME-VERSION\.$"):
        deploy.rollback(site, to="")
    done = subprocess.run(["dash", str(SCRIPT), "rollback", str(site), "--to", ""], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (2, "error: --to needs a version or a NAME-VERSION.\n")
    assert os.readlink(site / "current") == "releases/app-2.0"


def test_deploy_sh_lists_and_prunes_by_the_same_definition(site: Path) -> None:
    _not_releases(site)
    done = subprocess.run(["dash", str(SCRIPT), "releases", str(site)], capture_output=True, text=True, check=True)
    assert [line.split()[:2] for line in done.stdout.splitlines()[:-1]] == [["*", "app-2.0"], ["<", "app-1.0"]]
    deploy.deploy(pack(make_tree(site.parent / "t3", "3.0"), site.parent / "dist"), site, host=HOST)
    done = subprocess.run(["dash", str(SCRIPT), "prune", str(site), "--keep", "1"], capture_output=True, text=True, check=True)
    assert done.stdout == f"Removed app-1.0 from {site}/releases; kept app-3.0, app-2.0.\n"
    assert sorted(os.listdir(site / "releases")) == ["app-0.9", "app-2.0", "app-3.0", "app-8.0", "empty"]
    done = subprocess.run(["dash", str(SCRIPT), "prune", str(site), "--keep", "1"], capture_output=True, text=True, check=True)
    assert done.stdout == f"Nothing to prune in {site}/releases: kept app-3.0, app-2.0.\n"


def test_a_root_path_too_long_for_the_file_system_is_one_sentence(tmp_path: Path) -> None:
    root = tmp_path / ("x" * 300)
    archive = pack(make_tree(tmp_path / "t", "1.0"), tmp_path / "dist")
    with pytest.raises(FilesystemError) as caught:
        deploy.deploy(archive, root, host=HOST)
    assert caught.value.message == f"A name is too long for the file system holding {root}; nothing was deployed and {root}/current was not created."
    assert caught.value.exit_code == 5
    done = subprocess.run(["dash", str(SCRIPT), "deploy", str(archive), str(root)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (5, f"error: {caught.value.message}\n")


@pytest.mark.parametrize(("code", "start"), [
    (errno.ENOSPC, "The disk holding /srv/app is full; "),
    (errno.EDQUOT, "The disk holding /srv/app is full; "),
    (errno.EROFS, "/srv/app is on a read-only file system; "),
    (errno.EACCES, "Permission denied in /srv/app; "),
    (errno.EPERM, "Permission denied in /srv/app; "),
    (errno.ENAMETOOLONG, "A name is too long for the file system holding /srv/app; "),
    (errno.EXDEV, "/srv/app/releases is on another file system than /srv/app; "),
    (errno.EIO, "Cannot change /srv/app: Input/output error; "),
])
def test_every_os_error_is_one_sentence_with_a_hint(code: int, start: str) -> None:
    error = fs.os_error(OSError(code, os.strerror(code)), "/srv/app", "nothing was changed")
    assert error.message == start + "nothing was changed."
    assert error.hint and error.exit_code == 5


def test_control_files_are_opened_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "victim").write_text("precious\n")
    (tmp_path / "lock").symlink_to(tmp_path / "victim")
    (tmp_path / "fifo").mkdir()
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(RootError, match=r"^X is not the plain file shipenv makes \(it is a symlink\); nothing was changed\.$"):
            fs.open_file_at(dir_fd, "lock", "X", os.O_RDWR | os.O_CREAT)
        with pytest.raises(RootError, match=r"\(it is a directory\)"):
            fs.open_file_at(dir_fd, "fifo", "X", os.O_RDWR | os.O_CREAT)
        with pytest.raises(RootError, match=r"^X is not the directory shipenv makes \(it is a symlink\)"):
            fs.open_dir_at(dir_fd, "lock", "X")
        (tmp_path / "tree" / "sub").mkdir(parents=True)
        (tmp_path / "tree" / "out").symlink_to(tmp_path / "victim")
        (tmp_path / "tree" / "sub" / "dir-out").symlink_to(tmp_path)
        fs.remove_tree_at(dir_fd, "tree")
    finally:
        os.close(dir_fd)
    assert not (tmp_path / "tree").exists()
    assert (tmp_path / "victim").read_text() == "precious\n"
    assert sorted(os.listdir(tmp_path)) == ["fifo", "lock", "victim"]


def test_early_writeback_syncs_once_per_step_unpacked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from shipenv.deploy import layout

    calls: list[int] = []
    monkeypatch.setattr(layout, "syncfs", calls.append)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        writeback = layout.EarlyWriteback(fd)
        step = layout.EarlyWriteback.STEP
        writeback.written(step - 1)  # not yet a step
        writeback.join()
        assert calls == []
        writeback.written(step)
        writeback.join()
        writeback.written(step + 1)  # the next one is a whole step later
        writeback.join()
        writeback.written(2 * step)
        writeback.join()
        assert calls == [fd, fd]
    finally:
        os.close(fd)
