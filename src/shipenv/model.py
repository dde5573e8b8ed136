"""Plain, frozen values passed between the stages of a build.

Each stage takes some of these and returns others; none of them does I/O.
Paths inside a bundle are always relative to the bundle's root (``PurePosixPath``)
so that a plan can be printed, compared in tests and applied to any root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

ArchiveFormat = Literal["dir", "tar.zst", "tar.gz", "tar.xz", "oci", "oci-archive"]
FORMATS: tuple[ArchiveFormat, ...] = ("tar.zst", "tar.gz", "tar.xz", "dir", "oci", "oci-archive")
#: The container-image formats (issue 15): an OCI image layout directory, or the same as one tar file.
IMAGE_FORMATS: tuple[ArchiveFormat, ...] = ("oci", "oci-archive")
#: ``--libc``: trust the target's glibc (host), or carry the build host's (bundled).
LibcMode = Literal["host", "bundled"]
LIBC_MODES: tuple[LibcMode, ...] = ("host", "bundled")

#: Parts of the standard library a server never uses, left out unless kept.
STDLIB_OPTIONAL = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "static-lib")


@dataclass(frozen=True)
class PythonInfo:
    """What a base interpreter reported about itself when we ran it."""

    executable: Path  #: the real ELF file (symlinks resolved)
    version: tuple[int, int, int]
    implementation: str
    abiflags: str
    soabi: str
    ext_suffix: str
    machine: str
    prefix: Path  #: sys.base_prefix
    stdlib: Path
    dynload: Path | None
    libdir: Path | None
    shared: bool  #: libpython is a shared library (pyenv) or linked in (Debian)
    ldlibrary: str | None
    multiarch: str | None
    was_venv: Path | None = None  #: the venv the user named, if any

    @property
    def xy(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def abi_tag(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}{self.abiflags}"

    @property
    def version_str(self) -> str:
        return ".".join(str(p) for p in self.version)


@dataclass(frozen=True)
class CopyFile:
    """Copy one file (or a symlink, as a symlink) from the host into the tree."""

    src: Path
    dest: PurePosixPath


@dataclass(frozen=True)
class MakeSymlink:
    dest: PurePosixPath
    target: str


@dataclass(frozen=True)
class CopyPlan:
    """Everything the interpreter stage copies, decided before anything is written."""

    files: tuple[CopyFile, ...]
    symlinks: tuple[MakeSymlink, ...]
    dirs: tuple[PurePosixPath, ...]
    skipped: tuple[str, ...]  #: stdlib parts left out, for the report


@dataclass(frozen=True)
class ElfInfo:
    """Read-only facts about one ELF file, as the dynamic loader reads them (:mod:`shipenv.bundle.elfread`)."""

    machine: str
    elfclass: int
    soname: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    glibc_versions: tuple[tuple[int, int], ...]
    is_shared: bool


@dataclass(frozen=True)
class VendorLibrary:
    """Copy a host shared library into the tree's ``lib/`` because something needs it."""

    soname: str
    src: Path
    dest: PurePosixPath
    needed_by: PurePosixPath


@dataclass(frozen=True)
class SetRpath:
    """Replace an ELF's RPATH/RUNPATH with ``new`` (written as DT_RPATH, see relocate)."""

    path: PurePosixPath
    old: tuple[str, ...]
    new: tuple[str, ...]


@dataclass(frozen=True)
class RewriteShebang:
    """A script whose ``#!`` line names a host interpreter: its first line becomes ``new``.

    ``new`` is the polyglot launcher header (``templates/script.py``) that finds
    the bundle's interpreter; the script's body is kept as it is.
    """

    path: PurePosixPath
    old: str
    new: str


@dataclass(frozen=True)
class WriteLauncher:
    """Write a launcher (or the start-up module it relies on) into the tree."""

    path: PurePosixPath
    content: bytes
    mode: int = 0o755


PlanItem = VendorLibrary | SetRpath | RewriteShebang | WriteLauncher


@dataclass(frozen=True)
class RelocationPlan:
    """Every edit that makes one tree (or one layer of it) relocatable, applied in one call."""

    vendor: tuple[VendorLibrary, ...] = ()
    rpaths: tuple[SetRpath, ...] = ()
    shebangs: tuple[RewriteShebang, ...] = ()

    def items(self) -> tuple[PlanItem, ...]:
        return (*self.vendor, *self.rpaths, *self.shebangs)


@dataclass(frozen=True)
class Scheme:
    """Where the copied interpreter itself says things go, relative to the tree root."""

    purelib: PurePosixPath
    platlib: PurePosixPath
    scripts: PurePosixPath
    data: PurePosixPath
    headers: PurePosixPath


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str
    source: str  #: "requirements", "project", "wheelhouse", "venv"


@dataclass(frozen=True)
class AuditFinding:
    """One remaining occurrence of a build-host path in the tree."""

    path: PurePosixPath
    needle: str
    kind: Literal["runs", "metadata"]
    reason: str


@dataclass(frozen=True)
class ImageOptions:
    """How ``--format oci``/``oci-archive`` makes a container image of the bundle."""

    root: PurePosixPath = PurePosixPath("/app")  #: where the tree goes in the image (``--image-root``)
    base: str | None = None  #: ``--base``: ``oci:DIR[:REF]``, ``oci-archive:FILE[:REF]``, a path, or ``scratch``
    cmd: tuple[str, ...] | None = None  #: ``--cmd``: replaces the entry point (Entrypoint is then empty)
    user: str | None = None  #: ``--user``; default the base's non-root user, else 65532:65532
    revision: str | None = None  #: org.opencontainers.image.revision (the project's git commit)
    source: str | None = None  #: org.opencontainers.image.source (the project's source URL)


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``shipenv build`` was asked to do (command line and ``[tool.shipenv]``)."""

    output: Path
    python: str | None = None
    name: str | None = None
    version: str | None = None
    fmt: ArchiveFormat | None = None
    keep_stdlib: frozenset[str] = frozenset()
    max_glibc: tuple[int, int] | None = None
    system_libs: frozenset[str] = frozenset()
    libc: LibcMode = "host"
    # Sources of packages (issue: put the app in the bundle).
    project: Path | None = None
    requirements: tuple[Path, ...] = ()
    constraints: tuple[Path, ...] = ()
    wheels: Path | None = None
    venv: Path | None = None
    entries: tuple[tuple[str, str], ...] = ()
    report: bool = False
    compress_level: int | None = None
    threads: int = 0
    source_date_epoch: int | None = None
    cache_dir: Path | None = None
    use_cache: bool = True
    image: ImageOptions = ImageOptions()
    sign_key: Path | None = None  #: SSH key (or .pub held by ssh-agent) that signs the archive


@dataclass(frozen=True)
class BuildResult:
    path: Path  #: the artifact: a directory or an archive
    tree_name: str  #: NAME-VERSION
    glibc_floor: tuple[int, int] | None
    sha256: str | None = None
    audit: tuple[AuditFinding, ...] = ()
    vendored: tuple[str, ...] = ()
    image_digest: str | None = None  #: ``sha256:...`` of the image manifest, for the OCI formats
    libc: str | None = None  #: with --libc bundled: "glibc 2.36 (bundled), needs Linux >= 3.2 on x86_64"
    signature: Path | None = None  #: ARCHIVE.sig, when --sign-key was given
    signer: str | None = None  #: fingerprint of the key that signed


@dataclass(frozen=True)
class BuildPlan:
    """What ``shipenv build`` would do, computed without writing anything (``--dry-run``)."""

    tree_name: str  #: NAME-VERSION
    artifact: Path
    fmt: ArchiveFormat
    python: PythonInfo
    copy: CopyPlan  #: the interpreter layer
    relocation: RelocationPlan  #: the interpreter layer's ELF edits (each wheel's are planned when it is installed)
    launchers: tuple[WriteLauncher, ...]
    wheels: tuple[str, ...]  #: ``name==version`` pins or wheel files; empty when there are none
    wheels_note: str | None = None  #: why ``wheels`` is not the whole story (pip resolves, a venv is copied)
