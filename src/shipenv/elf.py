"""ELF files: read-only queries (pyelftools) and the one writer (lief).

Reading never changes a file. Writing goes through :class:`Patcher`, a small
interface so relocation can be tested with a recorder instead of real writes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Protocol

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
                    needed.append(getattr(tag, "needed"))
                elif tag.entry.d_tag == "DT_RPATH":
                    rpath.extend(p for p in getattr(tag, "rpath").split(":") if p)
                elif tag.entry.d_tag == "DT_RUNPATH":
                    runpath.extend(p for p in getattr(tag, "runpath").split(":") if p)
                elif tag.entry.d_tag == "DT_SONAME":
                    soname = getattr(tag, "soname")
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


class Patcher(Protocol):
    """Writes run-time search paths into ELF files."""

    def set_rpath(self, path: Path, entries: tuple[str, ...]) -> None: ...


class LiefPatcher:
    """The real writer.

    The new search path is written as ``DT_RPATH``, not ``DT_RUNPATH``: the
    loader searches ``DT_RPATH`` *before* ``LD_LIBRARY_PATH``, so a host's
    ``LD_LIBRARY_PATH`` cannot swap a library out from under the bundle
    (DESIGN.md, property 3), and a vendored library that lacks its own path
    still finds its siblings through its loader's.
    """

    def set_rpath(self, path: Path, entries: tuple[str, ...]) -> None:
        import lief

        lief.logging.disable()
        binary = lief.ELF.parse(str(path))
        if binary is None:
            raise OSError(f"lief cannot parse {path}")
        tags = (lief.ELF.DynamicEntry.TAG.RPATH, lief.ELF.DynamicEntry.TAG.RUNPATH)
        for entry in [e for e in binary.dynamic_entries if e.tag in tags]:
            binary.remove(entry)
        if entries:
            binary.add(lief.ELF.DynamicEntryRpath(":".join(entries)))
        mode = path.stat().st_mode & 0o7777
        tmp = path.with_name(path.name + ".shipenv-tmp")
        binary.write(str(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)


class RecordingPatcher:
    """Records what would be written; used by ``--dry-run`` and tests."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, tuple[str, ...]]] = []

    def set_rpath(self, path: Path, entries: tuple[str, ...]) -> None:
        self.calls.append((path, entries))
