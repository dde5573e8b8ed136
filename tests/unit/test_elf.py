"""ELF reading (shipenv.bundle.elf) over the tiny files committed in tests/elf/.

``tests/elf/build.sh`` made them with gcc and says what each one holds; the
values asserted here are what ``readelf -d`` and ``readelf -V`` print for them.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from elftools.common.exceptions import ELFError

from shipenv.bundle import elf
from tests.helpers import REPO

ELF_DIR = REPO / "tests" / "elf"


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


@pytest.mark.parametrize("keep", [4, 16, 64, 1000, -64])
def test_truncated_elf_is_none_not_a_crash(tmp_path: Path, keep: int) -> None:
    data = (ELF_DIR / "app").read_bytes()
    path = tmp_path / "app"
    path.write_bytes(data[:keep])
    assert elf.is_elf(path)  # the magic is there; the rest is not
    assert elf.try_read(path) is None


def test_is_elf_is_false_for_symlinks_directories_and_missing_files(tmp_path: Path) -> None:
    shutil.copy(ELF_DIR / "app", tmp_path / "app")
    os.symlink("app", tmp_path / "link")
    assert elf.is_elf(tmp_path / "app")
    assert not elf.is_elf(tmp_path / "link")
    assert not elf.is_elf(tmp_path)
    assert not elf.is_elf(tmp_path / "missing")
    assert elf.try_read(tmp_path / "missing") is None
