"""The releases of a root after they are deployed: listing, rollback, prune.

What is a release, where ``current`` points and where a rollback goes are
:mod:`shipenv.deploy.layout`'s (one definition, shared with ``deploy.sh``);
this module is the three commands over them. History, not mtimes, decides:
``history.jsonl`` replayed is a stack, a deploy pushes and a rollback pops the
release it leaves, so repeated rollbacks walk further back and never return to
a release rolled back from (``rollback --to`` can). A rollback goes only to
what the root's trust policy still allows (:mod:`shipenv.deploy.trust`).
Prune renames a release away inside ``releases/`` before removing it, so a
crash never leaves half a release where listing would see it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shipenv.deploy import fs
from shipenv.deploy import trust as _trust
from shipenv.deploy.layout import (
    CURRENT,
    RELEASES,
    TRASH_PREFIX,
    HistoryEntry,
    Root,
    append_history,
    current_release,
    find_release,
    open_root,
    read_history,
    release_names,
    rollback_target,
    switch,
)
from shipenv.deploy.lock import locked
from shipenv.errors import DeployError, UsageError

T = TypeVar("T")
KEEP_HINT = "--keep N keeps the N most recently current releases (1 or more), and always the current one and where rollback goes."


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




# -- rollback and prune ---------------------------------------------------------------------


@dataclass(frozen=True)
class SwitchResult:
    previous: str
    current: str
    message: str


def rollback(root: Path, *, to: str | None = None, wait: float = 0.0) -> SwitchResult:
    """Switch ``current`` back to the release before it (by history), or to ``to``."""
    if to is not None and not to:
        raise UsageError("--to needs a version or a NAME-VERSION.")
    shown = Path(os.path.abspath(root))
    with locked(shown, wait=wait) as (opened, state):
        current = current_release(opened)
        if current is None:
            raise DeployError(f"{shown / CURRENT} does not exist, so there is nothing to roll back from.")
        if to is not None:
            target = find_release(opened, to)
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


def prune_locked(root: Root, keep: int) -> tuple[str, ...]:
    """Under the lock (:func:`shipenv.deploy.lock.locked`): remove the releases ``prune`` would; OSErrors propagate."""
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
        raise UsageError(f"--keep {keep}: keep at least 1 release (the current one).", hint=KEEP_HINT)
    shown = Path(os.path.abspath(root))
    with locked(shown, wait=wait) as (opened, state):
        try:
            removed = prune_locked(opened, keep)
        except OSError as exc:
            raise fs.os_error(exc, str(shown), state) from None
        kept = tuple(r.name for r in _releases(opened))
    if removed:
        message = f"Removed {', '.join(removed)} from {shown / RELEASES}; kept {', '.join(kept)}."
    else:
        message = f"Nothing to prune in {shown / RELEASES}: kept {', '.join(kept) or 'nothing'}."
    return PruneResult(tuple(removed), kept, message)
