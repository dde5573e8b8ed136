"""One error root for everything a user can cause.

Every message is one sentence saying what is wrong, optionally followed by a
``hint`` saying what to do. Only :mod:`shipenv.cli` catches these, prints them
and picks the exit code; the library never prints.
"""

from __future__ import annotations

from collections.abc import Sequence


class ShipenvError(Exception):
    """Base of every error shipenv raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ShipenvError):
    """Arguments that cannot work together, or a path that is wrong."""

    exit_code = 2


class InterpreterError(ShipenvError):
    """The base Python cannot be found, run or copied."""


class ResolveError(ShipenvError):
    """Requirements, wheels or a project cannot become a set of wheels."""


class InstallError(ShipenvError):
    """Wheels or a venv cannot be installed into the tree."""


class RelocateError(ShipenvError):
    """The tree cannot be made relocatable (a missing library, a host path that runs)."""


class PolicyError(ShipenvError):
    """The tree breaks a limit the user set (for example ``--max-glibc``)."""


class ArchiveError(ShipenvError):
    """An archive cannot be written or read, or it is corrupt or hostile."""


class ManifestError(ShipenvError):
    """A ``manifest.json`` that is not shipenv's: not JSON, the wrong shape, a key missing or of the wrong type."""


class VerifyError(ShipenvError):
    """Files do not match the bundle's manifest."""


class DeployError(ShipenvError):
    """A deploy, rollback or prune cannot be done; nothing on the host was changed."""


class RefusedArchive(DeployError):
    """An archive that deploy will not unpack (hostile, corrupt, or not a bundle)."""

    exit_code = 3


class SignatureError(ShipenvError):
    """A signature, signing key or allowed-signers file is missing, damaged or not trusted."""


class UntrustedArchive(SignatureError, RefusedArchive):
    """The root's trust policy refuses an archive (exit status 3, as deploy.sh's refusals)."""


class HostError(DeployError):
    """This host cannot run the bundle (architecture, glibc)."""

    exit_code = 4


class RootError(DeployError):
    """The application root is not as shipenv made it (a planted link, modes others can write)."""


class FilesystemError(DeployError):
    """The file system refused a change (full, read-only, permission, name too long, cross-device)."""

    exit_code = 5


def listing(items: Sequence[str], *, limit: int = 5) -> str:
    """Join the first ``limit`` items and say how many more there are.

    >>> listing(["a", "b", "c"], limit=2)
    'a, b (+ 1 more)'
    """
    shown = ", ".join(items[:limit])
    rest = len(items) - limit
    return f"{shown} (+ {rest} more)" if rest > 0 else shown
