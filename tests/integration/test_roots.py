"""The chroot roots and the harness that runs commands in them.

Bundle tests trust these roots to be what they claim (a distroless image, a
bare Debian 12 or 11 server) and trust the harness to leave the cached roots
untouched; if either were wrong, a bundle test could pass on a root that
secretly has Python, or fail for a reason that is not the bundle's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.chroots import (
    EXEC_FAILED,
    KINDS,
    Kind,
    OverlayRoot,
    RootError,
    root_path,
    run_in_root,
)

GLIBC_FILES = {
    "lib/x86_64-linux-gnu/libc.so.6",
    "lib/x86_64-linux-gnu/libm.so.6",
    "lib/x86_64-linux-gnu/libpthread.so.0",
    "lib/x86_64-linux-gnu/libdl.so.2",
    "lib/x86_64-linux-gnu/librt.so.1",
    "lib/x86_64-linux-gnu/libutil.so.1",
    "lib/x86_64-linux-gnu/libresolv.so.2",
    "lib64/ld-linux-x86-64.so.2",
    "dev/null",
}


def _tree(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if not path.is_dir() or path.is_symlink()
    }


def test_glibc_root_holds_glibc_and_nothing_else() -> None:
    root = root_path("glibc")
    assert _tree(root) == GLIBC_FILES
    assert (root / "lib/x86_64-linux-gnu/libc.so.6").is_file()
    assert not (root / "lib/x86_64-linux-gnu/libc.so.6").is_symlink()
    for empty in ("proc", "tmp", "etc", "srv"):
        assert (root / empty).is_dir()


def test_glibc_root_has_no_shell() -> None:
    done = run_in_root("glibc", ["/bin/sh", "-c", "true"])
    assert done.returncode == EXEC_FAILED
    assert "No such file or directory" in done.stderr


def test_glibc_root_runs_its_own_loader() -> None:
    done = run_in_root("glibc", ["/lib64/ld-linux-x86-64.so.2", "--version"])
    assert done.returncode == 0, done.stderr
    assert "GLIBC" in done.stdout


def test_host_binary_runs_on_the_roots_libc_with_a_clean_environment(tmp_path: Path) -> None:
    # coreutils' env needs only libc.so.6: it must load from the root's /lib,
    # and print nothing of the host's environment.
    env_bin = shutil.which("env")
    assert env_bin is not None
    done = run_in_root("glibc", ["/opt/env"], binds={env_bin: "/opt/env"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "PATH=/usr/local/bin:/usr/bin:/bin\n"

    done = run_in_root("glibc", ["/opt/env"], binds={env_bin: "/opt/env"}, env={"A": "x y"})
    assert done.stdout == "A=x y\n"


def test_paths_with_spaces_work_without_a_shell(tmp_path: Path) -> None:
    app = tmp_path / "my app"
    app.mkdir()
    cat = shutil.which("cat")
    assert cat is not None
    shutil.copy(cat, app / "cat tool")
    (app / "a b.txt").write_text("hello from the host\n")
    done = run_in_root(
        "glibc",
        ["/srv/my app/cat tool", "a b.txt"],
        binds={app: "/srv/my app"},
        cwd="/srv/my app",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from the host\n"


def test_bound_directory_is_visible_and_writable(tmp_path: Path) -> None:
    shared = tmp_path / "with space"
    shared.mkdir()
    (shared / "in.txt").write_text("in\n")
    done = run_in_root(
        "bookworm",
        ["sh", "-c", 'cat "/mnt/a dir/in.txt" && echo out > "/mnt/a dir/out.txt"'],
        binds={shared: "/mnt/a dir"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "in\n"
    assert (shared / "out.txt").read_text() == "out\n"
    assert not (root_path("bookworm") / "mnt/a dir").exists()


def test_bind_targets_follow_symlinks_inside_the_root(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marker.write_text("bound\n")
    host_target = Path("/srv/shipenv-chroots-link-target")
    assert not host_target.exists()
    with OverlayRoot("bookworm") as root:
        # An absolute link inside the root must resolve inside it, never to
        # the host's /srv, and Debian's relative /lib -> usr/lib as well.
        made = root.run(["sh", "-c", f"mkdir {host_target} && ln -s {host_target} /opt/link"])
        assert made.returncode == 0, made.stderr
        done = root.run(
            ["cat", f"{host_target}/marker", "/usr/lib/shipenv-dir/marker"],
            binds={marker: "/opt/link/marker", tmp_path: "/lib/shipenv-dir"},
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "bound\nbound\n"
    assert not host_target.exists()


def test_bookworm_is_a_bare_server() -> None:
    tools = run_in_root("bookworm", ["sh", "-c", "for t in sh tar gzip; do command -v $t; done"])
    assert tools.returncode == 0, tools.stderr
    assert tools.stdout.split() == ["/usr/bin/sh", "/usr/bin/tar", "/usr/bin/gzip"]
    pythons = run_in_root("bookworm", ["sh", "-c", "ls /usr/bin /usr/local/bin | grep -i python"])
    assert pythons.stdout == ""


@pytest.mark.parametrize(("kind", "version"), [("bookworm", "2.36"), ("bullseye", "2.31")])
def test_debian_roots_have_their_releases_glibc(kind: Kind, version: str) -> None:
    done = run_in_root(kind, ["getconf", "GNU_LIBC_VERSION"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"glibc {version}\n"


def test_proc_is_mounted_for_the_command() -> None:
    # The loader resolves $ORIGIN of the main program through /proc/self/exe.
    done = run_in_root("bookworm", ["readlink", "/proc/self/exe"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == "/usr/bin/readlink\n"
    # Its own PID namespace: the command is process 1, as in a container.
    assert run_in_root("bookworm", ["sh", "-c", "echo $$"]).stdout == "1\n"


def test_dev_has_the_usual_nodes() -> None:
    done = run_in_root(
        "bookworm", ["sh", "-c", "echo x > /dev/null && head -c 4 /dev/urandom | wc -c"]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "4\n"


def test_overlay_keeps_writes_between_runs_and_off_the_cached_root() -> None:
    cached = root_path("bookworm")
    with OverlayRoot("bookworm") as root:
        first = root.run(["sh", "-c", "echo v1 > /srv/state && rm /etc/hostname"])
        assert first.returncode == 0, first.stderr
        second = root.run(["sh", "-c", "cat /srv/state; test -e /etc/hostname || echo gone"])
        assert second.stdout == "v1\ngone\n"
        assert root.upper_path("/srv/state").read_text() == "v1\n"
        upper = root.upper
    assert not (cached / "srv/state").exists()
    assert (cached / "etc/hostname").exists()
    assert not upper.exists()


def test_overlay_runs_host_binaries_in_the_shell_free_root(tmp_path: Path) -> None:
    cp = shutil.which("cp")
    assert cp is not None
    (tmp_path / "payload").write_text("payload\n")
    with OverlayRoot("glibc") as root:
        binds = {tmp_path: "/in"}
        # cp needs libselinux, which a glibc-only root does not have: the
        # loader's own complaint, the one bundles must never produce.
        missing = root.run(["/in/cp"], binds={cp: "/in/cp"})
        assert missing.returncode != 0
        assert "libselinux.so.1: cannot open shared object file" in missing.stderr
        cat = shutil.which("cat")
        assert cat is not None
        shutil.copy(cat, tmp_path / "cat")
        done = root.run(["/in/cat", "/in/payload"], binds=binds)
        assert done.stdout == "payload\n"
    assert _tree(root_path("glibc")) == GLIBC_FILES


def test_run_in_root_is_read_only_unless_asked() -> None:
    cached = root_path("bookworm")
    ro = run_in_root("bookworm", ["touch", "/srv/new"])
    assert ro.returncode != 0
    assert "Read-only file system" in ro.stderr
    rw = run_in_root("bookworm", ["touch", "/srv/new"], writable=True)
    assert rw.returncode == 0, rw.stderr
    assert not (cached / "srv/new").exists()


def test_timeout_kills_every_process_of_the_run() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_in_root("bookworm", ["sh", "-c", "sleep 987 & sleep 986"], timeout=1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _processes_running("sleep\x00987"):
        time.sleep(0.1)
    assert not _processes_running("sleep\x00987")


def _processes_running(cmdline: str) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if cmdline in Path(f"/proc/{pid}/cmdline").read_text():
                return True
        except OSError:
            continue
    return False


def test_harness_errors_raise_instead_of_looking_like_a_failed_command(tmp_path: Path) -> None:
    with pytest.raises(RootError, match="bind source does not exist"):
        run_in_root("bookworm", ["true"], binds={tmp_path / "missing": "/x"})
    with pytest.raises(RootError, match="cwd"):
        run_in_root("bookworm", ["true"], cwd="/no/such/dir")


def test_missing_root_says_how_to_build_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPENV_ROOTS", str(tmp_path))
    for kind in KINDS:
        with pytest.raises(RootError, match="ci/setup.sh"):
            root_path(kind)
