"""The application root on disk: the ``current`` symlink, the history, leftovers.

Shared by every command of :mod:`shipenv.deploy.releases` and mirrored line for line by
``templates/deploy.sh``, so both tools can take turns on one root: the same
``current -> releases/NAME-VERSION`` symlink, switched with one ``rename``;
the same ``history.jsonl`` lines (``json.dumps(sort_keys=True)`` of
``action``, ``from``, ``time``, ``to``); the same leftover names.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from shipenv.errors import DeployError

RELEASES = "releases"
CURRENT = "current"
HISTORY = "history.jsonl"
#: Names of leftovers of an interrupted run, removed by the next one under the lock.
TMP_PREFIX, TRASH_PREFIX, LINK_PREFIX = ".deploy-", ".prune-", ".current.new."


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


def append_history(root: Path, action: str, frm: str | None, to: str) -> None:
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush the file system holding ``path`` (all files of a release, in one call)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def switch(root: Path, name: str) -> None:
    """Point ``current`` at ``releases/NAME`` with one rename: never absent, never half-made."""
    tmp = root / f"{LINK_PREFIX}{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(f"{RELEASES}/{name}", tmp)
    os.replace(tmp, root / CURRENT)
    fsync_dir(root)


def clean_stale(root: Path) -> None:
    for entry in os.scandir(root):
        if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX, LINK_PREFIX)):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
