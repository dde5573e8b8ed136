"""Releases on a server: deploy, switch atomically, roll back, prune.

One application root holds every release side by side and a symlink to the
one that runs, so a systemd unit says ``ExecStart=/srv/app/current/bin/app``::

    /srv/app/releases/app-1.0.0/      unpacked, verified bundles
    /srv/app/releases/app-2.0.0/
    /srv/app/current -> releases/app-2.0.0
    /srv/app/history.jsonl            one JSON line per switch of current
    /srv/app/.shipenv.lock            one deploy/rollback/prune at a time

Everything in the root is reached through directory descriptors opened once
(:mod:`shipenv.deploy.layout`, :mod:`shipenv.deploy.fs`): a deploy run as root
in a root the service user owns never follows a link that user planted.

A deploy unpacks into a temporary directory beside ``releases/`` (which must be
on the same file system, so the final ``rename`` is atomic), checks every file against the
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
import dataclasses
import errno
import hashlib
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shipenv.bundle import manifest
from shipenv.bundle.manifest import RecordEntry
from shipenv.deploy import extract as _extract
from shipenv.deploy import fs
from shipenv.deploy import lock as _lock
from shipenv.deploy import trust as _trust
from shipenv.deploy.host import HostFacts, check_host
from shipenv.deploy.layout import (
    CURRENT,
    HISTORY,
    RELEASES,
    TMP_PREFIX,
    TRASH_PREFIX,
    HistoryEntry,
    Root,
    append_history,
    check_history,
    clean_stale,
    current_release,
    open_root,
    read_history,
    release_names,
    release_version,
    rollback_stack,
    rollback_target,
    switch,
    syncfs,
)
from shipenv.errors import DeployError, FilesystemError, UsageError, listing

T = TypeVar("T")

__all__ = [
    "CURRENT", "HISTORY", "RELEASES", "DeployResult", "HistoryEntry", "HostFacts", "PruneResult", "Release",
    "SwitchResult", "check_host", "deploy", "history", "prune", "releases", "rollback", "rollback_stack",
]

Step = Callable[[str], None]
Progress = Callable[[int, int], None]

def _mb(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def _no_releases(shown: Path) -> DeployError:
    return DeployError(f"{shown} holds no releases (no {shown / RELEASES}).", hint=f"Deploy one first: shipenv deploy ARCHIVE --root {shown}")


@contextlib.contextmanager
def _locked(path: Path, *, wait: float, deploying: bool = False) -> Iterator[tuple[Root, str]]:
    """The opened root, locked, its leftovers removed, and what stays true if the command stops now.

    deploy.sh checks in the same order (who owns the root, ``releases/``,
    ``current``, the lock), so both refuse a root with the same sentence.
    """
    shown = Path(os.path.abspath(path))
    prefix = "nothing was deployed and " if deploying else ""
    state = f"{prefix}{shown / CURRENT} was not created" if deploying else "nothing was changed"
    with contextlib.ExitStack() as stack:
        try:
            root = stack.enter_context(open_root(shown, create=deploying))
            if root.releases_fd < 0:
                raise _no_releases(shown)
            current = current_release(root)
            state = f"{prefix}{shown / CURRENT} " + (f"still points to {current}" if current else "was not created")
            if deploying and os.fstat(root.releases_fd).st_dev != os.fstat(root.fd).st_dev:
                # A release moves in with one atomic rename, never a copy across file systems.
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(shown / RELEASES))
            stack.enter_context(_lock.hold(shown, wait=wait, dir_fd=root.fd, check=lambda st: root.check_owner(st, _lock.LOCK_NAME)))
            check_history(root)  # before anything changes, not when the switch is already made
            clean_stale(root)
        except FileNotFoundError as exc:
            raise (fs.os_error(exc, str(shown), state) if deploying else _no_releases(shown)) from None
        except OSError as exc:
            raise fs.os_error(exc, str(shown), state) from None
        yield root, state


# -- releases -------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    name: str
    path: Path
    current: bool
    rollback: bool  #: where ``shipenv rollback`` would go
    deployed_at: str | None  #: the last time it became current
    signer: str | None = None  #: who signed it (principals), when a trust policy verified its deploy
    key: str | None = None  #: that signer's key fingerprint

    def as_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), path=str(self.path))


def _releases(root: Root) -> list[Release]:
    history = read_history(root)
    current = current_release(root)
    target = rollback_target(root, history)
    last: dict[str, tuple[int, str]] = {}
    for i, entry in enumerate(history):
        last[entry.to] = (i, entry.time)
    signed = {e.to: e for e in history if e.key}  # the last verified signature of each release
    names = release_names(root)
    names.sort(key=lambda n: (last.get(n, (-1, ""))[0], n), reverse=True)
    base = root.path / RELEASES
    return [Release(n, base / n, n == current, n == target, last[n][1] if n in last else None,
                    signed[n].signer if n in signed else None, signed[n].key if n in signed else None) for n in names]


def _read_root(root: Path, read: Callable[[Root], list[T]]) -> list[T]:
    """``read`` of the opened root, read-only: nothing when there is no root yet, an OS error as a sentence."""
    shown = Path(os.path.abspath(root))
    try:
        with open_root(shown) as opened:
            return read(opened)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise fs.os_error(exc, str(shown), "nothing was changed") from None


def history(root: Path) -> list[HistoryEntry]:
    """The well-formed lines of ``ROOT/history.jsonl`` (none when there is no root yet)."""
    return _read_root(root, read_history)


def releases(root: Path) -> list[Release]:
    """Every release under ``root`` (see :mod:`shipenv.deploy.layout`), the most recently current first."""
    return _read_root(root, _releases)


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
        fd = os.open(release / manifest.RECORD, os.O_RDONLY | fs.FILE_FLAGS)
        with fs.closing_fd(fd):
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, {}
            data = fs.read_all(fd, 1 << 30)
        return hashlib.sha256(data).hexdigest(), manifest.parse_record(data)
    except (OSError, ValueError, UnicodeDecodeError):
        return None, {}


def _run_check(check: str, release_fd: int, name: str, state: str) -> None:
    # The check runs as root: in the directory we unpacked (by descriptor), never in one
    # that the root's owner could have renamed into its place meanwhile.
    proc = subprocess.run(["sh", "-c", check], cwd=fs.fd_path(release_fd), pass_fds=(release_fd,),
                          capture_output=True, text=True, errors="replace", check=False)
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
    shown = Path(os.path.abspath(root))
    verified = _trust.check_archive(shown, archive, say)  # first: a refused archive leaves the root as it was
    with _locked(shown, wait=wait, deploying=True) as (opened, state):
        previous = current_release(opened)
        try:
            result = _deploy_locked(opened, archive, previous, check, host, say, progress, state, verified)
            pruned = _prune(opened, keep) if keep is not None and result.changed else ()
        except OSError as exc:
            raise fs.os_error(exc, str(shown), state) from None
    if pruned:
        result = dataclasses.replace(result, pruned=pruned, message=result.message + f" Removed {', '.join(pruned)}.")
    return result


def _deploy_locked(root: Root, archive: Path, previous: str | None, check: str | None, host: HostFacts,
                   say: Step, progress: Progress | None, state: str, verified: _trust.Verified | None = None) -> DeployResult:
    releases_dir = Path(fs.fd_path(root.releases_fd))
    tmp: str | None = None
    tmp_fd = -1
    stats: _extract.Stats | None = None
    _trust.check_unchanged(root, archive, verified)
    try:
        with _extract.open_bundle(archive) as reader:
            head = reader.head
            name = head.top
            say(f"Checking {name} against this host")
            check_host(head.manifest, host, name)
            final = root.path / RELEASES / name
            if fs.lstat_at(root.releases_fd, name) is not None:
                digest = _record_of(releases_dir / name)[0] if release_version(root, name) else None
                if digest != head.record_sha256:
                    raise DeployError(
                        f"{final} already exists with different content than {archive.name}; a version is deployed only once.",
                        hint="Give the new build its own version (shipenv build --version), or remove the old release if it is not current.",
                    )
                if previous == name:
                    return DeployResult(name, final, previous, False, message=f"{name} is already deployed with the same content and is current in {root.path}; nothing changed.")
            else:
                share = releases_dir / previous if previous and release_version(root, previous) else None
                share_record = _record_of(share)[1] if share is not None else {}
                tmp, tmp_fd = fs.make_temp_dir(root.fd, TMP_PREFIX)
                say(f"Unpacking {name} ({_mb(head.size)}) and checking every file against its RECORD")
                try:
                    stats = reader.extract(Path(fs.fd_path(tmp_fd)) / name, share=share, share_record=share_record, progress=progress)
                    syncfs(tmp_fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    free = os.statvfs(root.fd)
                    raise FilesystemError(
                        f"The disk holding {root.path} is full; {state}.",
                        hint=f"{name} needs about {_mb(head.size)} and {_mb(free.f_bavail * free.f_frsize)} is free there: free some space, "
                        f"for example with 'shipenv prune --root {root.path} --keep 2', then deploy again.",
                    ) from None
        if check:
            with fs.closing_fd(fs.open_dir_at(root.releases_fd if tmp_fd < 0 else tmp_fd, name, str(final))) as rel_fd:
                say(f"Running the check: {check}")
                _run_check(check, rel_fd, name, state.replace("nothing was deployed and ", ""))
        _trust.still_verified(archive, verified)  # the bytes unpacked are the bytes that were signed
        if tmp is not None:
            if fs.lstat_at(root.releases_fd, name) is not None:
                raise DeployError(f"{final} appeared while {name} was unpacked; {state}.", hint="Check who made it, remove it, then deploy again.")
            os.rename(name, name, src_dir_fd=tmp_fd, dst_dir_fd=root.releases_fd)
            os.fsync(root.releases_fd)
        say(f"Switching {root.path / CURRENT} to {name}")
        switch(root, name)
        append_history(root, "deploy", previous, name, **(verified.fields() if verified else {}))
    finally:
        if tmp_fd >= 0:
            os.close(tmp_fd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                fs.remove_tree_at(root.fd, tmp)
    switched = f"switched {root.path / CURRENT} from {previous} to {name}" if previous else f"pointed {root.path / CURRENT} to it"
    if stats is None:
        return DeployResult(name, final, previous, True, message=f"{name} was already unpacked with the same content; {switched}.")
    shared = f", {_mb(stats.linked_bytes)} hard-linked from {previous}" if previous else ""
    message = f"Deployed {name} and {switched} ({stats.files:,} files: {_mb(stats.written_bytes)} written{shared})."
    return DeployResult(name, final, previous, True, stats.files, stats.written_bytes, stats.linked_bytes, (), message)


# -- rollback and prune ---------------------------------------------------------------------


@dataclass(frozen=True)
class SwitchResult:
    previous: str
    current: str
    message: str


def _find(root: Root, to: str) -> str:
    names = release_names(root)
    if to in names:
        return to
    found = [n for n in names if release_version(root, n) == to]
    if len(found) == 1:
        return found[0]
    if found:
        raise UsageError(f"Several releases have version {to}: {listing(found)}; name one with --to NAME-VERSION.")
    raise DeployError(f"There is no release {to} under {root.path / RELEASES}; there are: {listing(names) or 'none'}.")


def rollback(root: Path, *, to: str | None = None, wait: float = 0.0) -> SwitchResult:
    """Switch ``current`` back to the release before it (by history), or to ``to``."""
    if to is not None and not to:
        raise UsageError("--to needs a version or a NAME-VERSION.")
    shown = Path(os.path.abspath(root))
    with _locked(shown, wait=wait) as (opened, state):
        current = current_release(opened)
        if current is None:
            raise DeployError(f"{shown / CURRENT} does not exist, so there is nothing to roll back from.")
        if to is not None:
            target = _find(opened, to)
            if target == current:
                raise DeployError(f"{target} is already current in {shown}; nothing changed.")
        else:
            found = rollback_target(opened)
            if found is None:
                raise DeployError(f"There is no earlier release to roll back to from {current} in {shown}.", hint="Deploy the version you want instead.")
            target = found
        signed = _trust.check_rollback(opened, target, current)  # only to what the current policy allows
        try:
            switch(opened, target)
            append_history(opened, "rollback-to" if to is not None else "rollback", current, target, **signed)
        except OSError as exc:
            raise fs.os_error(exc, str(shown), state) from None
    return SwitchResult(current, target, f"Switched {shown / CURRENT} from {current} to {target}.")


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[str, ...]
    kept: tuple[str, ...]
    message: str


def _prune(root: Root, keep: int) -> tuple[str, ...]:
    ordered = _releases(root)
    protected = {r.name for r in ordered if r.current or r.rollback}
    kept = {r.name for r in ordered[:keep]} | protected
    removed = []
    for r in ordered:
        if r.name in kept:
            continue
        # Renamed away first (within releases/, so never across file systems), so a crash
        # never leaves a half-deleted release in releases/; the next run removes the trash.
        trash = f"{TRASH_PREFIX}{os.getpid()}-{r.name}"
        os.rename(r.name, trash, src_dir_fd=root.releases_fd, dst_dir_fd=root.releases_fd)
        fs.remove_tree_at(root.releases_fd, trash)
        removed.append(r.name)
    return tuple(removed)


def prune(root: Path, *, keep: int, wait: float = 0.0) -> PruneResult:
    """Remove all but the ``keep`` most recently current releases, never current nor the rollback target."""
    if keep < 1:
        raise UsageError(f"--keep {keep}: keep at least 1 release (the current one).")
    shown = Path(os.path.abspath(root))
    with _locked(shown, wait=wait) as (opened, state):
        try:
            removed = _prune(opened, keep)
        except OSError as exc:
            raise fs.os_error(exc, str(shown), state) from None
        kept = tuple(r.name for r in _releases(opened))
    if removed:
        message = f"Removed {', '.join(removed)} from {shown / RELEASES}; kept {', '.join(kept)}."
    else:
        message = f"Nothing to prune in {shown / RELEASES}: kept {', '.join(kept) or 'nothing'}."
    return PruneResult(tuple(removed), kept, message)
