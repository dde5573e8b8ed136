"""The one ELF writer (shipenv.build.patch) on copies of the files in tests/elf/.

Each edit is read back through shipenv.bundle.elf, and the patched executable
is run: what the loader does with the new search path is what users notice.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
from elftools.elf.sections import SymbolTableSection

from shipenv.build import patch
from shipenv.bundle import elf
from tests.helpers import REPO, pyenv_python

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


# -- the same bytes as the pyelftools implementation ------------------------------------------


def _pyelftools_rewrite(f: io.BytesIO, entries: tuple[str, ...]) -> bool:
    """patch._rewrite_in_place as it was before elfread (pyelftools' sections), on bytes in memory."""
    new = (":".join(entries) or "$ORIGIN").encode()
    elf_file = ELFFile(f)
    dynamic = next((sec for sec in elf_file.iter_sections() if isinstance(sec, DynamicSection)), None)
    if dynamic is None:
        return False
    tags = list(dynamic.iter_tags())
    paths = [(i, t) for i, t in enumerate(tags) if t.entry.d_tag in ("DT_RPATH", "DT_RUNPATH")]
    strtab = next((t.entry.d_val for t in tags if t.entry.d_tag == "DT_STRTAB"), None)
    if len(paths) != 1 or strtab is None:
        return False
    index, tag = paths[0]
    offsets = list(elf_file.address_offsets(strtab))
    if not offsets:
        return False
    strtab_off = offsets[0]
    old_off = tag.entry.d_val
    f.seek(strtab_off + old_off)
    raw = f.read(len(new) + 4096)
    old_len = raw.find(b"\0")
    if old_len < 0:
        f.seek(strtab_off + old_off)
        raw = f.read(1 << 20)
        old_len = raw.find(b"\0")
    if old_len < len(new):
        return False
    referenced = {t.entry.d_val for t in tags if t.entry.d_tag in ("DT_NEEDED", "DT_SONAME", "DT_RPATH", "DT_RUNPATH", "DT_AUXILIARY", "DT_FILTER")}
    for section in elf_file.iter_sections():
        if isinstance(section, SymbolTableSection) and section.name == ".dynsym":
            referenced.update(sym.entry.st_name for sym in section.iter_symbols())
    for section in elf_file.iter_sections():
        if isinstance(section, GNUVerNeedSection):
            for verneed, aux_iter in section.iter_versions():
                referenced.add(verneed.entry.vn_file)
                referenced.update(aux.entry.vna_name for aux in aux_iter)
    if any(old_off < o <= old_off + old_len for o in referenced):
        return False
    entry_size = dynamic["sh_entsize"] or (16 if elf_file.elfclass == 64 else 8)
    tag_bytes = elf_file.structs.Elf_sxword("d_tag").build(15)
    f.seek(strtab_off + old_off)
    f.write(new + b"\0" * (old_len - len(new)))
    f.seek(dynamic["sh_offset"] + index * entry_size)
    f.write(tag_bytes)
    return True


ENTRIES = [("$ORIGIN",), ("$ORIGIN/../lib", "$ORIGIN"), (), ("$ORIGIN/" + "x" * 64,)]


def _same_edit(path: Path, entries: tuple[str, ...]) -> bool:
    original = path.read_bytes()
    old = io.BytesIO(original)
    old_done = _pyelftools_rewrite(old, entries)
    writes = patch.in_place_writes(path, entries)
    new = bytearray(original)
    for offset, data in writes or ():
        new[offset:offset + len(data)] = data
    assert (writes is not None, bytes(new)) == (old_done, old.getvalue()), (path, entries)
    return old_done


def test_the_committed_files_are_edited_as_the_pyelftools_implementation_edited_them() -> None:
    done = [_same_edit(ELF_DIR / name, entries) for name in ("app", "app-merged", "libfoo.so.1", "libplain32.so") for entries in ENTRIES]
    assert any(done) and not all(done)


@pytest.mark.parametrize("xy", ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"])
def test_real_libraries_are_edited_as_the_pyelftools_implementation_edited_them(xy: str) -> None:
    """libpython (thousands of symbols), libpython3.so (a GNU hash that counts one of five), the interpreter, some extensions."""
    python = pyenv_python(xy)
    lib = python.parent.parent / "lib"
    dynload = sorted((lib / f"python{xy}" / "lib-dynload").glob("*.so"))
    files = [python, *sorted(lib.glob("libpython3*.so*")), *dynload[::8]]
    done = [_same_edit(path, ENTRIES[i % len(ENTRIES)] if "libpython3." not in path.name else ENTRIES[0])
            for i, path in enumerate(files) if elf.try_read(path) is not None]
    assert any(done) and not all(done)
