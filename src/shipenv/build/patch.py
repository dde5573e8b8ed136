"""The one ELF writer: run-time search paths, in place when they fit, through lief otherwise.

Writing goes through :class:`Patcher`, a small interface so relocation can be
tested with a recorder instead of real writes (``--dry-run`` never gets this far:
it prints the plan, :class:`~shipenv.model.SetRpath` items, without applying it).
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Protocol

from shipenv.bundle import elfread
from shipenv.bundle.elfread import BadElf


class Patcher(Protocol):
    """Writes run-time search paths into ELF files."""

    def set_rpath(self, path: Path, entries: tuple[str, ...]) -> None: ...


#: Dynamic tags whose value is an offset into the string table.
_STRING_TAGS = frozenset({elfread.DT_NEEDED, elfread.DT_SONAME, elfread.DT_RPATH, elfread.DT_RUNPATH, elfread.DT_AUXILIARY,
                          elfread.DT_FILTER, elfread.DT_CONFIG, elfread.DT_DEPAUDIT, elfread.DT_AUDIT})

#: ``(file offset, bytes)`` writes that carry out one in-place edit.
Writes = tuple[tuple[int, bytes], ...]


def in_place_writes(path: Path, entries: tuple[str, ...]) -> Writes | None:
    """The writes that put ``entries`` over the one RPATH/RUNPATH string, or None when lief must rebuild the file.

    Dropping build-host directories and adding ``$ORIGIN`` paths usually makes
    the string shorter, so most files need no restructuring at all: the bytes of
    the string and the entry's tag change, nothing else moves, and memory stays
    small whatever the file's size (lief holds the whole file). The edit is
    refused when another string the loader uses shares the old one's bytes (a
    linker may merge string tails): a string tag, any ``DT_SYMTAB`` name, a
    version need's file or name, a version definition's name; and when the
    symbols cannot be counted (no ``SHT_DYNSYM`` header at ``DT_SYMTAB``, see
    :meth:`~shipenv.bundle.elfread.Image.symbol_count`). Everything else is
    read as the loader reads it (:mod:`shipenv.bundle.elfread`); the file is
    only read here, so a refusal costs no copy.
    """
    # Removing the entry would mean rewriting the dynamic table; "$ORIGIN" (the
    # file's own directory) searches nothing outside the bundle and fits anywhere.
    new = (":".join(entries) or "$ORIGIN").encode()
    with path.open("rb", buffering=0) as f:
        try:
            return _writes(elfread.Image(elfread.Source.of_fd(f.fileno())), new)
        except BadElf:
            return None  # lief decides what such a file can take


def _writes(image: elfread.Image, new: bytes) -> Writes | None:
    paths = [(i, value) for i, (tag, value) in enumerate(image.dynamic) if tag in (elfread.DT_RPATH, elfread.DT_RUNPATH)]
    strtab = image.tag(elfread.DT_STRTAB)
    if len(paths) != 1 or strtab is None:
        return None
    strtab_off = image.offset_of(strtab)
    if strtab_off is None:
        return None
    index, old_off = paths[0]
    old_len = _string_length(image.source, strtab_off + old_off, len(new) + 4096)
    if old_len < len(new):
        return None
    referenced = {value for tag, value in image.dynamic if tag in _STRING_TAGS}
    if image.tag(elfread.DT_SYMTAB) is not None:
        count = image.symbol_count()
        if count is None:
            return None  # no hash table: which names are in use cannot be told
        referenced.update(image.symbol_names(count))
    for file, names in image.version_needs():
        referenced.add(file)
        referenced.update(names)
    for _zero, names in image.version_definitions():
        referenced.update(names)
    if any(old_off < o <= old_off + old_len for o in referenced):
        return None
    tag_bytes = struct.pack(image.order + ("q" if image.elfclass == 64 else "i"), elfread.DT_RPATH)
    return ((strtab_off + old_off, new + b"\0" * (old_len - len(new))),
            (image.dynamic_offset + index * image.dyn.size, tag_bytes))


def _string_length(source: elfread.Source, offset: int, first: int) -> int:
    """The length of the NUL-terminated string at a file offset, looked for in ``first`` bytes, then 1 MiB; -1 if none."""
    for size in (first, 1 << 20):
        size = min(size, source.size - offset)
        if size <= 0:
            return -1
        found = source.read(offset, size).find(b"\0")
        if found >= 0:
            return found
    return -1


def _rewrite_in_place(path: Path, entries: tuple[str, ...]) -> bool:
    """Overwrite the one RPATH/RUNPATH string of ``path`` itself when the new one fits; True if done.

    :class:`LiefPatcher` writes to a copy instead; this is for looking at one edit.
    """
    writes = in_place_writes(path, entries)
    if writes is None:
        return False
    _write(path, writes)
    return True


def _write(path: Path, writes: Writes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for offset, data in writes:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


class LiefPatcher:
    """The real writer.

    The new search path is written as ``DT_RPATH``, not ``DT_RUNPATH``: the
    loader searches ``DT_RPATH`` *before* ``LD_LIBRARY_PATH``, so a host's
    ``LD_LIBRARY_PATH`` cannot swap a library out from under the bundle
    (DESIGN.md, property 3), and a vendored library that lacks its own path
    still finds its siblings through its loader's.

    When the new path fits in the old string it is written in place (see
    :func:`in_place_writes`) on a copy; lief rebuilds the file otherwise,
    writing its own new file (so it never pays for a copy it overwrites).
    Either way the result replaces the file by rename, so a hard link
    elsewhere (a cache entry) never sees the edit.
    """

    def set_rpath(self, path: Path, entries: tuple[str, ...]) -> None:
        mode = path.stat().st_mode & 0o7777
        tmp = path.with_name(path.name + ".shipenv-tmp")
        writes = in_place_writes(path, entries)
        try:
            if writes is None:
                self._lief(path, tmp, entries)
            else:
                shutil.copyfile(path, tmp)  # sendfile(2): the bytes never enter Python
                _write(tmp, writes)
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
