"""ELF reading (shipenv.bundle.elf) over the tiny files committed in tests/elf/.

``tests/elf/build.sh`` made them with gcc and says what each one holds; the
values asserted here are what ``readelf -d`` and ``readelf -V`` print for them.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sysconfig
from pathlib import Path
from typing import IO

import pytest
from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection
from elftools.elf.sections import SymbolTableSection

from shipenv.bundle import elf, elfread
from shipenv.model import ElfInfo
from tests.helpers import REPO, pyenv_python

ELF_DIR = REPO / "tests" / "elf"
GLIBC = re.compile(r"^GLIBC_(\d+)\.(\d+)(?:\.\d+)?$")


def test_a_shared_library_has_its_soname_and_runpath() -> None:
    info = elf.read(ELF_DIR / "libfoo.so.1")
    assert info.soname == "libfoo.so.1"
    assert info.runpath == ("$ORIGIN/../lib", "/opt/foo/lib")
    assert info.rpath == ()
    assert info.needed == ()
    assert (info.machine, info.elfclass, info.is_shared) == ("x86_64", 64, True)


def test_an_executable_has_its_needed_libraries_in_order_and_its_rpath() -> None:
    info = elf.read(ELF_DIR / "app")
    assert info.needed == ("libfoo.so.1", "libc.so.6")
    assert info.rpath == ("/build/host/toolchain/lib",)
    assert info.runpath == ()
    assert info.soname is None


def test_glibc_versions_are_the_symbol_versions_it_needs() -> None:
    info = elf.read(ELF_DIR / "app")
    # GLIBC_2.2.5 (printf, memcpy's oldest version on x86_64) and GLIBC_2.34 (__libc_start_main).
    assert info.glibc_versions == ((2, 2), (2, 34))
    assert elf.glibc_floor([info, elf.read(ELF_DIR / "libfoo.so.1")]) == (2, 34)


def test_no_glibc_versions_means_no_floor() -> None:
    assert elf.glibc_floor([elf.read(ELF_DIR / "libfoo.so.1"), elf.read(ELF_DIR / "libplain32.so")]) is None
    assert elf.glibc_floor([]) is None


def test_a_32_bit_i386_library_is_named_i686() -> None:
    info = elf.read(ELF_DIR / "libplain32.so")
    assert (info.machine, info.elfclass) == ("i686", 32)
    assert (info.needed, info.rpath, info.runpath, info.glibc_versions) == ((), (), (), ())


def test_a_string_shared_by_rpath_and_needed_reads_as_both() -> None:
    # The linker stored NEEDED libfoo.so.1 as the tail of the RPATH string (see build.sh).
    info = elf.read(ELF_DIR / "app-merged")
    assert info.rpath == ("/build/host/libfoo.so.1",)
    assert info.needed == ("libfoo.so.1", "libc.so.6")


def test_read_stream_takes_bytes_in_memory() -> None:
    assert elf.read_stream(io.BytesIO((ELF_DIR / "app").read_bytes())) == elf.read(ELF_DIR / "app")


@pytest.mark.parametrize("data", [b"", b"#!/bin/sh\necho hi\n", b"\x7fEL", b"PK\x03\x04" + bytes(60)])
def test_non_elf_input_is_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "not-elf"
    path.write_bytes(data)
    assert not elf.is_elf(path)
    assert elf.try_read(path) is None
    with pytest.raises(ELFError):
        elf.read_stream(io.BytesIO(data))


@pytest.mark.parametrize("keep", [4, 16, 64, 1000, 3600])
def test_truncated_elf_is_none_not_a_crash(tmp_path: Path, keep: int) -> None:
    data = (ELF_DIR / "app").read_bytes()
    path = tmp_path / "app"
    path.write_bytes(data[:keep])  # 3600: in the middle of the dynamic table
    assert elf.is_elf(path)  # the magic is there; the rest is not
    assert elf.try_read(path) is None


def test_a_file_cut_after_its_last_segment_still_reads_as_the_loader_sees_it() -> None:
    # The section headers sit past the last loaded byte; the loader never reads them, and neither does shipenv.
    data = (ELF_DIR / "app").read_bytes()
    image = elfread.Image(elfread.Source.of_stream(io.BytesIO(data)))
    end = max(offset + filesz for _vaddr, filesz, offset in image.loads)
    assert end < len(data) - 64
    assert elf.read_stream(io.BytesIO(data[:end])) == elf.read(ELF_DIR / "app")


def test_is_elf_is_false_for_symlinks_directories_and_missing_files(tmp_path: Path) -> None:
    shutil.copy(ELF_DIR / "app", tmp_path / "app")
    os.symlink("app", tmp_path / "link")
    assert elf.is_elf(tmp_path / "app")
    assert not elf.is_elf(tmp_path / "link")
    assert not elf.is_elf(tmp_path)
    assert not elf.is_elf(tmp_path / "missing")
    os.mkfifo(tmp_path / "fifo")
    assert not elf.is_elf(tmp_path / "fifo")  # and the open did not wait for a writer
    assert elf.try_read(tmp_path / "missing") is None


# -- the loader's view against pyelftools' section view, on real files --------------------------


def _section_view(stream: IO[bytes]) -> tuple[ElfInfo, list[tuple[str, list[str]]], list[list[str]], int | None]:
    """What pyelftools reads from the section headers (shipenv's reader before elfread): facts, version needs and definitions, .dynsym's size."""
    f = ELFFile(stream)
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname: str | None = None
    glibc: set[tuple[int, int]] = set()
    needs: list[tuple[str, list[str]]] = []
    defs: list[list[str]] = []
    dynsym: int | None = None
    for section in f.iter_sections():
        if isinstance(section, DynamicSection):
            for tag in section.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    needed.append(tag.needed)
                elif tag.entry.d_tag == "DT_RPATH":
                    rpath.extend(p for p in tag.rpath.split(":") if p)
                elif tag.entry.d_tag == "DT_RUNPATH":
                    runpath.extend(p for p in tag.runpath.split(":") if p)
                elif tag.entry.d_tag == "DT_SONAME":
                    soname = tag.soname
        elif isinstance(section, GNUVerNeedSection):
            for verneed, aux_iter in section.iter_versions():
                names = [aux.name for aux in aux_iter]
                needs.append((verneed.name, names))
                glibc.update((int(m.group(1)), int(m.group(2))) for m in map(GLIBC.match, names) if m)
        elif isinstance(section, GNUVerDefSection):
            defs.extend([aux.name for aux in aux_iter] for _verdef, aux_iter in section.iter_versions())
        elif isinstance(section, SymbolTableSection) and section.name == ".dynsym":
            dynsym = section.num_symbols()
    machines = {"EM_X86_64": "x86_64", "EM_AARCH64": "aarch64", "EM_386": "i686", "EM_PPC64": "ppc64le", "EM_S390": "s390x"}
    info = ElfInfo(machines.get(f["e_machine"], str(f["e_machine"])), f.elfclass, soname, tuple(needed), tuple(rpath),
                   tuple(runpath), tuple(sorted(glibc)), f["e_type"] == "ET_DYN")
    return info, needs, defs, dynsym


def _loader_view(path: Path) -> tuple[ElfInfo, list[tuple[str, list[str]]], list[list[str]], int | None]:
    with path.open("rb") as f:
        image = elfread.Image(elfread.Source.of_stream(f))

        def text(index: int) -> str:
            return image.string(index).decode("utf-8", "replace")

        needs = [(text(file), [text(n) for n in names]) for file, names in image.version_needs()]
        defs = [[text(n) for n in names] for _zero, names in image.version_definitions()]
        count = image.symbol_count() if image.tag(elfread.DT_SYMTAB) is not None else None
    return elf.read(path), needs, defs, count


def _elf_files(top: Path) -> list[Path]:
    """Every regular file under ``top`` that starts with the ELF magic.

    scandir (no stat calls) and no look inside Python's own sources and
    bytecode, the thousands of files a site-packages holds that nothing maps.
    """
    found, stack = [], [str(top)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and not entry.name.endswith((".py", ".pyc", ".pyi")):
                    with open(entry.path, "rb", buffering=0) as f:
                        if f.read(4) == b"\x7fELF":
                            found.append(Path(entry.path))
    return sorted(found)


def _where(name: str) -> Path:
    """An interpreter's prefix (``3.X``), or the site-packages of the environment running the tests (``wheels``)."""
    return Path(sysconfig.get_paths()["platlib"]) if name == "wheels" else pyenv_python(name).parent.parent


@pytest.mark.parametrize("where", ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "wheels"])
def test_the_loader_view_agrees_with_pyelftools_on_every_real_elf_file(where: str) -> None:
    """Every ELF of a pyenv interpreter, or of the wheels installed to run these tests (lief, zstandard, cryptography, ...).

    Same facts, same version needs and definitions (so the in-place edit
    checks the same names), and a symbol count from the hash table equal to
    ``.dynsym``'s size (so it checks every symbol name).
    """
    files = _elf_files(_where(where))
    # ci/hosts.sh runs this in venvs holding only shipenv's own dependencies: 9 ELF files there.
    assert len(files) > (5 if where == "wheels" else 20)
    for path in files:
        with path.open("rb") as f:
            expected = _section_view(f)
        assert _loader_view(path) == expected, path
