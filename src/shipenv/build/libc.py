"""``--libc bundled``: the C library travels with the bundle.

glibc's dynamic loader runs as a program::

    lib/ld-linux-x86-64.so.2 --inhibit-cache --library-path lib --argv0 bin/python bin/python3.12 -E -s ...

and then the host's libc plays no part: a bundle built on a new distribution
runs on an old one, or in a root with no libc at all (busybox, Alpine's musl).
The relocation planner copies the loader and the glibc family into ``lib/``
(:mod:`shipenv.build.policy` says which); this module answers what the
launchers and the manifest need to know about them:

* the launch line every way into the bundle uses: the native launchers read
  it from ``.shipenv/launcher`` (written here with the loader), the sh ones
  from ``lib/`` holding the loader (:func:`shipenv.build.launchers.loader_prefix`);
  ``--library-path`` is an argument of the loader, not ``LD_LIBRARY_PATH``, so
  a host program the bundle starts (``/bin/ls``, ``ssh``) inherits nothing and
  runs on the host's own libc; ``--inhibit-cache`` keeps the host's
  ``/etc/ld.so.cache`` (made for the host's glibc) out of it; ``--argv0`` makes
  ``sys.executable`` the launcher, so children come back through the loader;
* the facts the manifest records (:func:`facts`): the bundled glibc's version
  (from ``libc.so.6``'s version string) and the real floor, the Linux version
  its ``.note.ABI-tag`` names (``readelf -n``: "ABI: 3.2.0").
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError

from shipenv import templates
from shipenv.build import launchers
from shipenv.build.policy import LibraryPolicy
from shipenv.bundle import elf
from shipenv.errors import PolicyError, RelocateError
from shipenv.model import PythonInfo, Scheme

log = logging.getLogger(__name__)

#: ``--argv0`` appeared in glibc 2.33; without it sys.executable would name the bare ELF.
MIN_GLIBC = (2, 33)
_RELEASE = re.compile(rb"release version (\d+)\.(\d+)")


@dataclass(frozen=True)
class BundledLibc:
    """What a ``--libc bundled`` tree carries, for the manifest and ``inspect``."""

    glibc: tuple[int, int]
    kernel: tuple[int, int, int]  #: the oldest Linux this glibc runs on
    loader: PurePosixPath  #: relative to the tree's root

    def summary(self, arch: str) -> str:
        """The line ``inspect`` prints: ``glibc 2.36 (bundled), needs Linux >= 3.2 on x86_64``."""
        return summary(self.as_platform(), arch)

    def as_platform(self) -> dict[str, str]:
        """The manifest's ``platform`` keys of this mode (read by deploy.sh too)."""
        return {
            "libc": "bundled",
            "glibc": f"{self.glibc[0]}.{self.glibc[1]}",
            "kernel_floor": ".".join(map(str, self.kernel)),
            "loader": self.loader.as_posix(),
        }


def glibc_release(libc_so: Path) -> tuple[int, int]:
    """The version a ``libc.so.6`` is (``gnu_get_libc_version``), from its banner string."""
    m = _RELEASE.search(libc_so.read_bytes())
    if m is None:
        raise RelocateError(f"Cannot tell which glibc {libc_so} is (no release banner in it).")
    return int(m.group(1)), int(m.group(2))


def kernel_floor(libc_so: Path) -> tuple[int, int, int]:
    """The Linux version named by the ``NT_GNU_ABI_TAG`` note: below it, glibc refuses to start."""
    from elftools.elf.elffile import ELFFile  # only --libc bundled reads it: 60 ms of import every build spared

    try:
        with libc_so.open("rb") as f:
            for section in ELFFile(f).iter_sections():
                if section.header.sh_type != "SHT_NOTE":
                    continue
                for note in section.iter_notes():
                    if note["n_type"] == "NT_GNU_ABI_TAG":
                        desc = note["n_desc"]
                        return int(desc["abi_major"]), int(desc["abi_minor"]), int(desc["abi_tiny"])
    except (ELFError, OSError, KeyError, ValueError) as exc:
        raise RelocateError(f"Cannot read the ABI note of {libc_so} ({exc}).") from exc
    raise RelocateError(f"{libc_so} has no ABI note naming the oldest Linux it runs on.")


def facts(root: Path, policy: LibraryPolicy, machine: str) -> BundledLibc | None:
    """The bundled glibc of a finished tree, or None in host mode."""
    loader = policy.loader(machine)
    if loader is None:
        if policy.libc == "bundled":
            raise PolicyError(
                f"--libc bundled does not know the dynamic loader of {machine}.",
                hint="Build with --libc host on this architecture.",
            )
        return None
    libc_so = root / "lib" / "libc.so.6"
    if not (root / "lib" / loader).is_file() or not libc_so.is_file():
        raise RelocateError(f"--libc bundled left no lib/{loader} or lib/libc.so.6 in the tree.", hint="Please report this as a shipenv bug.")
    found = BundledLibc(glibc_release(libc_so), kernel_floor(libc_so), PurePosixPath("lib") / loader)
    if found.glibc < MIN_GLIBC:
        have = f"{found.glibc[0]}.{found.glibc[1]}"
        raise PolicyError(
            f"--libc bundled needs the build host's glibc to be 2.33 or newer (its loader's --argv0), but it is {have}.",
            hint="Build on a newer distribution, or with --libc host.",
        )
    return found


def summary(platform: dict[str, str], arch: str) -> str:
    """One line from a manifest's ``platform`` keys of a bundled-libc tree."""
    kernel = str(platform.get("kernel_floor", "?"))
    major_minor = ".".join(kernel.split(".")[:2]) if kernel.endswith(".0") else kernel
    return f"glibc {platform.get('glibc', '?')} (bundled), needs Linux >= {major_minor} on {arch}"


def _is_dynamic_executable(path: Path) -> bool:
    """An ELF with a ``PT_INTERP``: it needs a loader (a static one, such as uv's, does not)."""
    from elftools.elf.elffile import ELFFile

    try:
        with path.open("rb") as f:
            return any(seg["p_type"] == "PT_INTERP" for seg in ELFFile(f).iter_segments())
    except (ELFError, OSError, ValueError):
        return False


def wrap_elf_commands(root: Path, scheme: Scheme, py: PythonInfo, loader: str) -> list[str]:
    """ELF executables in ``bin/`` move to ``libexec/`` behind a launcher that uses the loader.

    Started directly they would load the host's glibc (their ``PT_INTERP`` is
    an absolute path on the host) and fail on an older or absent one.
    """
    bin_dir = root / scheme.scripts
    wrapped: list[str] = []
    for path in sorted(bin_dir.iterdir()) if bin_dir.is_dir() else []:
        if path.name == f"python{py.xy}" or not elf.is_elf(path) or not _is_dynamic_executable(path):
            continue
        dest = root / "libexec" / path.name
        dest.parent.mkdir(exist_ok=True)
        os.replace(path, dest)
        text = templates.render("elf.sh", name=path.name, loader=loader, locate=templates.read("locate.sh"))
        path.write_text(text)
        os.chmod(path, 0o755)
        wrapped.append(path.name)
    return wrapped


def finish(root: Path, policy: LibraryPolicy, py: PythonInfo, scheme: Scheme, max_glibc: tuple[int, int] | None) -> BundledLibc | None:
    """The last step of a bundled-libc build: commands through the loader, and the facts to record."""
    found = facts(root, policy, py.machine)
    if found is None:
        return None
    launchers.write_config(py, root, loader=found.loader.as_posix())
    wrapped = wrap_elf_commands(root, scheme, py, found.loader.name)
    if wrapped:
        log.info("Through the bundled loader: %s", ", ".join(wrapped))
    if max_glibc is not None:
        log.warning(
            "--max-glibc %d.%d has no effect with --libc bundled: the bundle carries glibc %d.%d and needs only Linux >= %s.",
            *max_glibc, *found.glibc, ".".join(map(str, found.kernel[:2])),
        )
    return found
