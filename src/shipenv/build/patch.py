"""The one ELF writer: run-time search paths, in place when they fit, through lief otherwise.

Writing goes through :class:`Patcher`, a small interface so relocation can be
tested with a recorder instead of real writes (``--dry-run`` never gets this far:
it prints the plan, :class:`~shipenv.model.SetRpath` items, without applying it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
from elftools.elf.sections import SymbolTableSection


class Patcher(Protocol):
    """Writes run-time search paths into ELF files."""

    def set_rpath(self, path: Path, entries: tuple[str, ...]) -> None: ...


_DT_RPATH = 15
_STRING_TAGS = ("DT_NEEDED", "DT_SONAME", "DT_RPATH", "DT_RUNPATH", "DT_AUXILIARY", "DT_FILTER")


def _rewrite_in_place(path: Path, entries: tuple[str, ...]) -> bool:
    """Overwrite the one RPATH/RUNPATH string in place when the new one fits; True if done.

    Dropping build-host directories and adding ``$ORIGIN`` paths usually makes
    the string shorter, so most files need no restructuring at all: the bytes of
    the string and the entry's tag change, nothing else moves, and memory stays
    small whatever the file's size (lief holds the whole file). The edit is
    refused when another string in ``.dynstr`` shares the old one's bytes (a
    linker may merge string tails), and then lief does the work.
    """
    # Removing the entry would mean rewriting the dynamic table; "$ORIGIN" (the
    # file's own directory) searches nothing outside the bundle and fits anywhere.
    new = (":".join(entries) or "$ORIGIN").encode()
    with path.open("r+b") as f:
        elf = ELFFile(f)
        dynamic = next((sec for sec in elf.iter_sections() if isinstance(sec, DynamicSection)), None)
        if dynamic is None:
            return False
        tags = list(dynamic.iter_tags())
        paths = [(i, t) for i, t in enumerate(tags) if t.entry.d_tag in ("DT_RPATH", "DT_RUNPATH")]
        strtab = next((t.entry.d_val for t in tags if t.entry.d_tag == "DT_STRTAB"), None)
        if len(paths) != 1 or strtab is None:
            return False
        index, tag = paths[0]
        offsets = list(elf.address_offsets(strtab))
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
        referenced = {t.entry.d_val for t in tags if t.entry.d_tag in _STRING_TAGS}
        for section in elf.iter_sections():
            if isinstance(section, SymbolTableSection) and section.name == ".dynsym":
                referenced.update(sym.entry.st_name for sym in section.iter_symbols())
        for section in elf.iter_sections():
            if isinstance(section, GNUVerNeedSection):
                for verneed, aux_iter in section.iter_versions():
                    referenced.add(verneed.entry.vn_file)
                    referenced.update(aux.entry.vna_name for aux in aux_iter)
        if any(old_off < o <= old_off + old_len for o in referenced):
            return False
        entry_size = dynamic["sh_entsize"] or (16 if elf.elfclass == 64 else 8)
        tag_bytes = elf.structs.Elf_sxword("d_tag").build(_DT_RPATH)  # the class's own width and byte order
        f.seek(strtab_off + old_off)
        f.write(new + b"\0" * (old_len - len(new)))
        f.seek(dynamic["sh_offset"] + index * entry_size)
        f.write(tag_bytes)
    return True


class LiefPatcher:
    """The real writer.

    The new search path is written as ``DT_RPATH``, not ``DT_RUNPATH``: the
    loader searches ``DT_RPATH`` *before* ``LD_LIBRARY_PATH``, so a host's
    ``LD_LIBRARY_PATH`` cannot swap a library out from under the bundle
    (DESIGN.md, property 3), and a vendored library that lacks its own path
    still finds its siblings through its loader's.

    When the new path fits in the old string it is written in place (see
    :func:`_rewrite_in_place`); lief rebuilds the file otherwise. Either way the
    result replaces the file by rename, so a hard link elsewhere (a cache
    entry) never sees the edit.
    """

    def set_rpath(self, path: Path, entries: tuple[str, ...]) -> None:
        mode = path.stat().st_mode & 0o7777
        tmp = path.with_name(path.name + ".shipenv-tmp")
        shutil.copyfile(path, tmp)
        try:
            if not _rewrite_in_place(tmp, entries):
                self._lief(path, tmp, entries)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @staticmethod
    def _lief(path: Path, out: Path, entries: tuple[str, ...]) -> None:
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
        binary.write(str(out))


class RecordingPatcher:
    """Records what would be written; used by tests."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, tuple[str, ...]]] = []

    def set_rpath(self, path: Path, entries: tuple[str, ...]) -> None:
        self.calls.append((path, entries))
