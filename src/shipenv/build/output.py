"""Where a build's artifact goes, and the staging directory it is built in.

``-o DIR`` puts ``NAME-VERSION.tar.zst`` (or ``NAME-VERSION/`` with ``--format
dir``, ``NAME-VERSION.oci/`` or ``.oci.tar`` for an image) in DIR; ``-o FILE.tar.gz`` picks the format from the suffix. The tree is
built in a staging directory beside the artifact, on the same file system, so
the finished artifact is moved into place with one rename; a build killed with
SIGKILL leaves a staging directory whose lock nobody holds, and the next build
beside it removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shipenv.errors import ShipenvError, UsageError
from shipenv.model import IMAGE_FORMATS, ArchiveFormat, BuildOptions

if TYPE_CHECKING:
    from shipenv.bundle.ocibase import BaseImage

STAGING_SUFFIX = ".shipenv-tmp"

#: Used when SOURCE_DATE_EPOCH is not set: 2020-01-01T00:00:00Z.
DEFAULT_EPOCH = 1577836800
_SUFFIXES: dict[str, ArchiveFormat] = {
    ".oci.tar": "oci-archive", ".tar.zst": "tar.zst", ".tzst": "tar.zst", ".tar.gz": "tar.gz", ".tgz": "tar.gz", ".tar.xz": "tar.xz", ".txz": "tar.xz",
}


@dataclass(frozen=True)
class Target:
    """What the build produces: ``NAME-VERSION``, in which format, at which path."""

    name: str
    version: str
    fmt: ArchiveFormat
    artifact: Path
    epoch: int
    base: BaseImage | None = None  #: the base image read by ``--format oci``/``oci-archive``

    @property
    def tree_name(self) -> str:
        return f"{self.name}-{self.version}"


def target(options: BuildOptions, name: str, version: str, machine: str) -> Target:
    """Decide the artifact's path and format, and refuse an output that is in the way (nothing is written)."""
    tree_name = f"{name}-{version}"
    fmt, artifact = artifact_path(options, tree_name)
    base = None
    if fmt in IMAGE_FORMATS:
        from shipenv.bundle import oci

        base = oci.prepare(options.image, machine, options.compress_level, options.threads, libc=options.libc)  # fails now
    elif fmt != "dir":
        from shipenv.bundle import archive

        archive.codec(fmt, options.compress_level, options.threads)  # a bad --level fails now, not after the build
    check_destination(artifact)
    return Target(name, version, fmt, artifact, source_date_epoch(options), base)


def source_date_epoch(options: BuildOptions) -> int:
    if options.source_date_epoch is not None:
        return options.source_date_epoch
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError as exc:
            raise UsageError(f"SOURCE_DATE_EPOCH={env!r} is not a whole number of seconds.") from exc
    return DEFAULT_EPOCH


def format_for(options: BuildOptions) -> tuple[ArchiveFormat, Path | None]:
    """(format, explicit file) from ``--format`` and whether ``-o`` names a file."""
    out = options.output
    suffix_fmt = next((f for s, f in _SUFFIXES.items() if out.name.endswith(s)), None)
    if suffix_fmt is not None and not out.is_dir():
        if options.fmt not in (None, suffix_fmt):
            raise UsageError(f"-o {out} says {suffix_fmt} but --format says {options.fmt}.")
        return suffix_fmt, out
    return options.fmt or "tar.zst", None


def artifact_path(options: BuildOptions, tree_name: str) -> tuple[ArchiveFormat, Path]:
    fmt, explicit = format_for(options)
    if explicit is not None:
        return fmt, explicit
    suffix = {"dir": "", "oci-archive": ".oci.tar"}.get(fmt, f".{fmt}")
    return fmt, options.output / f"{tree_name}{suffix}"


def check_destination(path: Path) -> None:
    """Refuse an artifact path that is in the way, or that no directory can be made for."""
    for ancestor in path.parents:  # the nearest one that exists must be a directory
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise UsageError(f"{ancestor} is not a directory, so the output {path} cannot be made below it.",
                                 hint="Choose another -o: a directory, or a file name ending in .tar.zst, .tar.gz or .tar.xz.")
            break
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        if path.is_file() and not path.is_symlink():
            raise UsageError(f"{path} already exists.", hint="Remove it or choose another -o.")
        raise UsageError(f"{path} exists and is not a directory.", hint="Choose another -o.")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"The output {path} exists and is not empty.", hint="Remove it or choose another -o.")


@contextmanager
def staging(target: Target) -> Iterator[Path]:
    """A locked, empty staging directory beside the artifact, removed afterwards whatever happens."""
    parent = target.artifact.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShipenvError(f"Cannot make the output directory {parent}: {exc.strerror or exc}.",
                           hint="Choose another -o, or one you may write to.") from None
    remove_stale_staging(parent)
    path = Path(tempfile.mkdtemp(prefix=f".{target.tree_name}.", suffix=STAGING_SUFFIX, dir=parent))
    lock = (path / ".lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # held while this build runs; see remove_stale_staging
    try:
        yield path
    finally:
        remove_tree(path)
        lock.close()


def remove_tree(path: Path, workers: int = 16) -> None:
    """``shutil.rmtree(path, ignore_errors=True)``, with the unlinks and rmdirs on ``workers`` threads.

    Removing a tree is bound by the file system's latency, not by the CPU: a
    bundle tree of 16,000 files in 3,500 directories took 6.5 s to remove one
    by one on this project's discard-mounted disk, and 1.2 s on 16 threads.
    Nothing is followed: a symlink is unlinked like a file.
    """
    files: list[str] = []
    levels: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        levels.setdefault(dirpath.count(os.sep), []).append(dirpath)
        files.extend(os.path.join(dirpath, name) for name in filenames)
        files.extend(os.path.join(dirpath, name) for name in dirnames if os.path.islink(os.path.join(dirpath, name)))

    def quietly(op: Callable[[str], None]) -> Callable[[list[str]], None]:
        def run(targets: list[str]) -> None:
            for target in targets:
                with contextlib.suppress(OSError):
                    op(target)
        return run

    # One task per slice, not per path: a thread pool ignores map()'s chunksize, and a future
    # per unlink (16,000 of them) cost more time holding the GIL than the unlinks took.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shipenv-rm") as pool:
        list(pool.map(quietly(os.unlink), _slices(files, 128)))
        for depth in sorted(levels, reverse=True):  # the deepest directories first: each is empty by then
            list(pool.map(quietly(os.rmdir), _slices(levels[depth], 16)))
    shutil.rmtree(path, ignore_errors=True)  # whatever is left (nothing, unless something changed it meanwhile)


def _slices(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def remove_stale_staging(directory: Path) -> None:
    """Remove what builds killed with SIGKILL left behind (their lock is no longer held)."""
    for candidate in directory.glob(f".*{STAGING_SUFFIX}"):
        try:
            with (candidate / ".lock").open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(candidate, ignore_errors=True)
        except OSError:
            continue  # another build is using it, or it is not ours


def place(built: Path, artifact: Path) -> None:
    """Move a finished tree or image layout into place (an empty directory there is replaced)."""
    if artifact.is_dir():
        artifact.rmdir()
    os.replace(built, artifact)
