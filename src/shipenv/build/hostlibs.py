"""Find a shared library on the build host the way the dynamic loader would.

A file's own absolute RPATH/RUNPATH first, then ``ldconfig``'s cache (read once
per machine type through the process runner), then the default directories.
:mod:`shipenv.build.relocate` copies what it finds into the tree's ``lib/``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shipenv.build.runner import REAL, Runner

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
    multiarch = f"{machine}-linux-gnu"
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
    dirs = tuple(Path(d.format(multiarch=multiarch)) for d in _DEFAULT_DIRS)
    return HostLibraries(cache, dirs)
