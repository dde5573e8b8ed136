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
bundle's RECORD as it streams (:mod:`shipenv._extract`), checks the host
before anything moves, runs ``--check`` in the new release, renames it into
``releases/`` and replaces ``current`` with ``rename(2)`` over a symlink made
at a temporary name. Until that last rename, ``current`` and every release are
exactly as they were; a crash (even ``SIGKILL``) leaves at most a temporary
directory, which the next run removes under the lock.

History, not mtimes, decides where a rollback goes: ``history.jsonl`` is
append-only, one line per switch (``{"action", "from", "time", "to"}``), and
the POSIX ``deploy.sh`` carried in every bundle writes the same lines. Replayed,
it is a stack: a deploy pushes, a rollback pops the release it leaves, so
repeated rollbacks walk further back and never return to a release rolled
back from (``rollback --to`` can).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipenv import _extract, _lock, manifest
from shipenv.errors import DeployError, HostError, UsageError, listing
from shipenv.manifest import RecordEntry

Step = Callable[[str], None]
Progress = Callable[[int, int], None]

RELEASES = "releases"
CURRENT = "current"
HISTORY = "history.jsonl"
#: Names of leftovers of an interrupted run, removed by the next one under the lock.
_STALE = (".deploy-", ".prune-", ".current.new.")
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


# -- the layout: current, history ---------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    time: str
    action: str  #: "deploy", "rollback", "rollback-to"
    from_: str | None
    to: str


def current_release(root: Path) -> str | None:
    """Name of the release ``ROOT/current`` points to, or None when there is none yet."""
    link = root / CURRENT
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError:
        raise DeployError(f"{link} is not a symlink; shipenv manages it as one.", hint="Move it away, then deploy again.") from None
    name = os.path.basename(target.rstrip("/"))
    if os.path.realpath(os.path.dirname(os.path.join(root, target.rstrip("/")))) != os.path.realpath(root / RELEASES):
        raise DeployError(f"{link} points to {target}, outside {root / RELEASES}.", hint="Point it at a release there (or remove it), then try again.")
    return name


def read_history(root: Path) -> list[HistoryEntry]:
    """Every well-formed line of the history; a line torn by a crash is skipped."""
    try:
        text = (root / HISTORY).read_text(errors="replace")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("to"), str) and isinstance(data.get("action"), str):
            frm = data.get("from")
            entries.append(HistoryEntry(str(data.get("time", "")), data["action"], frm if isinstance(frm, str) else None, data["to"]))
    return entries


def _append_history(root: Path, action: str, frm: str | None, to: str) -> None:
    entry = {"action": action, "from": frm, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "to": to}
    line = json.dumps(entry, sort_keys=True) + "\n"
    fd = os.open(root / HISTORY, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # a crash tore the last line: do not glue this one to it
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def rollback_stack(history: list[HistoryEntry], current: str | None) -> list[str]:
    """Replay the history: the releases a rollback would go through, the current one last."""
    stack: list[str] = []

    def to_top(name: str) -> None:
        if name in stack:
            stack.remove(name)
        stack.append(name)

    for entry in history:
        if entry.action.startswith("rollback"):
            if entry.from_ in stack:
                stack.remove(entry.from_)
        elif entry.from_ and entry.from_ not in stack:
            stack.append(entry.from_)
        to_top(entry.to)
    if current is not None and (not stack or stack[-1] != current):
        to_top(current)  # a crash between the switch and its history line
    return stack


def rollback_target(root: Path, history: list[HistoryEntry] | None = None) -> str | None:
    current = current_release(root)
    stack = rollback_stack(read_history(root) if history is None else history, current)
    for name in reversed(stack[:-1]):
        if name != current and (root / RELEASES / name).is_dir():
            return name
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: Path) -> None:
    """Flush the file system holding ``path`` (all files of a release, in one call)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def _switch(root: Path, name: str) -> None:
    """Point ``current`` at ``releases/NAME`` with one rename: never absent, never half-made."""
    tmp = root / f".current.new.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(f"{RELEASES}/{name}", tmp)
    os.replace(tmp, root / CURRENT)
    _fsync_dir(root)


def _clean_stale(root: Path) -> None:
    for entry in os.scandir(root):
        if entry.name.startswith(_STALE):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


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
        _clean_stale(root)
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
                    tmp = Path(tempfile.mkdtemp(prefix=_STALE[0], dir=root))
                    say(f"Unpacking {name} ({_mb(head.size)}) and checking every file against its RECORD")
                    stats = reader.extract(tmp / name, share=share, share_record=share_record, progress=progress)
            if tmp is not None:
                _syncfs(tmp)
            if check:
                say(f"Running the check: {check}")
                _run_check(check, tmp / name if tmp is not None else final, name, state)
            if tmp is not None:
                os.rename(tmp / name, final)
                _fsync_dir(final.parent)
            say(f"Switching {root / CURRENT} to {name}")
            _switch(root, name)
            _append_history(root, "deploy", previous, name)
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
        _clean_stale(root)
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
        _switch(root, target)
        _append_history(root, "rollback-to" if to is not None else "rollback", current, target)
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
        trash = Path(tempfile.mkdtemp(prefix=_STALE[1], dir=root))
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
        _clean_stale(root)
        removed = _prune(root, keep)
    kept = tuple(r.name for r in releases(root))
    if removed:
        message = f"Removed {', '.join(removed)} from {root / RELEASES}; kept {', '.join(kept)}."
    else:
        message = f"Nothing to prune in {root / RELEASES}: kept {', '.join(kept) or 'nothing'}."
    return PruneResult(tuple(removed), kept, message)
