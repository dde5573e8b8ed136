"""Policy data: which shared libraries a Linux target provides (see ``linux.json``).

Two modes (``--libc``): ``host`` trusts the target's glibc family; ``bundled``
trusts only the kernel, so the glibc family is copied into the tree (byte for
byte, see :mod:`shipenv.build.relocate`) and the launchers start the
interpreter through the bundled loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shipenv import data as package_data
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
