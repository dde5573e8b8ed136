"""The application root on disk: who may own it, ``current``, the history, what a release is.

Shared by every command of :mod:`shipenv.deploy.releases` and kept in step with
``templates/deploy.sh``, so both tools can take turns on one root: the same
``current -> releases/NAME-VERSION`` symlink, switched with one ``rename``;
the same ``history.jsonl`` lines (``json.dumps(sort_keys=True)`` of
``action``, ``from``, ``time``, ``to``); the same leftover names.

**Who may own what.** The root (``/srv/app``) and its ``releases/`` may belong
to root or to one service user, the root's owner; its control files
(``.shipenv.lock``, ``history.jsonl``, ``current``) to either of them. When
shipenv runs as root it also refuses a root or ``releases/`` that group or
others can write, and a root whose parent directories anyone but root can
change (a sticky, world-writable ``/tmp`` is fine). The root's owner can
always rearrange its own root; what it can never do is make a deploy, rollback,
prune or listing run as root open, write or remove anything outside the root:
every name in the root is looked up in a directory shipenv opened, without
following symlinks (:mod:`shipenv.deploy.fs`).

**What a release is.** A directory directly under ``releases/`` (not a
symlink) whose name is a plain ``NAME-VERSION`` and which holds a regular
``.shipenv/manifest.json`` naming that very ``NAME-VERSION``. Listing,
rollback (``--to``) and prune see nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shipenv.bundle.reader import valid_release_name
from shipenv.deploy import fs
from shipenv.errors import DeployError, RootError, UsageError, listing

RELEASES = "releases"
CURRENT = "current"
HISTORY = "history.jsonl"
#: Names of leftovers of an interrupted run, removed by the next one under the lock.
TMP_PREFIX, TRASH_PREFIX, LINK_PREFIX = ".deploy-", ".prune-", ".current.new."
_MANIFEST_LIMIT = 1 << 20
_HISTORY_LIMIT = 64 << 20


@dataclass(frozen=True)
class HistoryEntry:
    time: str
    action: str  #: "deploy", "rollback", "rollback-to"
    from_: str | None
    to: str
    signer: str | None = None  #: principals of the allowed signer whose signature was verified (deploy.trust)
    key: str | None = None  #: that key's SHA256 fingerprint


@dataclass(frozen=True)
class Root:
    """An application root opened once: every later lookup goes through these descriptors."""

    path: Path  #: absolute, as the user named it (for messages)
    fd: int
    releases_fd: int  #: -1 while ``releases/`` does not exist
    owner: int  #: uid of the root directory

    def shown(self, name: str) -> str:
        return f"{self.path}/{name}"

    def check_owner(self, st: os.stat_result, name: str, *, dir_: bool = False) -> None:
        """As root: ``name`` must belong to root or the root's owner, and (a directory) be theirs alone to write."""
        if os.geteuid() != 0:
            return
        if st.st_uid not in (0, self.owner):
            raise RootError(
                f"{self.shown(name)} belongs to uid {st.st_uid}, neither root nor the owner of {self.path} (uid {self.owner}); nothing was changed.",
                hint=f"chown it to root or to uid {self.owner}, then try again.",
            )
        if dir_ and st.st_mode & 0o022:
            raise _writable(self.shown(name), st.st_mode)


def _writable(shown: str, mode: int) -> RootError:
    return RootError(
        f"{shown} is writable by group or others (mode {stat.S_IMODE(mode):04o}), so anyone could change what runs from it; nothing was changed.",
        hint=f"chmod go-w {shown} (it may belong to the service user, but only it may write there), then try again.",
    )


def _check_parents(path: Path) -> None:
    """As root: only root may be able to change the directories that lead to the root."""
    seen: set[str] = set()
    for start in (path, Path(os.path.realpath(path))):
        for parent in start.parents:
            key = str(parent)
            if key in seen:
                continue
            seen.add(key)
            st = os.stat(parent)
            sticky = st.st_mode & stat.S_ISVTX
            who = f"uid {st.st_uid}" if st.st_uid != 0 else "group or others" if st.st_mode & 0o022 and not sticky else ""
            if who:
                raise RootError(
                    f"{parent}, a parent directory of {path}, can be changed by {who}, so the way to the root cannot be trusted; nothing was changed.",
                    hint="Deploy as root only below directories that belong to root and that only root can write (such as /srv), or deploy as the root's owner.",
                )


@contextlib.contextmanager
def open_root(path: Path, *, create: bool = False) -> Iterator[Root]:
    """Open the root at ``path`` (made with ``releases/`` when ``create``) and check who owns it.

    Raises :class:`FileNotFoundError` when it does not exist and ``create`` is
    false; the callers say what that means for them.
    """
    path = Path(os.path.abspath(path))
    if create:
        try:
            os.makedirs(path, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise DeployError(f"{path} is not a directory.", hint="Name a directory as the root (it is created if missing).") from None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    releases_fd = -1
    try:
        st = os.fstat(fd)
        if os.geteuid() == 0:
            if st.st_mode & 0o022:
                raise _writable(str(path), st.st_mode)
            _check_parents(path)
        root = Root(path, fd, -1, st.st_uid)
        rst = fs.lstat_at(fd, RELEASES)
        if rst is None and create:
            with contextlib.suppress(FileExistsError):  # another deploy into the new root made it first
                os.mkdir(RELEASES, 0o755, dir_fd=fd)
            rst = fs.lstat_at(fd, RELEASES)
        if rst is not None:
            releases_fd = fs.open_dir_at(fd, RELEASES, root.shown(RELEASES))
            rst = os.fstat(releases_fd)
            root.check_owner(rst, RELEASES, dir_=True)
        yield Root(path, fd, releases_fd, st.st_uid)
    finally:
        if releases_fd >= 0:
            os.close(releases_fd)
        os.close(fd)


# -- releases ---------------------------------------------------------------------------


def release_version(root: Root, name: str) -> str | None:
    """The version a release's manifest gives, or None when ``releases/NAME`` is not a release."""
    if root.releases_fd < 0 or not valid_release_name(name):
        return None
    try:
        with fs.closing_fd(os.open(name, fs.DIR_FLAGS, dir_fd=root.releases_fd)) as rel, \
                fs.closing_fd(os.open(".shipenv", fs.DIR_FLAGS, dir_fd=rel)) as meta:
            st = fs.lstat_at(meta, "manifest.json")
            if st is None or not stat.S_ISREG(st.st_mode):
                return None
            with fs.closing_fd(os.open("manifest.json", os.O_RDONLY | fs.FILE_FLAGS, dir_fd=meta)) as f:
                data = json.loads(fs.read_all(f, _MANIFEST_LIMIT))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or f"{data.get('name')}-{data.get('version')}" != name:
        return None
    return str(data["version"])


def release_names(root: Root) -> list[str]:
    """Every release under ``releases/`` (see the module docstring), sorted by name."""
    if root.releases_fd < 0:
        return []
    with os.scandir(root.releases_fd) as entries:
        names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    return [n for n in names if release_version(root, n) is not None]


def find_release(root: Root, wanted: str, *, flag: str = "--to") -> str:
    """The release ``wanted`` names (``NAME-VERSION``, or a version only one release has), as ``flag`` asked.

    The one lookup behind ``rollback --to`` and ``modulefile --release``, over
    :func:`release_names`, so neither offers what listing and prune do not see.
    """
    names = release_names(root)
    if wanted in names:
        return wanted
    found = [n for n in names if release_version(root, n) == wanted]
    if len(found) == 1:
        return found[0]
    if found:
        raise UsageError(f"Several releases have version {wanted}: {listing(found)}; name one with {flag} NAME-VERSION.")
    raise DeployError(f"There is no release {wanted} under {root.shown(RELEASES)}; there are: {listing(names) or 'none'}.")


def current_release(root: Root) -> str | None:
    """Name of the release ``ROOT/current`` points to, or None when there is none yet."""
    try:
        target = os.readlink(CURRENT, dir_fd=root.fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        st = fs.lstat_at(root.fd, CURRENT)
        raise fs.not_made(root.shown(CURRENT), "symlink", fs.kind(st.st_mode) if st else "gone") from None
    prefix, _, name = target.rstrip("/").partition("/")
    if prefix != RELEASES or not valid_release_name(name):
        raise RootError(
            f"{root.shown(CURRENT)} points to {target}, not to a release in {root.shown(RELEASES)}; nothing was changed.",
            hint=f"Point it at a release (ln -sfn releases/NAME-VERSION {root.shown(CURRENT)}) or remove it, then try again.",
        )
    return name


def switch(root: Root, name: str) -> None:
    """Point ``current`` at ``releases/NAME`` with one rename: never absent, never half-made."""
    tmp = f"{LINK_PREFIX}{os.getpid()}"
    fs.remove_tree_at(root.fd, tmp)
    os.symlink(f"{RELEASES}/{name}", tmp, dir_fd=root.fd)
    os.replace(tmp, CURRENT, src_dir_fd=root.fd, dst_dir_fd=root.fd)
    os.fsync(root.fd)


def clean_stale(root: Root) -> None:
    """Remove what a killed run left: temporary directories and links in the root, trash in ``releases/``."""
    for fd, prefixes in ((root.fd, (TMP_PREFIX, TRASH_PREFIX, LINK_PREFIX)), (root.releases_fd, (TRASH_PREFIX,))):
        if fd < 0:
            continue
        with os.scandir(fd) as entries:
            stale = [e.name for e in entries if e.name.startswith(prefixes)]
        for name in stale:
            fs.remove_tree_at(fd, name)


def syncfs(fd: int) -> None:
    """Flush the file system holding ``fd`` (all files of a release, in one call)."""
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()


class EarlyWriteback:
    """Starts the writeback of a release while it is still being unpacked, so the final :func:`syncfs` has little left.

    The kernel starts writing dirty pages on its own only above a share of
    memory (10 % by default, gigabytes on a server), so without this the whole
    release waits in memory for the final ``syncfs``. :meth:`written` is told
    the bytes unpacked so far; each time another :data:`STEP` has come, a
    thread of its own runs one ``syncfs`` of ``fd`` (one at a time; none is
    started while the last is running). It only moves work earlier: what makes
    the release durable is still the final :func:`syncfs` before the rename.
    """

    STEP = 64 << 20

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._next = self.STEP
        self._thread: threading.Thread | None = None

    def written(self, nbytes: int) -> None:
        if nbytes < self._next or (self._thread is not None and self._thread.is_alive()):
            return
        self._next = nbytes + self.STEP
        self._thread = threading.Thread(target=syncfs, args=(self._fd,), name="shipenv-writeback", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for a writeback still running (before ``fd`` is closed)."""
        if self._thread is not None:
            self._thread.join()


# -- history ----------------------------------------------------------------------------------


def read_history(root: Root) -> list[HistoryEntry]:
    """Every well-formed line of the history; a line torn by a crash is skipped."""
    if fs.lstat_at(root.fd, HISTORY) is None:
        return []
    with fs.closing_fd(fs.open_file_at(root.fd, HISTORY, root.shown(HISTORY), os.O_RDONLY)) as fd:
        root.check_owner(os.fstat(fd), HISTORY)
        text = fs.read_all(fd, _HISTORY_LIMIT).decode(errors="replace")
    entries = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("to"), str) and isinstance(data.get("action"), str):
            frm, signer, key = data.get("from"), data.get("signer"), data.get("key")
            entries.append(HistoryEntry(str(data.get("time", "")), data["action"], frm if isinstance(frm, str) else None, data["to"],
                                        signer if isinstance(signer, str) else None, key if isinstance(key, str) else None))
    return entries


def check_history(root: Root) -> None:
    """Refuse a history file that is not what shipenv makes (see :func:`shipenv.deploy.fs.open_file_at`)."""
    if fs.lstat_at(root.fd, HISTORY) is not None:
        with fs.closing_fd(fs.open_file_at(root.fd, HISTORY, root.shown(HISTORY), os.O_RDONLY)) as fd:
            root.check_owner(os.fstat(fd), HISTORY)


def append_history(root: Root, action: str, frm: str | None, to: str, *, signer: str | None = None, key: str | None = None) -> None:
    entry: dict[str, str | None] = {"action": action, "from": frm, "to": to}
    if key is not None:  # who signed what became current (deploy.trust); deploy.sh writes the same keys
        entry.update(key=key, signer=signer)
    append_record(root, entry)


def append_record(root: Root, entry: dict[str, str | None]) -> None:
    """Append one JSON line (``time`` added) to the history, durably."""
    entry = dict(entry, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    line = json.dumps(entry, sort_keys=True) + "\n"
    with fs.closing_fd(fs.open_file_at(root.fd, HISTORY, root.shown(HISTORY), os.O_RDWR | os.O_APPEND | os.O_CREAT)) as fd:
        root.check_owner(os.fstat(fd), HISTORY)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # a crash tore the last line: do not glue this one to it
        os.write(fd, line.encode())
        os.fsync(fd)


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


def rollback_target(root: Root, history: list[HistoryEntry] | None = None) -> str | None:
    current = current_release(root)
    stack = rollback_stack(read_history(root) if history is None else history, current)
    for name in reversed(stack[:-1]):
        if name != current and release_version(root, name) is not None:
            return name
    return None
