"""ELF files, read only: machine, NEEDED, search paths, glibc versions, as the loader sees them.

Reading never changes a file; the one writer is :mod:`shipenv.build.patch`.
The build side, ``verify`` and the audit all read ELF facts through here.

The facts come from :mod:`shipenv.bundle.elfread`, which reads what ld.so
reads (program headers, ``PT_DYNAMIC``, ``DT_VERNEED``) in a few small
reads. pyelftools answers only for a file without program headers (a
relocatable object, which no loader maps): there the section table is the
only description there is, and pyelftools gives the answer shipenv always gave.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import IO

from elftools.common.exceptions import ELFError

from shipenv.bundle import elfread
from shipenv.model import ElfInfo

_GLIBC = re.compile(r"^GLIBC_(\d+)\.(\d+)(?:\.\d+)?$")
_MACHINES = {"EM_X86_64": "x86_64", "EM_AARCH64": "aarch64", "EM_386": "i686", "EM_PPC64": "ppc64le", "EM_S390": "s390x"}
_MACHINE_NUMBERS = {62: "x86_64", 183: "aarch64", 3: "i686", 21: "ppc64le", 22: "s390x"}


def is_elf(path: Path) -> bool:
    """True for a regular file that starts with the ELF magic.

    Asked of every file of a tree, so it costs four system calls (lstat, open,
    read, close; ``Path.open`` adds fstat and an ioctl): O_NOFOLLOW keeps a
    file swapped for a symlink after the lstat from being followed, and
    O_NONBLOCK keeps a file swapped for a FIFO from blocking the open.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 4) == b"\x7fELF"
    except OSError:
        return False
    finally:
        os.close(fd)


def read(path: Path) -> ElfInfo:
    """What the dynamic loader will look at: NEEDED, RPATH, RUNPATH, version needs."""
    with path.open("rb", buffering=0) as f:
        return _read(elfread.Source.of_fd(f.fileno()), f)


def read_stream(stream: IO[bytes]) -> ElfInfo:
    """Like :func:`read`, from a seekable stream (a member of an archive being verified)."""
    return _read(elfread.Source.of_stream(stream), stream)


def _read(source: elfread.Source, stream: IO[bytes]) -> ElfInfo:
    image = elfread.Image(source)
    if image.phnum == 0:
        return _read_sections(stream)
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname: str | None = None
    for tag, value in image.dynamic:
        if tag == elfread.DT_NEEDED:
            needed.append(_text(image, value))
        elif tag == elfread.DT_RPATH:
            rpath.extend(p for p in _text(image, value).split(":") if p)
        elif tag == elfread.DT_RUNPATH:
            runpath.extend(p for p in _text(image, value).split(":") if p)
        elif tag == elfread.DT_SONAME:
            soname = _text(image, value)
    glibc: set[tuple[int, int]] = set()
    for _file, names in image.version_needs():
        for name in names:
            m = _GLIBC.match(_text(image, name))
            if m:
                glibc.add((int(m.group(1)), int(m.group(2))))
    return ElfInfo(
        machine=_machine_name(image.machine),
        elfclass=image.elfclass,
        soname=soname,
        needed=tuple(needed),
        rpath=tuple(rpath),
        runpath=tuple(runpath),
        glibc_versions=tuple(sorted(glibc)),
        is_shared=image.type == elfread.ET_DYN,
    )


def _text(image: elfread.Image, index: int) -> str:
    # pyelftools' decoding, so that cached facts and audit messages read as before.
    return image.string(index).decode("utf-8", errors="replace")


@cache
def _pyelftools_machines() -> dict[int, str]:
    from elftools.elf.enums import ENUM_E_MACHINE

    # The last name of a number wins, as in pyelftools' own decoding.
    return {number: name for name, number in ENUM_E_MACHINE.items() if name != "_default_"}


def _machine_name(number: int) -> str:
    """The names shipenv has always used: ours for the five it builds for, pyelftools' ``EM_*`` otherwise."""
    known = _MACHINE_NUMBERS.get(number)
    if known is not None:
        return known
    return _pyelftools_machines().get(number, str(number))


def _read_sections(stream: IO[bytes]) -> ElfInfo:
    """The section view, through pyelftools, for a file the loader could not map."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection

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
    """Like :func:`read`, but None for a file neither reader can parse."""
    try:
        return read(path)
    except (ELFError, OSError, ValueError, KeyError, AssertionError):
        return None


def glibc_floor(infos: Iterable[ElfInfo]) -> tuple[int, int] | None:
    versions = [v for info in infos for v in info.glibc_versions]
    return max(versions) if versions else None
