"""Can this host run a bundle? Its architecture and glibc (or kernel) against the bundle's manifest.

Nothing from the bundle runs for this: the kernel says the architecture, the C
library its version (``SHIPENV_HOST_GLIBC`` overrides it where detection fails).
A bundle built with ``--libc bundled`` carries its own glibc: for it the
kernel's version counts instead, against the floor glibc's ABI note names.
A refusal is a :class:`~shipenv.errors.HostError` (exit status 4, as in ``deploy.sh``).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from shipenv.bundle import manifest
from shipenv.bundle.manifest import Manifest
from shipenv.errors import DeployError, HostError, UsageError

_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class HostFacts:
    """What a bundle's manifest is checked against: this machine, or a stand-in in tests."""

    arch: str
    glibc: tuple[int, int] | None  #: None where there is no glibc (musl)
    kernel: tuple[int, ...] | None = None  #: Linux's version (``uname -r``), for a bundled-libc bundle

    @classmethod
    def detect(cls, glibc_override: str | None = None) -> HostFacts:
        """This machine, from the kernel and the C library: nothing from the bundle runs.

        ``glibc_override`` (the CLI passes ``$SHIPENV_HOST_GLIBC``) replaces the
        detected version where detection fails or lies (an unusual libc build).
        """
        arch = os.uname().machine
        kernel = kernel_version(os.uname().release)
        if glibc_override:
            try:
                return cls(arch, manifest.parse_version(glibc_override), kernel)
            except ValueError:
                raise UsageError(f"SHIPENV_HOST_GLIBC={glibc_override!r} is not a glibc version such as 2.31.") from None
        try:
            text = os.confstr("CS_GNU_LIBC_VERSION") or ""
        except (ValueError, OSError):
            text = ""
        name, _, version = text.partition(" ")
        try:
            return cls(arch, manifest.parse_version(version) if name == "glibc" else None, kernel)
        except ValueError:
            return cls(arch, None, kernel)


def kernel_version(release: str) -> tuple[int, ...] | None:
    """``6.1.0-18-amd64`` → (6, 1, 0); None when it does not start with a version."""
    parts: list[int] = []
    for piece in release.split("-", 1)[0].split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or None


def _check_kernel(platform: dict[str, str], host: HostFacts, release: str) -> None:
    """A bundle that carries its glibc needs only the kernel that glibc was built for."""
    floor = str(platform.get("kernel_floor") or "")
    need = kernel_version(floor)
    if need is None:
        raise DeployError(f"The manifest of {release} has an unreadable kernel floor {floor!r}.")
    if host.kernel is not None and host.kernel < need:
        have = ".".join(map(str, host.kernel))
        raise HostError(
            f"This host runs Linux {have} but {release} carries glibc {platform.get('glibc')}, which needs Linux {floor} or newer; deploy it on a newer kernel.",
            hint="Rebuild it with --libc host on the target's distribution to use its own C library.",
        )


_BUNDLED_HINT = "Or rebuild it with --libc bundled: it then carries its own glibc and needs only a Linux kernel."


def check_host(bundle: Manifest, host: HostFacts, release: str) -> None:
    """Refuse, in words, a bundle this host cannot run (DESIGN: "honest about its floor")."""
    arch = bundle.platform.arch
    if arch and _ARCH_ALIASES.get(arch, arch) != _ARCH_ALIASES.get(host.arch, host.arch):
        raise HostError(f"This host is {host.arch} but {release} was built for {arch}; deploy it on an {arch} host or build it on {host.arch}.")
    if bundle.platform.libc == "bundled":
        _check_kernel(bundle.platform.bundled_libc(), host, release)
        return
    floor = bundle.platform.glibc_floor
    if not floor:
        return
    need = manifest.parse_version(floor)  # Manifest.parse checked its shape
    if host.glibc is None:
        raise HostError(
            f"This host has no glibc but {release} needs glibc {floor} or newer; deploy it on a glibc-based distribution.",
            hint="Rebuild it with --libc bundled to carry its own glibc; if this host does have glibc and detection failed, set SHIPENV_HOST_GLIBC to its version (e.g. 2.36).",
        )
    if host.glibc < need:
        have = manifest.format_version(host.glibc)
        raise HostError(
            f"This host has glibc {have} but {release} needs {floor} or newer; deploy it on a newer distribution or rebuild it on an older one.",
            hint=_BUNDLED_HINT,
        )
