"""The one ELF writer (shipenv.build.patch) on copies of the files in tests/elf/.

Each edit is read back through shipenv.bundle.elf, and the patched executable
is run: what the loader does with the new search path is what users notice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shipenv.build import patch
from shipenv.bundle import elf
from tests.helpers import REPO

ELF_DIR = REPO / "tests" / "elf"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """app and libfoo.so.1 side by side in a fresh directory (app's RPATH names a build-host path)."""
    d = tmp_path / "moved"
    d.mkdir()
    for name in ("app", "app-merged", "libfoo.so.1"):
        shutil.copy2(ELF_DIR / name, d / name)
    return d


def runs(exe: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    return subprocess.run([str(exe)], capture_output=True, text=True, env=env, check=False)


def test_a_shorter_rpath_is_written_in_place_and_the_app_then_finds_its_library(app_dir: Path) -> None:
    app = app_dir / "app"
    before = runs(app)
    assert before.returncode != 0 and "libfoo.so.1" in before.stderr
    size = app.stat().st_size
    patch.LiefPatcher().set_rpath(app, ("$ORIGIN",))
    info = elf.read(app)
    assert info.rpath == ("$ORIGIN",) and info.runpath == ()
    assert info.needed == ("libfoo.so.1", "libc.so.6")
    assert info.glibc_versions == ((2, 2), (2, 34))
    assert app.stat().st_size == size  # in place: nothing moved
    assert runs(app).stdout == "foo says 5\n"


def test_in_place_rewrite_keeps_every_other_byte(app_dir: Path) -> None:
    app = app_dir / "app"
    original = app.read_bytes()
    assert patch._rewrite_in_place(app, ("$ORIGIN/../lib",))
    changed = [i for i, (a, b) in enumerate(zip(original, app.read_bytes())) if a != b]
    rpath_at = original.index(b"/build/host/toolchain/lib\0")
    # Only the string (and no tag: it already was DT_RPATH) changed.
    assert changed and all(rpath_at <= i < rpath_at + len("/build/host/toolchain/lib") for i in changed)
    assert elf.read(app).rpath == ("$ORIGIN/../lib",)


def test_a_runpath_becomes_an_rpath(app_dir: Path) -> None:
    lib = app_dir / "libfoo.so.1"
    patch.LiefPatcher().set_rpath(lib, ("$ORIGIN",))
    info = elf.read(lib)
    assert (info.rpath, info.runpath, info.soname) == (("$ORIGIN",), (), "libfoo.so.1")


def test_an_empty_path_leaves_only_origin(app_dir: Path) -> None:
    lib = app_dir / "libfoo.so.1"
    patch.LiefPatcher().set_rpath(lib, ())
    assert elf.read(lib).rpath == ("$ORIGIN",)


def test_a_longer_rpath_is_rebuilt_by_lief_and_still_runs(app_dir: Path) -> None:
    app = app_dir / "app"
    long = ("$ORIGIN/../lib/some/long/relative/path/that/does/not/fit", "$ORIGIN")
    assert not patch._rewrite_in_place(app, long)
    patch.LiefPatcher().set_rpath(app, long)
    info = elf.read(app)
    assert info.rpath == long and info.needed == ("libfoo.so.1", "libc.so.6")
    assert runs(app).stdout == "foo says 5\n"


def test_a_string_shared_with_needed_is_not_overwritten(app_dir: Path) -> None:
    app = app_dir / "app-merged"
    # NEEDED libfoo.so.1 lives inside the RPATH string: writing over it would change NEEDED too.
    assert not patch._rewrite_in_place(app, ("$ORIGIN",))
    patch.LiefPatcher().set_rpath(app, ("$ORIGIN",))
    info = elf.read(app)
    assert info.rpath == ("$ORIGIN",) and info.needed == ("libfoo.so.1", "libc.so.6")
    assert runs(app).stdout == "foo says 5\n"


def test_the_file_is_replaced_so_hard_links_elsewhere_keep_the_old_bytes(app_dir: Path, tmp_path: Path) -> None:
    app = app_dir / "app"
    app.chmod(0o750)
    os.link(app, tmp_path / "cached")
    patch.LiefPatcher().set_rpath(app, ("$ORIGIN",))
    assert elf.read(tmp_path / "cached").rpath == ("/build/host/toolchain/lib",)
    assert (tmp_path / "cached").read_bytes() == (ELF_DIR / "app").read_bytes()
    assert app.stat().st_mode & 0o7777 == 0o750
    assert sorted(os.listdir(app_dir)) == ["app", "app-merged", "libfoo.so.1"]  # no temporary file left


def test_a_library_without_a_search_path_is_not_rewritten_in_place(tmp_path: Path) -> None:
    obj = tmp_path / "plain.so"
    shutil.copy(ELF_DIR / "libplain32.so", obj)
    original = obj.read_bytes()
    # It has a dynamic section but no search path: there is no string to overwrite.
    assert not patch._rewrite_in_place(obj, ("$ORIGIN",))
    assert obj.read_bytes() == original


def test_the_recording_patcher_writes_nothing(app_dir: Path) -> None:
    app = app_dir / "app"
    original = app.read_bytes()
    recorder = patch.RecordingPatcher()
    recorder.set_rpath(app, ("$ORIGIN",))
    assert recorder.calls == [(app, ("$ORIGIN",))]
    assert app.read_bytes() == original
