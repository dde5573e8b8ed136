"""Policy data: which shared libraries a Linux target provides (see ``linux.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from shipenv import data as package_data


@dataclass(frozen=True)
class LibraryPolicy:
    """Which NEEDED names the target provides; everything else is vendored."""

    baseline: frozenset[str]
    system: frozenset[str]  #: baseline plus what the user declared provided

    def provided(self, soname: str) -> bool:
        return soname in self.system


def load(system_libs: frozenset[str] = frozenset()) -> LibraryPolicy:
    data = json.loads(package_data.path("policy", "linux.json").read_text())
    baseline = frozenset(data["baseline"]["libraries"])
    optional = {name for name, spec in data["libraries"].items() if not spec["vendor"]}
    return LibraryPolicy(baseline=baseline, system=baseline | optional | system_libs)
