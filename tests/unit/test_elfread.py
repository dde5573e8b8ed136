"""The loader's-view ELF reader (shipenv.bundle.elfread) on crafted and damaged files.

Crafted files are made here in memory, in both classes and byte orders: an
ELF header, one ``PT_LOAD`` over the whole file (addresses are file
offsets), ``PT_DYNAMIC``, a string table, ``DT_VERNEED`` and optionally a symbol
table, which only a section header can count; no other section headers, as
``sstrip`` leaves them. Then one field at
a time is made hostile: wheels are untrusted input, and every damage must end
in the one failure ``elf.try_read`` turns into None, quickly and without
allocating by the count a header claims. Agreement with pyelftools on real
files is in test_elf.py.
"""

from __future__ import annotations

import io
import random
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from elftools.common.exceptions import ELFError

from shipenv.build import patch
from shipenv.bundle import elf, elfread
from shipenv.model import ElfInfo
from tests.helpers import REPO

ELF_DIR = REPO / "tests" / "elf"


@dataclass
class Crafted:
    """An ELF image and where its parts are, so a test can damage one of them."""

    data: bytearray
    wide: bool
    order: str
    offsets: dict[str, int] = field(default_factory=dict)
    tags: list[tuple[int, int]] = field(default_factory=list)

    @property
    def dyn(self) -> struct.Struct:
        return struct.Struct(self.order + ("qQ" if self.wide else "iI"))

    def put(self, offset: int, fmt: str, *values: int) -> None:
        struct.pack_into(self.order + fmt, self.data, offset, *values)

    def set_tag(self, tag: int, value: int) -> None:
        index = next(i for i, (t, _v) in enumerate(self.tags) if t == tag)
        self.dyn.pack_into(self.data, self.offsets["dynamic"] + index * self.dyn.size, tag, value)

    def header(self, name: str, value: int) -> None:
        """Overwrite one field of the ELF header."""
        wide = self.wide
        at = {"e_type": (16, "H"), "e_machine": (18, "H"), "e_phoff": (32, "Q") if wide else (28, "I"),
              "e_phentsize": (54, "H") if wide else (42, "H"), "e_phnum": (56, "H") if wide else (44, "H")}[name]
        self.put(at[0], at[1], value)

    def phdr(self, index: int, name: str, value: int) -> None:
        """Overwrite one field of program header ``index`` (0: PT_LOAD, 1: PT_DYNAMIC)."""
        fields = (["p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align"] if self.wide
                  else ["p_type", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_flags", "p_align"])
        sizes = "IIQQQQQQ" if self.wide else "IIIIIIII"
        i = fields.index(name)
        offset = self.offsets["phdrs"] + index * struct.calcsize("<" + sizes) + struct.calcsize("<" + sizes[:i])
        self.put(offset, sizes[i], value)

    def stream(self) -> io.BytesIO:
        return io.BytesIO(bytes(self.data))


def craft(*, wide: bool = True, little: bool = True, machine: int = 62, e_type: int = 3,
          needed: tuple[str, ...] = ("libfoo.so.1", "libc.so.6"), soname: str | None = "libcraft.so.1",
          rpath: str | None = "/build/host/lib", runpath: str | None = None,
          needs: tuple[tuple[str, tuple[str, ...]], ...] = (("libc.so.6", ("GLIBC_2.2.5", "GLIBC_2.34")),),
          symbols: int = 0, sections: bool = True, pad: int = 0) -> Crafted:
    """A dynamic ELF holding exactly what the arguments say; ``symbols`` entries in ``DT_SYMTAB``, named by a section header."""
    order = "<" if little else ">"
    ehsize, phsize, dynsize, word = (64, 56, 16, 8) if wide else (52, 32, 8, 4)
    strings = [*needed, *([soname] if soname else []), *([rpath] if rpath is not None else []),
               *([runpath] if runpath is not None else []), *(n for lib, names in needs for n in (lib, *names))]
    strtab, index = bytearray(b"\0"), {}
    for s in strings:
        if s not in index:
            index[s] = len(strtab)
            strtab += s.encode() + b"\0"
    phdrs = ehsize
    strtab_at = phdrs + 2 * phsize
    verneed_at = (strtab_at + len(strtab) + 3) // 4 * 4
    verneed = bytearray()
    for i, (lib, names) in enumerate(needs):
        last = i == len(needs) - 1
        verneed += struct.pack(order + "HHIII", 1, len(names), index[lib], 16, 0 if last else 16 + 16 * len(names))
        for j, name in enumerate(names):
            verneed += struct.pack(order + "IHHII", 0, 0, 2 + j, index[name], 0 if j == len(names) - 1 else 16)
    symsize, shsize = (24, 64) if wide else (16, 40)
    ntags = len(needed) + bool(soname) + (rpath is not None) + (runpath is not None) + 2 + 2 * bool(needs) + bool(symbols)
    dynamic_at = (verneed_at + len(verneed) + 7) // 8 * 8 + pad
    symtab_at = dynamic_at + (ntags + 1) * dynsize
    shdrs_at = symtab_at + symbols * symsize  # a null section header, then .dynsym's
    tags = [(elfread.DT_NEEDED, index[n]) for n in needed]
    tags += [(elfread.DT_SONAME, index[soname])] if soname else []
    tags += [(elfread.DT_RPATH, index[rpath])] if rpath is not None else []
    tags += [(elfread.DT_RUNPATH, index[runpath])] if runpath is not None else []
    tags += [(elfread.DT_STRTAB, strtab_at), (elfread.DT_STRSZ, len(strtab))]
    tags += [(elfread.DT_VERNEED, verneed_at), (elfread.DT_VERNEEDNUM, len(needs))] if needs else []
    tags += [(elfread.DT_SYMTAB, symtab_at)] if symbols else []
    assert len(tags) == ntags
    end = shdrs_at + (2 * shsize if symbols and sections else 0)
    data = bytearray(end)
    data[:16] = b"\x7fELF" + bytes([2 if wide else 1, 1 if little else 2, 1]) + bytes(9)
    fmt = "HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH"
    shoff, shnum = (shdrs_at, 2) if symbols and sections else (0, 0)
    struct.pack_into(order + fmt, data, 16, e_type, machine, 1, 0, phdrs, shoff, 0, ehsize, phsize, 2, shsize, shnum, 0)
    if shnum:  # sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link sh_info sh_addralign sh_entsize
        struct.pack_into(order + ("IIQQQQIIQQ" if wide else "IIIIIIIIII"), data, shdrs_at + shsize,
                         0, elfread.SHT_DYNSYM, 2, symtab_at, symtab_at, symbols * symsize, 0, 1, 8, symsize)
    for i, (p_type, offset, size) in enumerate([(elfread.PT_LOAD, 0, end), (elfread.PT_DYNAMIC, dynamic_at, symtab_at - dynamic_at)]):
        if wide:
            struct.pack_into(order + "IIQQQQQQ", data, phdrs + i * phsize, p_type, 6, offset, offset, offset, size, size, 8)
        else:
            struct.pack_into(order + "IIIIIIII", data, phdrs + i * phsize, p_type, offset, offset, offset, size, size, 6, 4)
    data[strtab_at:strtab_at + len(strtab)] = strtab
    data[verneed_at:verneed_at + len(verneed)] = verneed
    for i in range(symbols):  # st_name 1: the first string, one in use anyway
        struct.pack_into(order + "I", data, symtab_at + i * symsize, 1)
    crafted = Crafted(data, wide, order, {"phdrs": phdrs, "strtab": strtab_at, "verneed": verneed_at, "dynamic": dynamic_at,
                                          "null": symtab_at - dynsize, "dynsym": shdrs_at + shsize}, tags)
    for i, (tag, value) in enumerate(tags):
        crafted.dyn.pack_into(data, dynamic_at + i * dynsize, tag, value)
    return crafted


def image_of(crafted: Crafted) -> elfread.Image:
    return elfread.Image(elfread.Source.of_stream(crafted.stream()))


@pytest.mark.parametrize(("wide", "little", "machine", "name"),
                         [(True, True, 62, "x86_64"), (False, True, 3, "i686"), (True, False, 22, "s390x"), (False, False, 21, "ppc64le")])
def test_a_crafted_file_reads_as_written_in_either_class_and_byte_order(wide: bool, little: bool, machine: int, name: str) -> None:
    info = elf.read_stream(craft(wide=wide, little=little, machine=machine, runpath="$ORIGIN::/opt/x").stream())
    assert info == ElfInfo(machine=name, elfclass=64 if wide else 32, soname="libcraft.so.1", needed=("libfoo.so.1", "libc.so.6"),
                           rpath=("/build/host/lib",), runpath=("$ORIGIN", "/opt/x"), glibc_versions=((2, 2), (2, 34)), is_shared=True)


def test_machines_shipenv_does_not_build_for_keep_pyelftools_names() -> None:
    assert elf.read_stream(craft(machine=40).stream()).machine == "EM_ARM"
    assert elf.read_stream(craft(machine=0xBEEF).stream()).machine == str(0xBEEF)


def test_a_file_without_program_headers_is_read_through_its_sections() -> None:
    # A relocatable object: no loader maps it, so pyelftools' section view answers (nothing dynamic here).
    obj = craft(e_type=1)
    obj.header("e_phnum", 0)
    info = elf.read_stream(obj.stream())
    assert info == ElfInfo("x86_64", 64, None, (), (), (), (), False)


def big(c: Crafted) -> int:
    """Far past the end of any file, and within the field's width."""
    return 1 << 62 if c.wide else 0xFFFF0000


def _damages() -> dict[str, Callable[[Crafted], object]]:
    return {
        "phoff past the end": lambda c: c.header("e_phoff", len(c.data) + 8),
        "65535 program headers": lambda c: c.header("e_phnum", 0xFFFF),
        "a wrong e_phentsize": lambda c: c.header("e_phentsize", 40),
        "dynamic past the end": lambda c: c.phdr(1, "p_offset", len(c.data) + 16),
        "dynamic offset absurd": lambda c: c.phdr(1, "p_offset", big(c)),
        "no DT_NULL, absurd size": lambda c: (c.phdr(1, "p_filesz", big(c)), c.put(c.offsets["null"], "q" if c.wide else "i", 1)),
        "strtab outside every segment": lambda c: c.set_tag(elfread.DT_STRTAB, len(c.data) + 64),
        "strsz absurd": lambda c: c.set_tag(elfread.DT_STRSZ, big(c)),
        "needed past strsz": lambda c: c.set_tag(elfread.DT_NEEDED, 10_000),
        "unterminated string": lambda c: c.set_tag(elfread.DT_STRSZ, 5),
        "strtab in an absurd segment, past the end": lambda c: (c.phdr(0, "p_filesz", big(c)), c.set_tag(elfread.DT_STRTAB, big(c) // 2)),
        "verneed outside every segment": lambda c: c.set_tag(elfread.DT_VERNEED, big(c)),
        "vn_aux past the end": lambda c: c.put(c.offsets["verneed"] + 8, "I", 0xFFFFFFF0),
        "vna_next past the end": lambda c: c.put(c.offsets["verneed"] + 16 + 12, "I", 0xFFFFFF00),
        "vna_name past strsz": lambda c: c.put(c.offsets["verneed"] + 16 + 8, "I", 0xFFFFFFFF),
        "vn_cnt zero": lambda c: c.put(c.offsets["verneed"] + 2, "H", 0),
    }


@pytest.mark.parametrize("damage", sorted(_damages()))
@pytest.mark.parametrize("wide", [True, False])
def test_a_damaged_header_is_the_one_clean_failure(damage: str, wide: bool) -> None:
    crafted = craft(wide=wide)
    _damages()[damage](crafted)
    tracemalloc.start()
    try:
        with pytest.raises(ELFError):
            elf.read_stream(crafted.stream())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated for a {len(crafted.data)}-byte file"


@pytest.mark.parametrize("keep", [0, 4, 15, 16, 20, 63, 64, 100, -1])
def test_a_crafted_file_cut_short_is_the_clean_failure(keep: int) -> None:
    data = craft().data
    with pytest.raises(ELFError):
        elf.read_stream(io.BytesIO(bytes(data[:keep])))


def test_try_read_turns_the_failure_into_none(tmp_path: Path) -> None:
    crafted = craft()
    crafted.set_tag(elfread.DT_STRSZ, 1 << 40)
    (tmp_path / "bad.so").write_bytes(crafted.data)
    assert elf.is_elf(tmp_path / "bad.so")
    assert elf.try_read(tmp_path / "bad.so") is None


def test_an_absurd_dynamic_size_does_not_matter_when_dt_null_ends_the_table() -> None:
    crafted = craft()
    crafted.phdr(1, "p_filesz", 1 << 62)
    assert elf.read_stream(crafted.stream()).needed == ("libfoo.so.1", "libc.so.6")


def test_a_version_chain_that_points_at_itself_ends_where_the_loader_stops() -> None:
    # vn_next and vna_next are 0: the last entry, whatever VERNEEDNUM and vn_cnt claim (pyelftools would re-read it forever).
    crafted = craft(needs=(("libc.so.6", ("GLIBC_2.17",)),))
    crafted.set_tag(elfread.DT_VERNEEDNUM, 0xFFFFFFFF)
    crafted.put(crafted.offsets["verneed"] + 2, "H", 0xFFFF)
    assert elf.read_stream(crafted.stream()).glibc_versions == ((2, 17),)


def test_a_version_chain_longer_than_the_cap_is_refused() -> None:
    # Two verneeds of 65535 auxiliaries each share one long, valid-looking vernaux run.
    crafted = craft(needs=(("libc.so.6", ("GLIBC_2.17", "GLIBC_2.34")), ("libm.so.6", ("GLIBC_2.29",))),
                    pad=16 * 0xFFFF + 64)
    run = crafted.offsets["dynamic"] - 16 * 0xFFFF - 32
    name = 1  # any string: "libfoo.so.1"
    crafted.data[run:run + 16 * 0xFFFF] = struct.pack(crafted.order + "IHHII", 0, 0, 2, name, 16) * 0xFFFF
    first = crafted.offsets["verneed"]
    second = first + 16 + 2 * 16
    crafted.put(first, "HHIII", 1, 0xFFFF, name, run - first, second - first)
    crafted.put(second, "HHIII", 1, 0xFFFF, name, run - second, 0)
    with pytest.raises(ELFError, match="symbol version entries"):
        elf.read_stream(crafted.stream())


def test_symbols_are_counted_from_the_dynsym_section_header() -> None:
    image = image_of(craft(symbols=7))
    assert image.symbol_count() == 7
    assert list(image.symbol_names(7)) == [1] * 7
    assert image_of(craft(symbols=7, sections=False)).symbol_count() is None  # stripped of section headers: unknown
    assert image_of(craft()).symbol_count() is None  # no DT_SYMTAB at all


def test_the_edit_fits_in_place_only_where_the_symbols_can_be_counted(tmp_path: Path) -> None:
    for name, crafted in {"counted": craft(symbols=3), "no symbols": craft(), "uncounted": craft(symbols=3, sections=False)}.items():
        (tmp_path / name).write_bytes(crafted.data)
    assert patch.in_place_writes(tmp_path / "counted", ("$ORIGIN",)) is not None
    assert patch.in_place_writes(tmp_path / "no symbols", ("$ORIGIN",)) is not None
    assert patch.in_place_writes(tmp_path / "uncounted", ("$ORIGIN",)) is None  # lief's to do


def test_a_symbol_sharing_the_old_string_keeps_the_edit_out_of_place(tmp_path: Path) -> None:
    crafted = craft(symbols=3, rpath="/build/host/lib")
    rpath = dict(crafted.tags)[elfread.DT_RPATH]
    symtab = dict(crafted.tags)[elfread.DT_SYMTAB]
    crafted.put(symtab + 24 * 2, "I", rpath + len("/build/host/"))  # a symbol named "lib", the old string's tail
    (tmp_path / "lib.so").write_bytes(crafted.data)
    assert patch.in_place_writes(tmp_path / "lib.so", ("$ORIGIN",)) is None


@pytest.mark.parametrize("damage", ["section headers past the end", "65535 section headers", "dynsym size absurd",
                                    "dynsym elsewhere than DT_SYMTAB", "a wrong e_shentsize"])
def test_a_damaged_section_table_fails_cleanly_and_leaves_the_edit_to_lief(tmp_path: Path, damage: str) -> None:
    crafted = craft(symbols=3)
    dynsym = crafted.offsets["dynsym"]
    if damage == "section headers past the end":
        crafted.put(40, "Q", len(crafted.data) + 64)  # e_shoff
    elif damage == "65535 section headers":
        crafted.put(60, "H", 0xFFFF)  # e_shnum
    elif damage == "dynsym size absurd":
        crafted.put(dynsym + 32, "Q", 1 << 60)  # sh_size
    elif damage == "dynsym elsewhere than DT_SYMTAB":
        crafted.put(dynsym + 16, "Q", 8)  # sh_addr
    else:
        crafted.put(58, "H", 40)  # e_shentsize
    tracemalloc.start()
    try:
        image = image_of(crafted)
        try:
            count = image.symbol_count()
            names = list(image.symbol_names(count or 0))
        except ELFError:
            count, names = -1, []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert count in (-1, None) and not names
    # Reading the facts never looks at sections; the in-place edit cannot prove itself safe and says so, without raising.
    assert elf.read_stream(crafted.stream()).rpath == ("/build/host/lib",)
    (tmp_path / "lib.so").write_bytes(crafted.data)
    assert patch.in_place_writes(tmp_path / "lib.so", ("$ORIGIN",)) is None


def test_random_damage_to_real_files_is_an_answer_or_the_clean_failure() -> None:
    """Bytes the reader looks at, changed at random: never an exception other than ELFError, never a hang."""
    rng = random.Random(16)
    answered = refused = 0
    for name in ("app", "libfoo.so.1", "libplain32.so"):
        original = (ELF_DIR / name).read_bytes()
        image = elfread.Image(elfread.Source.of_stream(io.BytesIO(original)))
        strtab, strsz = image.string_table()
        spots = [*range(0, 64 + image.phnum * 56), *range(image.dynamic_offset, image.dynamic_offset + 16 * (len(image.dynamic) + 1)),
                 *range(strtab, strtab + strsz)]
        verneed = image.tag(elfread.DT_VERNEED)
        if verneed is not None:
            spots += range(verneed, verneed + 96)
        for _ in range(700):
            data = bytearray(original)
            for _ in range(rng.randint(1, 4)):
                data[rng.choice(spots)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
            try:
                damaged = elfread.Image(elfread.Source.of_stream(io.BytesIO(bytes(data))))
                if damaged.phnum:  # without program headers pyelftools answers, with its own failures
                    elf.read_stream(io.BytesIO(bytes(data)))
                    list(damaged.symbol_names(damaged.symbol_count() or 0))
                answered += 1
            except ELFError:
                refused += 1
    assert answered and refused  # the damage reached both outcomes
