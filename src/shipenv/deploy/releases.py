"""Deploy: a bundle archive becomes ``ROOT/releases/NAME-VERSION`` and ``current`` points to it.

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

The stage, in order: the root's trust policy checks the archive
(:mod:`shipenv.deploy.trust`); the root is opened and locked
(:func:`shipenv.deploy.lock.locked`); the archive's manifest is read and the
host checked against it (its arch, and its glibc, or for a ``--libc bundled``
bundle the kernel: :func:`check_host`, exit status 4 as in ``deploy.sh``);
the archive is unpacked into a temporary directory beside ``releases/`` (on
the same file system, so the final ``rename`` is atomic), every file checked
against RECORD as it streams (:mod:`shipenv.deploy.extract`); ``--check`` runs
in the new release; it is renamed into ``releases/`` and ``current`` replaced
with ``rename(2)`` over a symlink made at a temporary name, and the switch is
appended to ``history.jsonl``. Until that last rename, ``current`` and every
release are exactly as they were; a crash (even ``SIGKILL``) leaves at most a
temporary directory, which the next run removes under the lock.

Listing, rollback and prune are :mod:`shipenv.deploy.rollback`; this module
re-exports them, so ``shipenv.deploy.releases`` is the deploy side's one API
for the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import itertools
import os
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shipenv.bundle import manifest
from shipenv.bundle.manifest import Manifest, RecordEntry
from shipenv.deploy import extract as _extract
from shipenv.deploy import fs
from shipenv.deploy import trust as _trust
from shipenv.deploy.layout import (
    CURRENT,
    HISTORY,
    RELEASES,
    TMP_PREFIX,
    EarlyWriteback,
    HistoryEntry,
    Root,
    append_history,
    current_release,
    release_version,
    rollback_stack,
    switch,
    syncfs,
)
from shipenv.deploy.lock import locked
from shipenv.deploy.rollback import (
    KEEP_HINT,
    PruneResult,
    Release,
    SwitchResult,
    history,
    prune,
    prune_locked,
    releases,
    rollback,
)
from shipenv.errors import DeployError, FilesystemError, HostError, UsageError

#: What the CLI and tests use of the deploy side: this module's and the other commands' (rollback.py).
__all__ = [
    "CURRENT", "HISTORY", "RELEASES", "DeployResult", "HistoryEntry", "HostFacts", "PruneResult", "Release",
    "SwitchResult", "check_host", "deploy", "history", "prune", "releases", "rollback", "rollback_stack",
]

Step = Callable[[str], None]
Progress = Callable[[int, int], None]


# -- the host -------------------------------------------------------------------
#
# Nothing from the bundle runs for this: the kernel says the architecture, the C
# library its version (``SHIPENV_HOST_GLIBC`` overrides it where detection fails).

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


# -- deploy ---------------------------------------------------------------------


def _mb(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


_ARCHIVE_HINT = "Give the archive shipenv build wrote (NAME-VERSION.tar.zst, .tar.gz or .tar.xz); an unpacked tree is not deployed."


def _check_space(root: Root, fd: int, name: str, needed: int, state: str) -> None:
    """Before the first byte: RECORD's total (what is not hard-linked) against the free space (statvfs)."""
    st = os.statvfs(fd)
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise FilesystemError(
            f"The disk holding {root.path} has {_mb(free)} free but {name} needs about {_mb(needed)}; {state}.",
            hint=f"Free some space, for example with 'shipenv prune --root {root.path} --keep 2', then deploy again.",
        )


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
    shared_files: int = 0  #: hard-linked (or, symlinks, made from RECORD) without decompressing their frames
    skipped_frames: int = 0


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
        raise UsageError(f"--keep {keep}: keep at least 1 release (the current one).", hint=KEEP_HINT)
    if archive.is_dir():
        raise UsageError(f"{archive} is a directory, not a bundle archive.", hint=_ARCHIVE_HINT)
    if not archive.is_file():
        raise UsageError(f"{archive} is not a file.", hint=_ARCHIVE_HINT)
    shown = Path(os.path.abspath(root))
    verified = _trust.check_archive(shown, archive, say)  # first: a refused archive leaves the root as it was
    with locked(shown, wait=wait, deploying=True) as (opened, state):
        previous = current_release(opened)
        try:
            result = _deploy_locked(opened, archive, previous, check, host, say, progress, state, verified)
            pruned = prune_locked(opened, keep) if keep is not None and result.changed else ()
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
                _check_space(root, tmp_fd, name, _extract.space_needed(head, share_record), state)
                say(f"Unpacking {name} ({_mb(head.size)}) and checking every file against its RECORD")
                writeback = EarlyWriteback(tmp_fd)

                def unpacked(files: int, nbytes: int) -> None:
                    writeback.written(nbytes)
                    if progress is not None:
                        progress(files, nbytes)

                try:
                    try:
                        stats = reader.extract(Path(fs.fd_path(tmp_fd)) / name, share=share, share_record=share_record, progress=unpacked)
                    finally:
                        writeback.join()
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
    if stats.shared_files:
        shared += f"; {stats.shared_files:,} files hard-linked without unpacking"
    message = f"Deployed {name} and {switched} ({stats.files:,} files: {_mb(stats.written_bytes)} written{shared})."
    return DeployResult(name, final, previous, True, stats.files, stats.written_bytes, stats.linked_bytes, (), message,
                        stats.shared_files, stats.skipped_frames)
