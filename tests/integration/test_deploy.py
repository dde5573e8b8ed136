"""Issue #5: shipenv deploy / rollback / releases / prune on a server, through the CLI.

Real bundles (pyenv's 3.12, built once per run as .tar.gz) go through a whole
release cycle and answer from the right version after each step; synthetic
bundles (``tests.unit.test_deploy.make_tree``: valid manifest and RECORD,
milliseconds to make) make the expensive scenarios cheap: SIGKILL at 52
moments of a deploy, two deploys at once, a full disk.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ASK_VERSION, SHIPENV, BuildFn, check_release, make_tree, pack, real_bundle, run_shipenv, small_tmpfs


@pytest.fixture(scope="module")
def app_v1(built_bundle: BuildFn) -> Path:
    return real_bundle(built_bundle, "1.0")


@pytest.fixture(scope="module")
def app_v2(built_bundle: BuildFn) -> Path:
    return real_bundle(built_bundle, "2.0")


def current(root: Path) -> str:
    return os.readlink(root / "current")


def listed(root: Path) -> list[tuple[str, bool]]:
    out = run_shipenv("releases", "--root", root, "--json").stdout
    return [(r["name"], r["current"]) for r in json.loads(out)]


def answers(root: Path) -> tuple[str, str]:
    """What the app running from ROOT/current says its version and real prefix are."""
    done = subprocess.run([root / "current" / "bin" / "python3.12", "-c", ASK_VERSION], capture_output=True, text=True, check=True)
    version, prefix = done.stdout.split()
    return version, prefix


def verified(root: Path) -> None:
    run_shipenv("verify", root / "current")
    check_release(root / "current")


def test_release_cycle_with_real_bundles(app_v1: Path, app_v2: Path, tmp_path: Path) -> None:
    root = tmp_path / "srv" / "app"

    first = run_shipenv("deploy", app_v1, "--root", root).stdout
    assert first.startswith(f"Deployed app-1.0 and pointed {root}/current to it (")
    assert current(root) == "releases/app-1.0"
    assert listed(root) == [("app-1.0", True)]
    assert answers(root) == ("1.0", str(root / "releases" / "app-1.0"))

    second = run_shipenv("deploy", app_v2, "--root", root, "--check", "bin/python3.12 -c 'import ssl, sqlite3'").stdout
    assert second.startswith(f"Deployed app-2.0 and switched {root}/current from app-1.0 to app-2.0 (")
    # Two builds of the same interpreter differ in their manifest only: nearly everything is linked.
    written, linked = (float(x.split()[0].replace(",", "")) for x in second.split(": ", 1)[1].split(" written, "))
    assert linked > 50 and "MB hard-linked from app-1.0" in second, second
    assert listed(root) == [("app-2.0", True), ("app-1.0", False)]
    assert answers(root) == ("2.0", str(root / "releases" / "app-2.0"))

    assert run_shipenv("rollback", "--root", root).stdout == f"Switched {root}/current from app-2.0 to app-1.0.\n"
    assert listed(root) == [("app-1.0", True), ("app-2.0", False)]
    assert answers(root)[0] == "1.0"

    assert run_shipenv("rollback", "--root", root, "--to", "2.0").stdout == f"Switched {root}/current from app-1.0 to app-2.0.\n"
    assert listed(root) == [("app-2.0", True), ("app-1.0", False)]
    assert answers(root)[0] == "2.0"

    pruned = run_shipenv("prune", "--root", root, "--keep", "1").stdout
    assert pruned == f"Removed app-1.0 from {root}/releases; kept app-2.0.\n"
    assert listed(root) == [("app-2.0", True)]
    # app-2.0 was mostly hard links into app-1.0: it stands alone now.
    verified(root)
    assert answers(root)[0] == "2.0"

    again = run_shipenv("deploy", app_v2, "--root", root).stdout
    assert again == f"app-2.0 is already deployed with the same content and is current in {root}; nothing changed.\n"
    text = run_shipenv("releases", "--root", root).stdout
    assert text.startswith("* app-2.0 ")
    history = [json.loads(line) for line in (root / "history.jsonl").read_text().splitlines()]
    assert [(h["action"], h["from"], h["to"]) for h in history] == [
        ("deploy", None, "app-1.0"), ("deploy", "app-1.0", "app-2.0"),
        ("rollback", "app-2.0", "app-1.0"), ("rollback-to", "app-1.0", "app-2.0"),
    ]


def test_host_with_older_glibc_is_refused_by_the_cli(app_v1: Path, app_v2: Path, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    run_shipenv("deploy", app_v1, "--root", root)
    env = dict(os.environ, SHIPENV_HOST_GLIBC="2.17")
    done = run_shipenv("deploy", app_v2, "--root", root, env=env, check=False)
    assert done.returncode == 4  # a refused host, as deploy.sh says it
    assert done.stderr.splitlines()[0] == (
        "error: This host has glibc 2.17 but app-2.0 needs 2.36 or newer; "
        "deploy it on a newer distribution or rebuild it on an older one."
    )
    assert current(root) == "releases/app-1.0"
    assert sorted(os.listdir(root / "releases")) == ["app-1.0"]
    assert sorted(os.listdir(root)) == [".shipenv.lock", "current", "history.jsonl", "releases"]


def test_failing_check_keeps_the_running_release(app_v1: Path, app_v2: Path, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    run_shipenv("deploy", app_v1, "--root", root)
    done = run_shipenv("deploy", app_v2, "--root", root, "--check", "bin/python3.12 -c 'import sys; print(\"selftest: broken\"); sys.exit(4)'", check=False)
    assert done.returncode == 1
    assert f"failed in app-2.0 (exit status 4); {root}/current still points to app-1.0." in done.stderr
    assert "selftest: broken" in done.stderr
    assert current(root) == "releases/app-1.0" and os.listdir(root / "releases") == ["app-1.0"]


# -- crash safety ------------------------------------------------------------------------------


def _deploy_proc(archive: Path, root: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*SHIPENV, "deploy", str(archive), "--root", str(root), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_at_any_moment_leaves_a_complete_current_release(tmp_path: Path) -> None:
    """52 deploys killed at moments spread from 0 to past the end: current always verifies."""
    v1 = pack(make_tree(tmp_path / "t1", "1.0", files=50), tmp_path / "dist")
    v2 = pack(make_tree(tmp_path / "t2", "2.0", files=300, big=1_500_000), tmp_path / "dist")
    root = tmp_path / "srv"
    run_shipenv("deploy", v1, "--root", root)

    def reset() -> None:
        # Back to "app-1.0 current, no app-2.0"; leftovers of the kill stay for the next deploy.
        if current(root) != "releases/app-1.0":
            os.symlink("releases/app-1.0", root / "reset-link")
            os.replace(root / "reset-link", root / "current")
        shutil.rmtree(root / "releases" / "app-2.0", ignore_errors=True)

    # How long a whole deploy takes here and now (this machine's load varies): the slowest of two.
    full = 0.0
    for _ in range(2):
        started = time.monotonic()
        run_shipenv("deploy", v2, "--root", root)
        full = max(full, time.monotonic() - started)
        reset()

    rng = random.Random(5)
    kills = 52
    outcomes = {"releases/app-1.0": 0, "releases/app-2.0": 0}
    interrupted = 0
    for i in range(kills):
        proc = _deploy_proc(v2, root)
        # Evenly from 0 to a bit past the whole run, jittered so no two runs hit the same instant.
        time.sleep(max(0.0, full * 1.3 * i / (kills - 1) + rng.uniform(-0.02, 0.02)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        link = current(root)
        assert link in outcomes, link
        outcomes[link] += 1
        check_release(root / "current")
        interrupted += any(n.startswith(".deploy-") for n in os.listdir(root))
        if i % 10 == 0:
            run_shipenv("verify", root / "current")
        reset()
    print(f"full deploy {full:.2f}s; current after the kills: {outcomes}; {interrupted} left a temporary directory")
    # The kills did land everywhere: before, during unpacking, and after the switch.
    assert outcomes["releases/app-1.0"] >= 5 and outcomes["releases/app-2.0"] >= 1, (outcomes, full)
    assert interrupted >= 5, (interrupted, full)

    final = run_shipenv("deploy", v2, "--root", root).stdout
    assert final.startswith("Deployed app-2.0")
    assert current(root) == "releases/app-2.0"
    verified(root)
    assert sorted(os.listdir(root)) == [".shipenv.lock", "current", "history.jsonl", "releases"]


# -- one deploy at a time ------------------------------------------------------------------------


LOCKED = "Another deploy is running on {root} (pid "


def test_two_deploys_at_once_one_fails_cleanly(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    v1 = pack(make_tree(tmp_path / "t1", "1.0"), dist)
    v2 = pack(make_tree(tmp_path / "t2", "2.0", big=30_000_000), dist)
    v3 = pack(make_tree(tmp_path / "t3", "3.0", big=30_000_000), dist)
    root = tmp_path / "srv"
    run_shipenv("deploy", v1, "--root", root)

    procs = [_deploy_proc(v, root) for v in (v2, v3)]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    ok = [r for r in results if r[0] == 0]
    failed = [r for r in results if r[0] != 0]
    assert ok, results
    for rc, _out, err in failed:
        assert rc == 1 and err.startswith(f"error: {LOCKED.format(root=root)}") and err.rstrip().endswith(
            "try again or pass --wait SECONDS."), err
    deployed = {json.loads(line)["to"] for line in (root / "history.jsonl").read_text().splitlines()}
    assert current(root).removeprefix("releases/") in deployed
    assert sorted(os.listdir(root / "releases")) == sorted(deployed)
    check_release(root / "current")
    assert sorted(os.listdir(root)) == [".shipenv.lock", "current", "history.jsonl", "releases"]

    # The same, made certain: the second starts while the first holds the lock (its --check sleeps).
    v4 = pack(make_tree(tmp_path / "t4", "4.0"), dist)
    first = _deploy_proc(v4, root, "--check", "sleep 2")
    deadline = time.monotonic() + 30
    while (root / ".shipenv.lock").read_text().strip() != str(first.pid):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.01)
    second = run_shipenv("deploy", v2, "--root", root, check=False)
    assert second.returncode == 1
    assert second.stderr == f"error: {LOCKED.format(root=root)}{first.pid}); try again or pass --wait SECONDS.\n"
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, (out, err)
    assert current(root) == "releases/app-4.0"
    check_release(root / "current")


def test_two_deploys_at_once_with_wait_both_land_in_turn(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    v2 = pack(make_tree(tmp_path / "t2", "2.0", big=30_000_000), dist)
    v3 = pack(make_tree(tmp_path / "t3", "3.0", big=30_000_000), dist)
    root = tmp_path / "srv"
    procs = [_deploy_proc(v, root, "--wait", "60") for v in (v2, v3)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    assert [r[0] for r in results] == [0, 0], results
    history = [json.loads(line) for line in (root / "history.jsonl").read_text().splitlines()]
    assert sorted(h["to"] for h in history) == ["app-2.0", "app-3.0"]
    assert history[1]["from"] == history[0]["to"]  # one after the other, never interleaved
    assert current(root) == f"releases/{history[-1]['to']}"
    for name in ("app-2.0", "app-3.0"):
        check_release(root / "releases" / name)


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs to deploy onto."""
    with small_tmpfs(tmp_path / "small disk", "20m") as mount:
        yield mount


def test_full_disk_is_one_sentence_and_changes_nothing(app_v1: Path, small_disk: Path, tmp_path: Path) -> None:
    root = small_disk / "app"
    small = pack(make_tree(tmp_path / "t", "0.1", floor="2.17"), tmp_path / "dist")
    run_shipenv("deploy", small, "--root", root)
    free_before = shutil.disk_usage(small_disk).free

    done = run_shipenv("deploy", app_v1, "--root", root, check=False)
    assert done.returncode == 5  # an I/O failure, as deploy.sh says it
    lines = done.stderr.splitlines()
    # Refused before the first byte: RECORD's total (what is not hard-linked from app-0.1) against statvfs.
    match = re.fullmatch(rf"error: The disk holding {re.escape(str(root))} has (.*) free but app-1.0 needs about (.*); "
                         rf"nothing was deployed and {re.escape(str(root))}/current still points to app-0.1\.", lines[0])
    assert match, done.stderr
    free, need = match.groups()
    assert free.endswith(" MB") and float(free.split()[0]) < 21 and need.endswith(" MB") and float(need.split()[0]) > 21, lines[0]
    assert lines[1] == f"hint: Free some space, for example with 'shipenv prune --root {root} --keep 2', then deploy again.", lines[1]
    assert current(root) == "releases/app-0.1"
    assert sorted(os.listdir(root)) == [".shipenv.lock", "current", "history.jsonl", "releases"]
    assert os.listdir(root / "releases") == ["app-0.1"]
    check_release(root / "current")
    assert shutil.disk_usage(small_disk).free == free_before
