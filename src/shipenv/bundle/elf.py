"""ELF files, read only (pyelftools): machine, NEEDED, search paths, glibc versions.

Reading never changes a file; the one writer is :mod:`shipenv.build.patch`.
The build side, ``verify`` and the audit all read ELF facts through here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection

from shipenv.model import ElfInfo

_GLIBC = re.compile(r"^GLIBC_(\d+)\.(\d+)(?:\.\d+)?$")
_MACHINES = {"EM_X86_64": "x86_64", "EM_AARCH64": "aarch64", "EM_386": "i686", "EM_PPC64": "ppc64le", "EM_S390": "s390x"}


def is_elf(path: Path) -> bool:
    """True for a regular file that starts with the ELF magic."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def read(path: Path) -> ElfInfo:
    """What the dynamic loader will look at: NEEDED, RPATH, RUNPATH, version needs."""
    with path.open("rb") as f:
        return read_stream(f)


def read_stream(stream: IO[bytes]) -> ElfInfo:
    elf = ELFFile(stream)
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname: str | None = None
    glibc: set[tuple[int, int]] = set()
    for section in elf.iter_sections():
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
            for _verneed, aux_iter in section.iter_versions():
                for aux in aux_iter:
                    m = _GLIBC.match(aux.name)
                    if m:
                        glibc.add((int(m.group(1)), int(m.group(2))))
    return ElfInfo(
        machine=_MACHINES.get(elf["e_machine"], str(elf["e_machine"])),
        elfclass=elf.elfclass,
        soname=soname,
        needed=tuple(needed),
        rpath=tuple(rpath),
        runpath=tuple(runpath),
        glibc_versions=tuple(sorted(glibc)),
        is_shared=elf["e_type"] == "ET_DYN",
    )


def try_read(path: Path) -> ElfInfo | None:
    """Like :func:`read`, but None for a file pyelftools cannot parse."""
    try:
        return read(path)
    except (ELFError, OSError, ValueError, KeyError, AssertionError):
        return None


def glibc_floor(infos: Iterable[ElfInfo]) -> tuple[int, int] | None:
    versions = [v for info in infos for v in info.glibc_versions]
    return max(versions) if versions else None
