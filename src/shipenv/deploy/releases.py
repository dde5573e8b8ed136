"""Releases on a server: deploy, switch atomically, roll back, prune.

One application root holds every release side by side and a symlink to the
one that runs, so a systemd unit says ``ExecStart=/srv/app/current/bin/app``::

    /srv/app/releases/app-1.0.0/      unpacked, verified bundles
    /srv/app/releases/app-2.0.0/
    /srv/app/current -> releases/app-2.0.0
    /srv/app/history.jsonl            one JSON line per switch of current
    /srv/app/.shipenv.lock            one deploy/rollback/prune at a time

A deploy unpacks into a temporary directory beside ``releases/`` (same file
system, so the final ``rename`` is atomic), checks every file against the
bundle's RECORD as it streams (:mod:`shipenv.deploy.extract`), checks the host
before anything moves, runs ``--check`` in the new release, renames it into
``releases/`` and replaces ``current`` with ``rename(2)`` over a symlink made
at a temporary name. Until that last rename, ``current`` and every release are
exactly as they were; a crash (even ``SIGKILL``) leaves at most a temporary
directory, which the next run removes under the lock.

History, not mtimes, decides where a rollback goes: ``history.jsonl`` is
append-only, one line per switch (``{"action", "from", "time", "to"}``), and
the POSIX ``deploy.sh`` carried in every bundle writes the same lines
(:mod:`shipenv.deploy.layout` holds what both must agree on). Replayed,
it is a stack: a deploy pushes, a rollback pops the release it leaves, so
repeated rollbacks walk further back and never return to a release rolled
back from (``rollback --to`` can).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipenv.bundle import manifest
from shipenv.bundle.manifest import RecordEntry
from shipenv.deploy import extract as _extract
from shipenv.deploy import lock as _lock
from shipenv.deploy.layout import (
    CURRENT,
    HISTORY,
    RELEASES,
    TMP_PREFIX,
    TRASH_PREFIX,
    HistoryEntry,
    append_history,
    clean_stale,
    current_release,
    fsync_dir,
    read_history,
    rollback_stack,
    rollback_target,
    switch,
    syncfs,
)
from shipenv.errors import DeployError, HostError, UsageError, listing

__all__ = [
    "CURRENT", "HISTORY", "RELEASES", "DeployResult", "HistoryEntry", "HostFacts", "PruneResult", "Release",
    "SwitchResult", "check_host", "current_release", "deploy", "prune", "read_history", "releases", "rollback",
    "rollback_stack", "rollback_target",
]

Step = Callable[[str], None]
Progress = Callable[[int, int], None]

_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


# -- the host -------------------------------------------------------------------


@dataclass(frozen=True)
class HostFacts:
    """What a bundle's manifest is checked against: this machine, or a stand-in in tests."""

    arch: str
    glibc: tuple[int, int] | None  #: None where there is no glibc (musl)

    @classmethod
    def detect(cls, glibc_override: str | None = None) -> HostFacts:
        """This machine, from the kernel and the C library: nothing from the bundle runs.

        ``glibc_override`` (the CLI passes ``$SHIPENV_HOST_GLIBC``) replaces the
        detected version where detection fails or lies (an unusual libc build).
        """
        arch = os.uname().machine
        if glibc_override:
            try:
                return cls(arch, manifest.parse_version(glibc_override))
            except ValueError:
                raise UsageError(f"SHIPENV_HOST_GLIBC={glibc_override!r} is not a glibc version such as 2.31.") from None
        try:
            text = os.confstr("CS_GNU_LIBC_VERSION") or ""
        except (ValueError, OSError):
            text = ""
        name, _, version = text.partition(" ")
        try:
            return cls(arch, manifest.parse_version(version) if name == "glibc" else None)
        except ValueError:
            return cls(arch, None)


def check_host(metadata: dict[str, Any], host: HostFacts, release: str) -> None:
    """Refuse, in words, a bundle this host cannot run (DESIGN: "honest about its floor")."""
    platform = metadata.get("platform") or {}
    arch = platform.get("arch")
    if arch and _ARCH_ALIASES.get(arch, arch) != _ARCH_ALIASES.get(host.arch, host.arch):
        raise HostError(f"This host is {host.arch} but {release} was built for {arch}; deploy it on an {arch} host or build it on {host.arch}.")
    floor = platform.get("glibc_floor")
    if not floor:
        return
    try:
        need = manifest.parse_version(str(floor))
    except ValueError:
        raise DeployError(f"The manifest of {release} has an unreadable glibc floor {floor!r}.") from None
    if host.glibc is None:
        raise HostError(
            f"This host has no glibc but {release} needs glibc {floor} or newer; deploy it on a glibc-based distribution.",
            hint="If this host does have glibc and detection failed, set SHIPENV_HOST_GLIBC to its version (e.g. 2.36).",
        )
    if host.glibc < need:
        have = manifest.format_version(host.glibc)
        raise HostError(f"This host has glibc {have} but {release} needs {floor} or newer; deploy it on a newer distribution or rebuild it on an older one.")


def _prepare_root(root: Path) -> Path:
    root = Path(os.path.abspath(root))
    try:
        (root / RELEASES).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{root} is not a directory.") from None
    except PermissionError:
        raise DeployError(f"Cannot create {root / RELEASES}: permission denied.", hint="Run as the user that owns the application root.") from None
    return root


def _existing_root(root: Path) -> Path:
    root = Path(os.path.abspath(root))
    if not (root / RELEASES).is_dir():
        raise DeployError(f"{root} holds no releases (no {root / RELEASES}).", hint=f"Deploy one first: shipenv deploy ARCHIVE --root {root}")
    return root


def _mb(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


# -- releases -------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    name: str
    path: Path
    current: bool
    rollback: bool  #: where ``shipenv rollback`` would go
    deployed_at: str | None  #: the last time it became current

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "current": self.current, "rollback": self.rollback, "deployed_at": self.deployed_at}


def releases(root: Path) -> list[Release]:
    """Every release under ``root``, the most recently current first."""
    root = Path(os.path.abspath(root))
    if not (root / RELEASES).is_dir():
        return []
    history = read_history(root)
    current = current_release(root)
    target = rollback_target(root, history)
    last: dict[str, tuple[int, str]] = {}
    for i, entry in enumerate(history):
        last[entry.to] = (i, entry.time)
    names = [e.name for e in os.scandir(root / RELEASES) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    names.sort(key=lambda n: (last.get(n, (-1, ""))[0], n), reverse=True)
    return [Release(n, root / RELEASES / n, n == current, n == target, last[n][1] if n in last else None) for n in names]


# -- deploy ---------------------------------------------------------------------


@dataclass(frozen=True)
class DeployResult:
    release: str
    path: Path
    previous: str | None
    changed: bool
    files: int = 0
    written_bytes: int = 0
    linked_bytes: int = 0
    pruned: tuple[str, ...] = ()
    message: str = ""


def _record_of(release: Path) -> tuple[str | None, dict[str, RecordEntry]]:
    """(sha256 of its RECORD, parsed RECORD) of an unpacked release; (None, {}) if unreadable."""
    try:
        data = (release / manifest.RECORD).read_bytes()
        return hashlib.sha256(data).hexdigest(), manifest.parse_record(data)
    except (OSError, ValueError, UnicodeDecodeError):
        return None, {}


def _run_check(check: str, release: Path, name: str, state: str) -> None:
    proc = subprocess.run(["sh", "-c", check], cwd=release, capture_output=True, text=True, errors="replace", check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise DeployError(
            f"The check {check!r} failed in {name} (exit status {proc.returncode}); {state}.",
            hint="Its last output:\n  " + "\n  ".join(tail) if tail else "It printed nothing.",
        )


def deploy(archive: Path, root: Path, *, check: str | None = None, keep: int | None = None, wait: float = 0.0,
           host: HostFacts | None = None, step: Step | None = None, progress: Progress | None = None) -> DeployResult:
    """Unpack ``archive`` as ``ROOT/releases/NAME-VERSION`` and switch ``ROOT/current`` to it."""
    say = step or (lambda _msg: None)
    host = host or HostFacts.detect()
    if keep is not None and keep < 1:
        raise UsageError(f"--keep {keep}: keep at least 1 release (the current one).")
    if not archive.is_file():
        raise UsageError(f"{archive} is not a file.")
    root = _prepare_root(root)
    with _lock.hold(root, wait=wait):
        clean_stale(root)
        previous = current_release(root)
        state = f"{root / CURRENT} still points to {previous}" if previous else f"{root / CURRENT} was not created"
        tmp: Path | None = None
        stats: _extract.Stats | None = None
        name, size = archive.name, 0
        try:
            with _extract.open_bundle(archive) as reader:
                head = reader.head
                name, size = head.top, head.size
                say(f"Checking {name} against this host")
                check_host(head.metadata, host, name)
                final = root / RELEASES / name
                if os.path.lexists(final):
                    digest, _ = _record_of(final)
                    if digest != head.record_sha256:
                        raise DeployError(
                            f"{final} already exists with different content than {archive.name}; a version is deployed only once.",
                            hint="Give the new build its own version (shipenv build --version), or remove the old release if it is not current.",
                        )
                    if previous == name:
                        return DeployResult(name, final, previous, False, message=f"{name} is already deployed with the same content and is current in {root}; nothing changed.")
                else:
                    share = root / RELEASES / previous if previous else None
                    share_record = _record_of(share)[1] if share is not None else {}
                    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
                    say(f"Unpacking {name} ({_mb(head.size)}) and checking every file against its RECORD")
                    stats = reader.extract(tmp / name, share=share, share_record=share_record, progress=progress)
            if tmp is not None:
                syncfs(tmp)
            if check:
                say(f"Running the check: {check}")
                _run_check(check, tmp / name if tmp is not None else final, name, state)
            if tmp is not None:
                os.rename(tmp / name, final)
                fsync_dir(final.parent)
            say(f"Switching {root / CURRENT} to {name}")
            switch(root, name)
            append_history(root, "deploy", previous, name)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            st = os.statvfs(root)
            raise DeployError(
                f"The disk holding {root} is full: {name} needs about {_mb(size)} "
                f"and {_mb(st.f_bavail * st.f_frsize)} is free there; nothing was deployed and {state}.",
                hint=f"Free some space, for example with 'shipenv prune --root {root} --keep 2', then deploy again.",
            ) from None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        pruned = _prune(root, keep) if keep is not None else ()
    switched = f"switched {root / CURRENT} from {previous} to {name}" if previous else f"pointed {root / CURRENT} to it"
    if stats is None:
        message = f"{name} was already unpacked with the same content; {switched}."
    else:
        shared = f", {_mb(stats.linked_bytes)} hard-linked from {previous}" if previous else ""
        message = f"Deployed {name} and {switched} ({stats.files:,} files: {_mb(stats.written_bytes)} written{shared})."
    if pruned:
        message += f" Removed {', '.join(pruned)}."
    return DeployResult(name, final, previous, True, stats.files if stats else 0, stats.written_bytes if stats else 0,
                        stats.linked_bytes if stats else 0, pruned, message)


# -- rollback and prune ---------------------------------------------------------------------


@dataclass(frozen=True)
class SwitchResult:
    previous: str
    current: str
    message: str


def _find(root: Path, to: str) -> str:
    names = sorted(e.name for e in os.scandir(root / RELEASES) if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
    if to in names:
        return to
    found = []
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            if str(manifest.read_metadata(root / RELEASES / name).get("version")) == to:
                found.append(name)
    if len(found) == 1:
        return found[0]
    if found:
        raise UsageError(f"Several releases have version {to}: {listing(found)}; name one with --to NAME-VERSION.")
    raise DeployError(f"There is no release {to} under {root / RELEASES}; there are: {listing(names) or 'none'}.")


def rollback(root: Path, *, to: str | None = None, wait: float = 0.0) -> SwitchResult:
    """Switch ``current`` back to the release before it (by history), or to ``to``."""
    root = _existing_root(root)
    with _lock.hold(root, wait=wait):
        clean_stale(root)
        current = current_release(root)
        if current is None:
            raise DeployError(f"{root / CURRENT} does not exist, so there is nothing to roll back from.")
        if to is not None:
            target = _find(root, to)
            if target == current:
                raise DeployError(f"{target} is already current in {root}; nothing changed.")
        else:
            found = rollback_target(root)
            if found is None:
                raise DeployError(f"There is no earlier release to roll back to from {current} in {root}.", hint="Deploy the version you want instead.")
            target = found
        switch(root, target)
        append_history(root, "rollback-to" if to is not None else "rollback", current, target)
    return SwitchResult(current, target, f"Switched {root / CURRENT} from {current} to {target}.")


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[str, ...]
    kept: tuple[str, ...]
    message: str


def _prune(root: Path, keep: int) -> tuple[str, ...]:
    ordered = releases(root)
    protected = {r.name for r in ordered if r.current or r.rollback}
    kept = {r.name for r in ordered[:keep]} | protected
    removed = []
    for r in ordered:
        if r.name in kept:
            continue
        # Renamed away first, so a crash never leaves a half-deleted release in releases/.
        trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=root))
        os.rename(r.path, trash / r.name)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(r.name)
    return tuple(removed)


def prune(root: Path, *, keep: int, wait: float = 0.0) -> PruneResult:
    """Remove all but the ``keep`` most recently current releases, never current nor the rollback target."""
    if keep < 1:
        raise UsageError(f"--keep {keep}: keep at least 1 release (the current one).")
    root = _existing_root(root)
    with _lock.hold(root, wait=wait):
        clean_stale(root)
        removed = _prune(root, keep)
    kept = tuple(r.name for r in releases(root))
    if removed:
        message = f"Removed {', '.join(removed)} from {root / RELEASES}; kept {', '.join(kept)}."
    else:
        message = f"Nothing to prune in {root / RELEASES}: kept {', '.join(kept) or 'nothing'}."
    return PruneResult(tuple(removed), kept, message)
