"""Which shared libraries a bundle takes from where: the target's (policy data), or the build host's.

**The policy** (``data/policy/linux.json``) says which libraries a Linux
target provides. Two modes (``--libc``): ``host`` trusts the target's glibc
family; ``bundled`` trusts only the kernel, so the glibc family is copied into
the tree (byte for byte, see :mod:`shipenv.build.relocate`) and the launchers
start the interpreter through the bundled loader.

**The build host's libraries** are everything else, found as the dynamic
loader would find them (:class:`HostLibraries`): a file's own absolute
RPATH/RUNPATH first, then ``ldconfig``'s cache (read once per machine type
through the process runner), then the default directories. Relocation copies
what it finds into ``lib/``, and the SBOM asks the same lookup which file (and
so which Debian package) a vendored library came from. Both halves answer one
question per NEEDED name, which is why they are one module.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipenv import data as package_data
from shipenv.build.runner import REAL, Runner
from shipenv.model import LibcMode


@dataclass(frozen=True)
class LibraryPolicy:
    """Which NEEDED names the target provides; everything else is vendored."""

    baseline: frozenset[str]
    system: frozenset[str]  #: baseline plus what the user declared provided
    libc: LibcMode = "host"
    #: In bundled mode: the glibc family, vendored verbatim and found through the loader's --library-path.
    family: frozenset[str] = frozenset()
    #: In bundled mode: vendored into every tree even when no file NEEDs them (glibc loads some by name).
    always: tuple[str, ...] = ()
    loaders: tuple[tuple[str, str], ...] = ()  #: machine → the loader's file name

    def provided(self, soname: str) -> bool:
        return soname in self.system

    def verbatim(self, soname: str) -> bool:
        """A library copied as it is and reached through ``--library-path``, never through an edited RPATH."""
        return soname in self.family

    def loader(self, machine: str) -> str | None:
        """The dynamic loader's file name for ``machine`` in bundled mode (None in host mode)."""
        return dict(self.loaders).get(machine) if self.libc == "bundled" else None

    def required(self, machine: str) -> tuple[str, ...]:
        """What bundled mode puts into ``lib/`` whatever the files need: the loader first."""
        loader = self.loader(machine)
        return (loader, *self.always) if loader else ()


def _data() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(package_data.path("policy", "linux.json").read_text())
    return loaded


def loader_name(machine: str) -> str | None:
    """The file name of glibc's dynamic loader on ``machine``, whatever the mode."""
    name: str | None = _data()["bundled"]["loaders"].get(machine)
    return name


def load(system_libs: frozenset[str] = frozenset(), libc: LibcMode = "host") -> LibraryPolicy:
    data = _data()
    baseline = frozenset(data["baseline"]["libraries"])
    optional = {name for name, spec in data["libraries"].items() if not spec["vendor"]}
    if libc == "host":
        return LibraryPolicy(baseline=baseline, system=baseline | optional | system_libs)
    bundled = data["bundled"]
    family = frozenset(bundled["family"])
    provided = frozenset(bundled["provided"])
    # A --system-lib naming part of glibc cannot be honoured: the bundled loader brings its own.
    return LibraryPolicy(
        baseline=provided,
        system=provided | optional | (system_libs - family),
        libc="bundled",
        family=family,
        always=tuple(bundled["always"]),
        loaders=tuple(sorted(bundled["loaders"].items())),
    )


# -- the build host's libraries ----------------------------------------------------

_LDCONFIG_ARCH = {"x86_64": "x86-64", "aarch64": "AArch64", "ppc64le": "64bit", "s390x": "64bit"}
_DEFAULT_DIRS = (
    "/lib/{multiarch}",
    "/usr/lib/{multiarch}",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)


@dataclass(frozen=True)
class HostLibraries:
    """Finds a shared library on the build host as the dynamic loader would."""

    cache: dict[str, Path]
    default_dirs: tuple[Path, ...]

    def find(self, soname: str, search: Iterable[str] = ()) -> Path | None:
        candidates = [Path(d, soname) for d in search]
        if soname in self.cache:
            candidates.append(self.cache[soname])
        candidates.extend(d / soname for d in self.default_dirs)
        return next((c for c in candidates if c.is_file()), None)


@functools.cache
def host_libraries(machine: str, runner: Runner = REAL) -> HostLibraries:
    """Read ``ldconfig -p`` once for the build host's libraries of ``machine``."""
    cache: dict[str, Path] = {}
    arch = _LDCONFIG_ARCH.get(machine, machine)
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = runner.run([ldconfig, "-p"]).stdout
        except OSError:
            continue
        for line in out.splitlines()[1:]:
            name, _, rest = line.strip().partition(" (")
            flags, _, path = rest.partition(") => ")
            if path and arch in flags and name not in cache:
                cache[name] = Path(path)
        break
    return HostLibraries(cache, default_dirs(machine))


def default_dirs(machine: str) -> tuple[Path, ...]:
    """Where the loader looks after its cache, for ``machine``."""
    return tuple(Path(d.format(multiarch=f"{machine}-linux-gnu")) for d in _DEFAULT_DIRS)
