"""The root's trust policy: who may sign what gets deployed into it.

Trust lives in the root, not on the command line: once
``shipenv trust --root R --allowed-signers F`` has copied an OpenSSH
allowed_signers file to ``R/allowed_signers``, every deploy into ``R`` (by
``shipenv deploy`` and by the bundle's ``deploy.sh``) needs ``ARCHIVE.sig``
beside the archive, an SSHSIG over the archive's bytes in the namespace
``shipenv`` by a key that file allows now. An unsigned archive, a signature by
another key, over other bytes or for another namespace is refused before
anything in the root is written. No flag skips this; taking trust away is its
own command (``shipenv trust --root R --remove``), recorded in the history
like setting it::

    {"action": "trust", "allowed_signers": "<sha256 of the file>", "keys": "2", "time": "..."}
    {"action": "trust-remove", "time": "..."}

Each deploy's history line records the principals and key fingerprint that
signed it, and a rollback goes only to a release whose deploy was signed by a
key the current policy still allows (a release deployed before trust was set,
or by a key since removed, is refused with the reason).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shipenv.bundle import signers, sshsig
from shipenv.bundle.signers import AllowedSigner
from shipenv.deploy import fs
from shipenv.deploy import lock as _lock
from shipenv.deploy.layout import (
    CURRENT,
    TMP_PREFIX,
    HistoryEntry,
    Root,
    append_record,
    check_history,
    clean_stale,
    open_root,
    read_history,
)
from shipenv.errors import DeployError, SignatureError, UntrustedArchive

ALLOWED_SIGNERS = "allowed_signers"
_POLICY_LIMIT = 1 << 20


@dataclass(frozen=True)
class Verified:
    """Who signed an archive, as the history records it."""

    signer: str  #: the principals of the allowed_signers line
    key: str  #: SHA256 fingerprint
    identity: tuple[int, ...] = ()  #: (dev, inode, size, ctime) of the archive that was verified

    def fields(self) -> dict[str, str | None]:
        """What the history line records of it."""
        return {"signer": self.signer, "key": self.key}


@dataclass(frozen=True)
class TrustResult:
    signers: tuple[AllowedSigner, ...]
    message: str


def _identity(path: Path) -> tuple[int, ...]:
    """What changes when a file is written to, replaced or renamed (ctime cannot be set back)."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


def still_verified(archive: Path, verified: Verified | None) -> None:
    """Refuse the switch if the archive changed since its signature was checked (before the deploy wrote it)."""
    if verified is not None and _identity(archive) != verified.identity:
        raise UntrustedArchive(f"{archive} changed while it was being deployed, after its signature was checked; nothing was deployed.",
                             hint="Make sure nothing else writes the archive, then deploy again.")


def policy_at(root: Root) -> tuple[AllowedSigner, ...] | None:
    """The opened root's allowed signers, or None when it has no trust policy (read without following a link)."""
    if fs.lstat_at(root.fd, ALLOWED_SIGNERS) is None:
        return None
    with fs.closing_fd(fs.open_file_at(root.fd, ALLOWED_SIGNERS, root.shown(ALLOWED_SIGNERS), os.O_RDONLY)) as fd:
        root.check_owner(os.fstat(fd), ALLOWED_SIGNERS)
        data = fs.read_all(fd, _POLICY_LIMIT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError(f"{root.shown(ALLOWED_SIGNERS)} is not UTF-8 text.") from None
    return signers.parse(text, source=root.shown(ALLOWED_SIGNERS))


def policy(root: Path, *, unopenable: bool = False) -> tuple[AllowedSigner, ...] | None:
    """The allowed signers of the root at ``root``; None when it has none (or does not exist yet).

    With ``unopenable``, a root that cannot be opened at all also gives None: the
    deploy that asks opens it next and says why it cannot, and checks the policy
    again under its lock (:func:`check_unchanged`).
    """
    shown = Path(os.path.abspath(root))
    try:
        with open_root(shown) as opened:
            return policy_at(opened)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if unopenable:
            return None
        raise fs.os_error(exc, str(shown), "nothing was changed") from None


def signature_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".sig")


def check_archive(root: Path, archive: Path, say: Callable[[str], None] | None = None) -> Verified | None:
    """Refuse ``archive`` unless the root's policy allows its signature; None when the root has no policy."""
    allowed = policy(root, unopenable=True)
    if allowed is None:
        return None
    where = Path(os.path.abspath(root)) / ALLOWED_SIGNERS
    if not signature_path(archive).exists():
        raise UntrustedArchive(f"{root} accepts only signed archives ({where}), and there is no {signature_path(archive).name} beside {archive.name}; nothing was deployed.",
                             hint="Publish the .sig that 'shipenv build --sign-key' writes next to the archive.")
    identity = _identity(archive)
    try:
        line, key = signers.verify_archive(archive, allowed, source=str(where))
    except SignatureError as exc:
        raise UntrustedArchive(f"Refused {archive.name}: {exc.message[0].lower()}{exc.message[1:].rstrip('.')}; nothing was deployed.", hint=exc.hint) from None
    verified = Verified(line.principals, key.fingerprint, identity)
    still_verified(archive, verified)
    if say is not None:
        say(f"{archive.name} is signed by {verified.signer} ({verified.key}), whom {root} trusts")
    return verified


def check_unchanged(root: Root, archive: Path, verified: Verified | None) -> None:
    """Under the deploy's lock: a policy set since the archive was checked applies too."""
    if verified is None and policy_at(root) is not None:
        raise UntrustedArchive(f"{root.path} began to require signed archives while {archive.name} was being deployed; nothing was deployed.",
                               hint="Deploy it again: its signature is checked then.")


def rollback_refusal(root: Root, name: str, history: list[HistoryEntry]) -> str | None:
    """Why the current policy does not allow switching back to ``name`` (None: it does, or there is no policy)."""
    allowed = policy_at(root)
    if allowed is None:
        return None
    signed = next((e for e in reversed(history) if e.to == name and e.key), None)
    if signed is None:
        return f"{name} was deployed without a verified signature, and {root.path} now accepts only signed releases"
    listed = [s for s in allowed if s.key.fingerprint == signed.key]
    now = time.time()
    if not any(s.allows_namespace(sshsig.NAMESPACE) and s.valid_at(now) for s in listed):
        return f"{name} was signed by {signed.signer} ({signed.key}), whom {root.shown(ALLOWED_SIGNERS)} no longer allows"
    return None


def check_rollback(root: Root, name: str, current: str) -> dict[str, str | None]:
    """Refuse switching back to ``name`` unless the current policy allows who signed it; its history fields."""
    past = read_history(root)
    refusal = rollback_refusal(root, name, past)
    if refusal is not None:
        raise DeployError(f"Cannot roll back to {name}: {refusal}; {root.shown(CURRENT)} still points to {current}.",
                          hint="Deploy a signed archive of the version you want instead.")
    signed = next((e for e in reversed(past) if e.to == name and e.key), None)
    return {"signer": signed.signer, "key": signed.key} if signed else {}


def _change(root: Path, wait: float, create: bool, change: Callable[[Root], None]) -> None:
    shown = Path(os.path.abspath(root))
    try:
        with open_root(shown, create=create) as opened, \
                _lock.hold(shown, wait=wait, dir_fd=opened.fd, check=lambda st: opened.check_owner(st, _lock.LOCK_NAME)):
            check_history(opened)
            clean_stale(opened)
            change(opened)
    except FileNotFoundError:
        raise DeployError(f"{shown} does not exist, so it has no trust policy to remove.") from None
    except OSError as exc:
        raise fs.os_error(exc, str(shown), "the trust policy is as it was") from None


def set_policy(root: Path, source: Path, *, wait: float = 0.0) -> TrustResult:
    """Copy ``source`` (checked first) to ``ROOT/allowed_signers`` and record it in the history."""
    allowed = signers.read(source)
    data = source.read_bytes()

    def write(opened: Root) -> None:
        tmp = f"{TMP_PREFIX}trust-{os.getpid()}"
        fs.remove_tree_at(opened.fd, tmp)
        with fs.closing_fd(fs.open_file_at(opened.fd, tmp, opened.shown(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL)) as fd:
            os.fchmod(fd, 0o644)
            os.write(fd, data)
            os.fsync(fd)
        if (st := fs.lstat_at(opened.fd, ALLOWED_SIGNERS)) is not None and not stat.S_ISREG(st.st_mode):
            raise fs.not_made(opened.shown(ALLOWED_SIGNERS), "plain file", fs.kind(st.st_mode))
        os.replace(tmp, ALLOWED_SIGNERS, src_dir_fd=opened.fd, dst_dir_fd=opened.fd)
        os.fsync(opened.fd)
        append_record(opened, {"action": "trust", "allowed_signers": hashlib.sha256(data).hexdigest(), "keys": str(len(allowed))})

    _change(root, wait, True, write)
    shown = Path(os.path.abspath(root))
    who = ", ".join(sorted({s.principals for s in allowed}))
    return TrustResult(allowed, f"{shown} now deploys only archives signed by {len(allowed)} key(s) of {who} ({shown / ALLOWED_SIGNERS}).")


def remove_policy(root: Path, *, wait: float = 0.0) -> TrustResult:
    """Take the root's trust policy away, explicitly, and record that in the history."""
    shown = Path(os.path.abspath(root))

    def remove(opened: Root) -> None:
        if policy_at(opened) is None:
            raise DeployError(f"{shown} has no trust policy to remove (no {shown / ALLOWED_SIGNERS}).")
        os.unlink(ALLOWED_SIGNERS, dir_fd=opened.fd)
        os.fsync(opened.fd)
        append_record(opened, {"action": "trust-remove"})

    _change(root, wait, False, remove)
    return TrustResult((), f"Removed the trust policy of {shown}: unsigned archives can be deployed there again.")
