"""ELF files as the dynamic loader reads them: program headers, ``PT_DYNAMIC``, its strings, version needs.

``ld.so`` never looks at section headers: it maps the ``PT_LOAD`` segments,
finds the dynamic table through ``PT_DYNAMIC`` and everything else (the
string table, ``DT_VERNEED``, the symbol table) through addresses in that
table. This module reads exactly that, with ``struct`` over a handful of
small ranges (``os.pread`` on a file, seek and read on a stream, through one
cached 16 KiB block): reading the facts of a 30 MB ``libopenblas`` touches a
few KiB of it. pyelftools answered the same questions through ``construct``
and every section header, ~5-13 ms a file, seconds of a build that reads
hundreds of ELF files; this takes ~0.2 ms. The one exception is
:meth:`Image.symbol_count`, which only the in-place RPATH edit needs and no
loader table states (see there).

Files come from wheels, so every header is hostile input: every offset, size
and count is checked against the file's size before it is used, nothing is
read or allocated beyond the file, and the version chains only move forward
and are capped at :data:`MAX_VERSIONS` entries. Every failure is :class:`BadElf`, a pyelftools ``ELFError``, so the
callers that turn an unreadable ELF into "not an ELF the loader would use"
(``elf.try_read``, ``verify``) catch one type for both readers.

Sections and segments agree for real linkers' output (the unit tests compare
this reader with pyelftools' section view on every ELF file of the pyenv
interpreters and of the test wheels). Where a crafted file makes them
disagree (a ``.dynamic`` section that is not the ``PT_DYNAMIC`` segment, a
``DT_STRTAB`` that is not ``.dynstr``, a broken section table), this reader
keeps the loader's view: it is what will run, and a search path the section
table hides is still searched.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import IO

from elftools.common.exceptions import ELFError

DT_NULL, DT_NEEDED, DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_SONAME, DT_RPATH = 0, 1, 5, 6, 10, 14, 15
DT_RUNPATH = 29
DT_CONFIG, DT_DEPAUDIT, DT_AUDIT = 0x6FFFFEFA, 0x6FFFFEFB, 0x6FFFFEFC
DT_VERDEF, DT_VERDEFNUM, DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFC, 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
DT_AUXILIARY, DT_FILTER = 0x7FFFFFFD, 0x7FFFFFFF
PT_LOAD, PT_DYNAMIC = 1, 2
ET_DYN = 3
SHT_DYNSYM = 11

#: Verneed/verdef entries and their auxiliaries, all chains together. Real
#: files have tens (libpython: 6); the cap turns a crafted chain into a refusal.
MAX_VERSIONS = 1 << 16
_BLOCK = 16384


class BadElf(ELFError):  # type: ignore[misc]  # pyelftools is untyped to mypy here (pyproject.toml says why)
    """A file that starts like an ELF but whose headers are not one the loader could use.

    A pyelftools ``ELFError``, so that every caller catching that (``try_read``,
    ``verify``, the libc probes) treats both readers' refusals alike.
    """


class Source:
    """Byte ranges of one file or stream, each checked against its size, through one cached block."""

    def __init__(self, read_at: Callable[[int, int], bytes], size: int) -> None:
        self.size = size
        self._read_at = read_at
        self._start = 0
        self._block = b""

    @classmethod
    def of_fd(cls, fd: int) -> Source:
        return cls(lambda offset, size: os.pread(fd, size, offset), os.fstat(fd).st_size)

    @classmethod
    def of_stream(cls, stream: IO[bytes]) -> Source:
        def read_at(offset: int, size: int) -> bytes:
            stream.seek(offset)
            return stream.read(size)

        return cls(read_at, stream.seek(0, os.SEEK_END))

    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``; :class:`BadElf` if any of them lie outside the file."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise BadElf(f"{size} bytes at offset {offset} lie outside the file ({self.size} bytes)")
        start = offset - self._start
        if start >= 0 and start + size <= len(self._block):
            return self._block[start:start + size]
        block = self._read_at(offset, max(size, min(_BLOCK, self.size - offset)))
        if len(block) < size:
            raise BadElf(f"the file ended at {offset + len(block)} while it was read")
        self._start, self._block = offset, block
        return block[:size]


class Image:
    """The loader's view of one ELF file; :class:`BadElf` if its headers point outside it.

    ``dynamic`` holds the ``(d_tag, d_val)`` pairs of ``PT_DYNAMIC`` before
    ``DT_NULL``, in file order (an entry's index is its position in the table,
    at ``dynamic_offset``); it is empty for a static executable or a file
    without program headers (``phnum == 0``, which the loader cannot map).
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        ident = source.read(0, 16) if source.size >= 16 else b""
        if ident[:4] != b"\x7fELF":
            raise BadElf("not an ELF file (no magic number, or shorter than an ELF identification)")
        if ident[4] not in (1, 2):
            raise BadElf(f"invalid EI_CLASS {ident[4]}")
        if ident[5] not in (1, 2):
            raise BadElf(f"invalid EI_DATA {ident[5]}")
        self.elfclass = 32 if ident[4] == 1 else 64
        self.order = "<" if ident[5] == 1 else ">"
        wide = self.elfclass == 64
        header = struct.Struct(self.order + ("HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH"))
        (self.type, self.machine, _version, _entry, phoff, self.shoff, _flags, _ehsize, phentsize, self.phnum,
         self.shentsize, self.shnum, _shstrndx) = header.unpack(source.read(16, header.size))
        self.dyn = struct.Struct(self.order + ("qQ" if wide else "iI"))
        self.sym = struct.Struct(self.order + ("I20x" if wide else "I12x"))  # st_name, then what no check here needs
        self.loads: list[tuple[int, int, int]] = []  # (p_vaddr, p_filesz, p_offset)
        dynamic: tuple[int, int] | None = None
        if self.phnum:
            phdr = struct.Struct(self.order + ("IIQQQQQQ" if wide else "IIIIIIII"))
            if phentsize != phdr.size:
                raise BadElf(f"e_phentsize is {phentsize}, not {phdr.size}: the loader refuses such a file")
            for fields in phdr.iter_unpack(source.read(phoff, self.phnum * phdr.size)):
                if wide:
                    p_type, _pflags, p_offset, p_vaddr, _paddr, p_filesz = fields[:6]
                else:
                    p_type, p_offset, p_vaddr, _paddr, p_filesz = fields[:5]
                if p_type == PT_LOAD:
                    self.loads.append((p_vaddr, p_filesz, p_offset))
                elif p_type == PT_DYNAMIC:
                    dynamic = (p_offset, p_filesz)  # the last one wins, as in ld.so
        self.dynamic_offset = dynamic[0] if dynamic else 0
        self.dynamic = self._read_dynamic(*dynamic) if dynamic else []
        self._strtab: tuple[int, int] | None = None

    def _read_dynamic(self, offset: int, filesz: int) -> list[tuple[int, int]]:
        entries: list[tuple[int, int]] = []
        size = self.dyn.size
        count = filesz // size
        read = 0
        while read < count:  # DT_NULL ends the table, well before a crafted p_filesz says
            n = min(256, count - read, (self.source.size - offset) // size - read)
            if n <= 0:
                raise BadElf(f"the dynamic table at {offset} runs past the end of the file")
            for tag, value in self.dyn.iter_unpack(self.source.read(offset + read * size, n * size)):
                if tag == DT_NULL:
                    return entries
                entries.append((tag, value))
            read += n
        return entries

    def tag(self, tag: int) -> int | None:
        """The value of the first entry with this tag, or None."""
        return next((value for t, value in self.dynamic if t == tag), None)

    def offset_of(self, address: int, size: int = 1) -> int | None:
        """The file offset of ``[address, address + size)``, from the first ``PT_LOAD`` that holds it in the file."""
        for vaddr, filesz, offset in self.loads:
            if vaddr <= address and address + size <= vaddr + filesz:
                return address - vaddr + offset
        return None

    def _mapped(self, tag: int, size: int = 1) -> int:
        address = self.tag(tag)
        offset = None if address is None else self.offset_of(address, size)
        if offset is None:
            raise BadElf(f"dynamic tag {tag:#x} is missing or outside every loaded segment")
        return offset

    def string_table(self) -> tuple[int, int]:
        """``(file offset, size)`` of ``DT_STRTAB``, which must lie in one loaded segment."""
        if self._strtab is None:
            size = self.tag(DT_STRSZ)
            if size is None:
                raise BadElf("DT_STRTAB has no DT_STRSZ")
            self._strtab = (self._mapped(DT_STRTAB, size), size)
        return self._strtab

    def string(self, index: int) -> bytes:
        """The NUL-terminated string at ``index`` of ``DT_STRTAB``, which must end inside the table."""
        start, size = self.string_table()
        if not 0 <= index < size:
            raise BadElf(f"string {index} lies outside the string table ({size} bytes)")
        pos, end, parts = start + index, start + size, []
        step = 128
        while pos < end:
            part = self.source.read(pos, min(step, end - pos))
            nul = part.find(b"\0")
            if nul >= 0:
                parts.append(part[:nul])
                return b"".join(parts)
            parts.append(part)
            pos += len(part)
            step = min(step * 4, 1 << 20)
        raise BadElf(f"string {index} runs past the end of the string table")

    def version_needs(self) -> Iterator[tuple[int, list[int]]]:
        """``(vn_file, [vna_name, ...])`` string indexes of ``DT_VERNEED``, as ld.so walks it.

        The walk ends at a zero ``vn_next``/``vna_next`` (the loader's rule)
        or after ``DT_VERNEEDNUM``/``vn_cnt`` entries (pyelftools' rule),
        whichever comes first; real linkers make the two agree.
        """
        if self.tag(DT_VERNEED) is None:
            return
        yield from self._versions(self._mapped(DT_VERNEED, 16), self.tag(DT_VERNEEDNUM), need=True)

    def version_definitions(self) -> Iterator[tuple[int, list[int]]]:
        """``(0, [vda_name, ...])`` string indexes of ``DT_VERDEF`` (the names this file defines)."""
        if self.tag(DT_VERDEF) is None:
            return
        yield from self._versions(self._mapped(DT_VERDEF, 20), self.tag(DT_VERDEFNUM), need=False)

    def _versions(self, offset: int, count: int | None, *, need: bool) -> Iterator[tuple[int, list[int]]]:
        # Elf_Verneed: vn_version vn_cnt vn_file vn_aux vn_next; Elf_Vernaux: vna_hash vna_flags vna_other vna_name vna_next.
        # Elf_Verdef: vd_version vd_flags vd_ndx vd_cnt vd_hash vd_aux vd_next; Elf_Verdaux: vda_name vda_next.
        entry = struct.Struct(self.order + ("HHIII" if need else "HHHHIII"))
        aux = struct.Struct(self.order + ("IHHII" if need else "II"))
        budget = MAX_VERSIONS
        remaining = count if count is not None else MAX_VERSIONS + 1
        while remaining > 0:
            fields = entry.unpack(self.source.read(offset, entry.size))
            if need:
                _version, cnt, file, aux_at, nxt = fields
            else:
                file = 0
                _version, _flags, _ndx, cnt, _hash, aux_at, nxt = fields
            if cnt == 0 and need:
                raise BadElf("a version need with no auxiliary entries")
            names: list[int] = []
            at = offset + aux_at
            for _ in range(cnt):
                budget -= 1
                if budget < 0:
                    raise BadElf(f"more than {MAX_VERSIONS} symbol version entries")
                sub = aux.unpack(self.source.read(at, aux.size))
                names.append(sub[3] if need else sub[0])
                if sub[-1] == 0:
                    break
                at += sub[-1]
            budget -= 1
            if budget < 0:
                raise BadElf(f"more than {MAX_VERSIONS} symbol version entries")
            yield file, names
            if nxt == 0:
                return
            offset += nxt
            remaining -= 1

    def symbol_count(self) -> int | None:
        """How many ``DT_SYMTAB`` entries there are, from the ``SHT_DYNSYM`` section header; None without one at ``DT_SYMTAB``.

        This one fact comes from a section header, because the loader's tables
        do not say it: lookups go through the hash table, but relocations name
        symbols by index, and GNU hash counts only from ``symoffset`` up (ld
        writes ``symoffset`` 1 when nothing is hashed: libpython3.so has five
        symbols, all undefined, and a GNU hash that accounts for one). The
        section must sit at ``DT_SYMTAB``'s address and have the class's entry
        size; otherwise (or without section headers) the count is unknown.
        """
        symtab = self.tag(DT_SYMTAB)
        if symtab is None or self.shoff == 0 or self.shnum == 0:
            return None
        shdr = struct.Struct(self.order + ("IIQQQQIIQQ" if self.elfclass == 64 else "IIIIIIIIII"))
        if self.shentsize != shdr.size:
            return None
        for fields in shdr.iter_unpack(self.source.read(self.shoff, self.shnum * shdr.size)):
            _name, sh_type, _flags, sh_addr, _offset, sh_size, _link, _info, _align, sh_entsize = fields
            if sh_type == SHT_DYNSYM:
                if sh_addr != symtab or sh_entsize not in (0, self.sym.size):
                    return None
                return int(sh_size) // self.sym.size
        return None

    def symbol_names(self, count: int) -> Iterator[int]:
        """The ``st_name`` of the first ``count`` ``DT_SYMTAB`` entries."""
        if count <= 0:
            return
        offset = self._mapped(DT_SYMTAB, count * self.sym.size)
        for (name,) in self.sym.iter_unpack(self.source.read(offset, count * self.sym.size)):
            yield name
