"""Make a tree relocatable: plan every edit as data, then apply the plan.

The plan answers, for every ELF file in the tree, where each ``NEEDED``
library will come from on the target:

* the target's baseline (glibc; :mod:`shipenv.build.policy`): nothing to do;
* with ``--libc bundled``, the glibc family instead: copied into ``lib/`` byte
  for byte (the launchers' loader finds it through ``--library-path``, so no
  file's search path changes for it), with the loader and what glibc loads by
  name (``policy.required``) even when no file NEEDs them;
* a directory inside the tree that the file already reaches through an
  ``$ORIGIN``-relative path (a manylinux wheel's ``numpy.libs``): kept;
* anything else is found on the build host the way the dynamic loader would
  find it (the file's own absolute RPATH/RUNPATH, then ``ldconfig``'s cache,
  then the default directories), copied into the tree's ``lib/`` and reached
  through a new ``$ORIGIN``-relative path. Vendored libraries are planned the
  same way, so their own dependencies come along.

Absolute search paths are dropped. A library that cannot be found is an error
naming the library and the file that needs it. Scripts in ``bin/`` whose ``#!``
line names a host Python are planned too (:class:`~shipenv.model.RewriteShebang`).

:func:`relocate` is the one entry point the pipeline uses (plan, then apply);
:func:`plan` alone computes the edits without touching a file.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from shipenv.build import launchers
from shipenv.build.patch import LiefPatcher, Patcher
from shipenv.build.policy import HostLibraries, LibraryPolicy, host_libraries
from shipenv.bundle import elf
from shipenv.errors import RelocateError, listing
from shipenv.model import ElfInfo, PythonInfo, RelocationPlan, RewriteShebang, SetRpath, VendorLibrary

LIB_DIR = PurePosixPath("lib")
BIN_DIR = PurePosixPath("bin")
#: Files at least this big are not rebuilt to lengthen their search path (see _copy_beside).
LARGE_FILE = 32 << 20
def iter_elves(root: Path) -> Iterator[PurePosixPath]:
    """Every regular ELF file in the tree, as a root-relative path, sorted (symlinks are not files)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath, name)
            if not full.is_symlink() and elf.is_elf(full):
                yield PurePosixPath(full.relative_to(root).as_posix())


def origin_path(root_rel_file: PurePosixPath, target_dir: PurePosixPath) -> str:
    """``$ORIGIN``-relative spelling of ``target_dir`` as seen from a file.

    >>> origin_path(PurePosixPath("bin/python3.12"), PurePosixPath("lib"))
    '$ORIGIN/../lib'
    """
    rel = os.path.relpath(target_dir.as_posix() or ".", root_rel_file.parent.as_posix() or ".")
    return "$ORIGIN" if rel == "." else f"$ORIGIN/{rel}"


def _expand_origin(entry: str, file_dir: PurePosixPath) -> PurePosixPath | None:
    """A tree-relative directory for an ``$ORIGIN`` entry, or None if it leaves the tree."""
    for token in ("$ORIGIN", "${ORIGIN}"):
        if entry.startswith(token):
            tail = entry[len(token) :].lstrip("/")
            joined = os.path.normpath(os.path.join(file_dir.as_posix() or ".", tail))
            if joined == ".." or joined.startswith("../"):
                return None
            return PurePosixPath(joined)
    return None


@dataclass
class _Planner:
    root: Path
    policy: LibraryPolicy
    host: HostLibraries
    read: Callable[[Path], ElfInfo | None]
    provided: Path | None = None  #: the final tree's lib/, when planning a layer of it
    virtual: Mapping[PurePosixPath, Path] | None = None  #: a tree not yet written: its files and their sources

    def __post_init__(self) -> None:
        self.infos: dict[PurePosixPath, ElfInfo] = {}
        self.vendor: dict[str, VendorLibrary] = {}
        self.rpaths: list[SetRpath] = []
        self.missing: list[tuple[str, PurePosixPath]] = []
        self.queue: deque[tuple[PurePosixPath, Path, ElfInfo]] = deque()
        self.vendored_paths: set[PurePosixPath] = set()
        self._tree_index: dict[str, list[PurePosixPath]] | None = None
        self.side_copies: dict[PurePosixPath, VendorLibrary] = {}
        self.dirs = {p for rel in self.virtual or () for p in PurePosixPath(rel).parents}

    def _source(self, rel: PurePosixPath) -> Path:
        """Where the bytes of the tree's file ``rel`` are (the host file, for a tree not yet written)."""
        return self.virtual[rel] if self.virtual is not None else self.root / rel

    def _exists(self, rel: PurePosixPath) -> bool:
        return rel in self.virtual if self.virtual is not None else (self.root / rel).exists()

    def _is_dir(self, rel: PurePosixPath) -> bool:
        return rel in self.dirs if self.virtual is not None else (self.root / rel).is_dir()

    def _in_lib(self, soname: str) -> Path | None:
        """Where a library already vendored into ``lib/`` (by this plan or an earlier layer) comes from."""
        if soname in self.vendor:
            return self.vendor[soname].src
        if self._exists(LIB_DIR / soname):
            return self._source(LIB_DIR / soname)
        if self.provided is not None and (self.provided / soname).is_file():
            return self.provided / soname
        return None

    def _copy_beside(
        self,
        rel: PurePosixPath,
        tree_dirs: list[PurePosixPath],
        from_lib: list[tuple[str, Path]],
        old: tuple[str, ...],
        new: list[str],
    ) -> bool:
        """For a huge library, put what it needs where it already looks instead of editing it.

        A manylinux wheel's big libraries (torch's libtorch_cpu.so, 400+ MB)
        search only ``$ORIGIN``; pointing them at ``lib/`` makes the string longer,
        and rebuilding the file takes several times its size in memory. A copy
        of the needed library in that directory is found without any edit; its
        own dependencies come from ``lib/`` through the interpreter's DT_RPATH.
        """
        if not tree_dirs or rel in self.vendored_paths:
            return False
        lib_entry = origin_path(rel, LIB_DIR)
        if len(":".join([*new, lib_entry])) <= len(":".join(old)):
            return False  # fits in place: edit it
        try:
            if self._source(rel).stat().st_size < LARGE_FILE:
                return False
        except OSError:
            return False
        for soname, source in from_lib:
            dest = tree_dirs[0] / soname
            if not self._exists(dest) and dest not in self.side_copies:
                self.side_copies[dest] = VendorLibrary(soname, source, dest, rel)
        return True

    def _in_tree(self, soname: str, rel: PurePosixPath) -> PurePosixPath | None:
        """The directory of a library named ``soname`` elsewhere in the tree, nearest first."""
        if rel in self.vendored_paths:
            return None
        if self._tree_index is None:
            index: dict[str, list[PurePosixPath]] = {}
            for path in self.infos:
                if path not in self.vendored_paths:
                    index.setdefault(path.name, []).append(path.parent)
            self._tree_index = index
        dirs = [d for d in self._tree_index.get(soname, []) if d != LIB_DIR]
        if not dirs:
            return None
        here = rel.parent.as_posix() or "."

        def closeness(d: PurePosixPath) -> tuple[int, str]:
            return len(os.path.commonpath([d.as_posix() or ".", here])), d.as_posix()

        return max(dirs, key=closeness)

    def add_tree_file(self, rel: PurePosixPath) -> None:
        info = self.read(self._source(rel))
        if info is not None:
            self.infos[rel] = info
            self.queue.append((rel, self._source(rel), info))

    def _vendor(self, soname: str, needed_by: PurePosixPath, search: Iterable[str]) -> Path | None:
        """Plan a host library's copy into ``lib/`` (and, through the queue, what it needs)."""
        found = self.host.find(soname, search)
        if found is None:
            self.missing.append((soname, needed_by))
            return None
        dest = LIB_DIR / soname
        self.vendor[soname] = VendorLibrary(soname, found, dest, needed_by)
        self.vendored_paths.add(dest)
        vendored_info = self.read(found)
        if vendored_info is not None:
            self.infos[dest] = vendored_info
            self.queue.append((dest, found, vendored_info))
        return found

    def require(self, soname: str) -> None:
        """Vendor ``soname`` whether or not a file NEEDs it (the loader, what glibc loads by name)."""
        if self._in_lib(soname) is None and soname not in self.vendor:
            self._vendor(soname, LIB_DIR / "libc.so.6", ())

    def run(self) -> RelocationPlan:
        while self.queue:
            rel, src, info = self.queue.popleft()
            self._plan_file(rel, src, info)
        if self.missing:
            shown = [f"{lib} (needed by {path})" for lib, path in self.missing]
            raise RelocateError(
                f"Shared libraries needed by the bundle are not on this build host: {listing(shown)}.",
                hint="Install the package that provides them on the build machine "
                "(for example with apt-get), or declare them provided by the target with --system-lib NAME.",
            )
        return RelocationPlan(vendor=(*self.vendor.values(), *self.side_copies.values()), rpaths=tuple(self.rpaths))

    def _plan_file(self, rel: PurePosixPath, src: Path, info: ElfInfo) -> None:
        file_dir = rel.parent
        searches = info.rpath + info.runpath
        kept: list[str] = []
        tree_dirs: list[PurePosixPath] = []
        host_dirs: list[str] = []
        for entry in searches:
            inside = _expand_origin(entry, file_dir)
            if inside is not None:
                if self._is_dir(inside) and entry not in kept:
                    kept.append(entry)
                    tree_dirs.append(inside)
                continue
            if "$ORIGIN" in entry or "${ORIGIN}" in entry:
                # Leaves the tree: meaningful only relative to the file's original place.
                host_dirs.append(entry.replace("${ORIGIN}", str(src.parent)).replace("$ORIGIN", str(src.parent)))
            elif entry.startswith("/"):
                host_dirs.append(entry)
        needs_lib_dir = False
        extra: list[str] = []
        from_lib: list[tuple[str, Path]] = []  # what this file takes from lib/, and the copy's source
        verbatim = rel in self.vendored_paths and self.policy.verbatim(rel.name)
        for soname in info.needed:
            if self.policy.provided(soname):
                continue
            if self.policy.verbatim(soname):
                # Bundled glibc: one copy in lib/, found through the loader's --library-path,
                # always the system's own (it must match the loader, whatever RPATH says).
                if self._in_lib(soname) is None:
                    self._vendor(soname, rel, ())
                continue
            if any(self._exists(d / soname) for d in tree_dirs):
                continue
            if rel not in self.vendored_paths and self._exists(file_dir / soname):
                # A sibling in a wheel's ".libs" directory (auditwheel names them uniquely):
                # the loader finds it already loaded by the extension that pulled this
                # library in, exactly as in the wheel's own site-packages.
                continue
            elsewhere = self._in_tree(soname, rel)
            if elsewhere is not None:
                # The package ships it, just not where this file looks (torch's test
                # binaries): point the file at it rather than at a host copy.
                entry = origin_path(rel, elsewhere)
                if entry not in extra:
                    extra.append(entry)
                continue
            already = self._in_lib(soname)
            if already is not None:
                from_lib.append((soname, already))
                needs_lib_dir = True
                continue
            found = self._vendor(soname, rel, host_dirs)
            if found is None:
                continue
            from_lib.append((soname, found))
            needs_lib_dir = True
        if verbatim:
            return  # glibc's own files stay byte for byte as the build host has them
        new = list(kept) + extra
        if needs_lib_dir and self._copy_beside(rel, tree_dirs, from_lib, searches, new):
            needs_lib_dir = False
        if needs_lib_dir:
            lib_entry = origin_path(rel, LIB_DIR)
            if lib_entry not in new:
                new.append(lib_entry)
        old = tuple(searches)
        # Rewrite when an entry changes, and turn RUNPATH into RPATH when we touch it
        # anyway; a file with nothing to change is left byte-for-byte as it came.
        if tuple(new) != old or (info.runpath and needs_lib_dir):
            self.rpaths.append(SetRpath(rel, old, tuple(new)))


def plan(
    root: Path,
    policy: LibraryPolicy,
    *,
    machine: str,
    files: Iterable[PurePosixPath] | None = None,
    read: Callable[[Path], ElfInfo | None] = elf.try_read,
    host: HostLibraries | None = None,
    provided: Path | None = None,
    virtual: Mapping[PurePosixPath, Path] | None = None,
) -> RelocationPlan:
    """Plan the ELF edits for every ELF in ``root`` (or only ``files``).

    ``provided`` is the final tree's ``lib/`` when ``root`` is one layer of a
    tree (a wheel installed on its own): libraries already there are reused.
    ``virtual`` plans a tree that is not written yet (``--dry-run``): each
    tree path maps to the host file it would be copied from.
    """
    planner = _Planner(root, policy, host or host_libraries(machine), read, provided, virtual)
    if files is None and virtual is not None:
        files = [rel for rel, src in sorted(virtual.items()) if elf.is_elf(src)]
    for rel in files if files is not None else iter_elves(root):
        planner.add_tree_file(rel)
    for soname in policy.required(machine):
        planner.require(soname)
    return planner.run()


_SHEBANG = re.compile(rb"^#!\s*(\S*python[\d.]*)\b")


def plan_shebangs(root: Path, py: PythonInfo, scripts: PurePosixPath = BIN_DIR) -> tuple[RewriteShebang, ...]:
    """Scripts in ``scripts`` whose ``#!`` names a host Python, and the launcher header each gets.

    Scripts that are not entry points (a wheel's ``.data/scripts``, a venv's
    hand-written tools) keep their body; only the first line changes, to the
    polyglot header that finds the bundle's interpreter.
    """
    bin_dir = root / scripts
    found = []
    for path in sorted(bin_dir.iterdir()) if bin_dir.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as f:
            head = f.read(512)
        m = _SHEBANG.match(head)
        if m and m.group(1).startswith(b"/"):
            old = head.split(b"\n", 1)[0].decode(errors="replace")
            found.append(RewriteShebang(scripts / path.name, old, launchers.shebang_header(py, path.name)))
    return tuple(found)


def relocate(
    root: Path, py: PythonInfo, policy: LibraryPolicy, *, provided: Path | None = None, patcher: Patcher | None = None
) -> RelocationPlan:
    """Make ``root`` relocatable: plan every edit (ELF files, host shebangs), then apply the plan.

    Used alike for the interpreter layer, each wheel's layer (``provided`` is
    the final tree's ``lib/``) and the tree a venv was copied into.
    """
    planned = replace(plan(root, policy, machine=py.machine, provided=provided), shebangs=plan_shebangs(root, py))
    apply(planned, root, patcher or LiefPatcher())
    return planned


def apply(plan: RelocationPlan, root: Path, patcher: Patcher) -> None:
    """Carry out a plan: vendored libraries first, then search paths, then shebangs."""
    for item in plan.vendor:
        dest = root / item.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.src, dest)
        os.chmod(dest, 0o755)
    for edit in plan.rpaths:
        try:
            patcher.set_rpath(root / edit.path, edit.new)
        except OSError as exc:
            raise RelocateError(f"Cannot rewrite the library search path of {edit.path} ({exc}).") from exc
    for script in plan.shebangs:
        path = root / script.path
        body = path.read_bytes().partition(b"\n")[2]
        path.write_bytes(script.new.encode() + body)
        os.chmod(path, 0o755)
