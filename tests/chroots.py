"""Run commands inside the cached chroot roots that stand in for a server.

``ci/make-root.sh`` builds three roots once per machine (``ci/setup.sh`` calls
it): ``glibc`` (only the host's glibc, no shell: a distroless image),
``bookworm`` and ``bullseye`` (debootstrap minbase: a bare Debian 12 / 11
server with ``sh`` and ``tar``, no Python), ``busybox`` (a static busybox and
no libc at all) and ``musl`` (musl's libc plus a static busybox, as on
Alpine). Tests never write into them: each
run sees the cached root through an overlay whose upper layer lives in a
temporary directory, inside its own mount and PID namespaces, with ``/proc``
and a container-like ``/dev`` mounted, as a container runtime would.

    from tests.chroots import OverlayRoot, run_in_root

    done = run_in_root("glibc", ["/app/bin/python3", "-c", "import ssl"],
                       binds={bundle_dir: "/app"})
    assert done.returncode == 0, done.stderr

    with OverlayRoot("bookworm") as root:      # state persists between runs
        root.run(["tar", "-xf", "/in/app.tar", "-C", "/srv"], binds={tmp: "/in"})
        root.run(["/srv/app/bin/python", "-V"])

Everything that happens before the command starts (mounts, ``chroot``) is done
from the host side by this very file run as a script (``_helper_main``), so it
works in a root without a shell, and no path ever goes through a shell: paths
with spaces are fine. Needs root, ``unshare`` and overlayfs.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

Kind = Literal["glibc", "bookworm", "bullseye", "busybox", "musl"]
KINDS: tuple[Kind, ...] = ("glibc", "bookworm", "bullseye", "busybox", "musl")

StrPath = str | os.PathLike[str]
#: Host path -> path inside the root. Mapping keys are invariant, hence the
#: spelled-out variants: a ``dict[Path, str]`` is accepted as it is.
Binds = Mapping[str, StrPath] | Mapping[Path, StrPath] | Mapping[StrPath, StrPath]

#: The environment a command gets when the caller passes none: what a
#: container image's default ``PATH`` is, and nothing from the host.
DEFAULT_ENV: Mapping[str, str] = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
DEFAULT_TIMEOUT = 300.0

#: Exit status of a command that could not be executed inside the root (not
#: found, not executable, missing ELF interpreter), as shells and container
#: runtimes report it.
EXEC_FAILED = 127

_SETUP_FAILED = 125
_DEFAULT_ROOTS = "/var/cache/shipenv-ci/roots"


class RootError(RuntimeError):
    """A root is missing, or a command could not be started in it.

    Raised for problems of the test harness (a root not built, a mount that
    failed, a bind source that does not exist), never for a command that ran
    and failed: that is a ``CompletedProcess`` with its exit status.
    """


def roots_dir() -> Path:
    """Where ``ci/make-root.sh`` keeps the roots (``$SHIPENV_ROOTS``)."""
    return Path(os.environ.get("SHIPENV_ROOTS") or _DEFAULT_ROOTS)


def root_path(kind: Kind) -> Path:
    """The cached root of `kind`; raises `RootError` when it is not built.

    A missing root is a broken test machine, not a reason to skip: the error
    says how to build it.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown root kind {kind!r}; expected one of {', '.join(KINDS)}")
    path = roots_dir() / kind
    # make-root.sh writes the stamp only once the root is complete.
    if not (path.is_dir() and (roots_dir() / f"{kind}.stamp").is_file()):
        raise RootError(
            f"the {kind} root is not built (looked for {path} and {path}.stamp): "
            f"run ci/setup.sh, or ci/make-root.sh {kind}, then the tests again"
        )
    return path


class OverlayRoot:
    """A writable view of a cached root that keeps its changes across runs.

    Each `run` mounts a fresh overlay (cached root below, this object's upper
    directory above) in a new mount namespace, so what one run writes the
    next one sees, and the cached root never changes. Runs of one
    `OverlayRoot` must not overlap in time (overlayfs refuses to share an
    upper directory); separate `OverlayRoot` objects are independent.

        with OverlayRoot("bookworm") as root:
            root.run(["sh", "-c", "echo 1 > /srv/state"])
            assert root.upper_path("/srv/state").read_text() == "1\\n"
    """

    def __init__(self, kind: Kind, *, tmp_dir: StrPath | None = None, lower: StrPath | None = None) -> None:
        # `lower` replaces the cached root with another one (an unpacked image's rootfs); `kind` then only names it.
        self.kind: Kind = kind
        self.lower: Path = Path(lower) if lower is not None else root_path(kind)
        self._tmp_parent = tmp_dir
        self._dir: Path | None = None

    def __enter__(self) -> OverlayRoot:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Create the upper and work directories (done by ``with``)."""
        if self._dir is not None:
            return
        self._dir = Path(tempfile.mkdtemp(prefix=f"shipenv-{self.kind}-", dir=self._tmp_parent))
        for name in ("upper", "work", "merged"):
            (self._dir / name).mkdir()

    def close(self) -> None:
        """Throw away everything the runs wrote."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def upper(self) -> Path:
        """Host directory holding what the runs changed, laid out as in the root."""
        return self._require_open() / "upper"

    def upper_path(self, path_inside: StrPath) -> Path:
        """Host path where a file the runs wrote at `path_inside` is kept.

        Only changed files are there; a path the runs did not touch reads
        through to the cached root and does not exist here.
        """
        return self.upper / os.fspath(path_inside).lstrip("/")

    def run(
        self,
        argv: Sequence[StrPath],
        *,
        binds: Binds | None = None,
        env: Mapping[str, str] | None = None,
        cwd: StrPath = "/",
        readonly: bool = False,
        input: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the root and return its status and output.

        `binds` maps host paths (directories or files) to paths inside the
        root where they are bind-mounted, writable; the mount points are made
        in the overlay. `env` replaces the environment entirely (default
        `DEFAULT_ENV`); ``argv[0]`` is looked up on its ``PATH`` inside the
        root. With `readonly`, the root itself cannot be written, as with
        ``docker run --read-only`` (binds, ``/proc`` and ``/dev`` still can).

        A command that cannot be executed (say ``/bin/sh`` in the glibc root)
        gives exit status `EXEC_FAILED` and the reason on stderr; a harness
        failure raises `RootError`; `timeout` raises
        ``subprocess.TimeoutExpired`` after killing everything the run started.
        """
        if not argv:
            raise ValueError("argv is empty")
        if os.geteuid() != 0:
            raise RootError("running in a chroot root needs root (mount, chroot)")
        base = self._require_open()
        spec = {
            "lower": str(self.lower),
            "upper": str(base / "upper"),
            "work": str(base / "work"),
            "merged": str(base / "merged"),
            "binds": _bind_list(binds or {}),
            "argv": [os.fspath(a) for a in argv],
            "env": dict(DEFAULT_ENV if env is None else env),
            "cwd": os.fspath(cwd),
            "readonly": readonly,
        }
        status_r, status_w = os.pipe()
        try:
            spec["status_fd"] = status_w
            # A mount namespace so the overlay, /proc and the binds vanish with
            # the run; a PID namespace so --kill-child (on timeout) takes down
            # every process the command started, not just the first.
            cmd = [
                "unshare", "--mount", "--propagation", "private",
                "--pid", "--fork", "--kill-child",
                "--", sys.executable, "-I", str(Path(__file__).resolve()),
                "--helper", json.dumps(spec),
            ]  # fmt: skip
            done = subprocess.run(
                cmd,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                timeout=timeout,
                pass_fds=(status_w,),
            )
            os.close(status_w)
            status_w = -1
            status = _read_all(status_r).decode("utf-8", "replace")
        finally:
            if status_w >= 0:
                os.close(status_w)
            os.close(status_r)
        if not status.startswith("started"):
            raise RootError(f"could not enter the {self.kind} root: {done.stderr.strip()}")
        if done.returncode == _SETUP_FAILED and "\nerror: " in status:
            message = status.split("\nerror: ", 1)[1]
            raise RootError(f"could not set up the {self.kind} root: {message}")
        return subprocess.CompletedProcess(
            [os.fspath(a) for a in argv], done.returncode, done.stdout, done.stderr
        )

    def _require_open(self) -> Path:
        if self._dir is None:
            raise RuntimeError("OverlayRoot is not open: use it in a with block or call open()")
        return self._dir


def run_in_root(
    kind: Kind,
    argv: Sequence[StrPath],
    *,
    binds: Binds | None = None,
    env: Mapping[str, str] | None = None,
    cwd: StrPath = "/",
    writable: bool = False,
    input: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` once in a throw-away overlay of the `kind` root.

    Same arguments as `OverlayRoot.run`; the root is read-only unless
    `writable`, and whatever the command wrote is discarded afterwards.
    """
    with OverlayRoot(kind) as root:
        return root.run(
            argv, binds=binds, env=env, cwd=cwd, readonly=not writable,
            input=input, timeout=timeout,
        )  # fmt: skip


def _bind_list(binds: Binds) -> list[list[str]]:
    pairs = []
    for host, inside in binds.items():
        host_path = Path(host).resolve()
        if not host_path.exists():
            raise RootError(f"bind source does not exist: {host}")
        inside_str = os.fspath(inside)
        if not inside_str.startswith("/"):
            raise ValueError(
                f"bind target must be an absolute path inside the root: {inside_str!r}"
            )
        pairs.append([str(host_path), inside_str])
    # Parents before children, so a bind inside another bind lands on top.
    pairs.sort(key=lambda pair: len(Path(pair[1]).parts))
    return pairs


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------
# The helper: this file run as a script inside the new namespaces, as root, on
# the host's file system. It mounts, chroots and execs; it never returns.

_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384

#: Device nodes a container runtime gives every container, bound from the host.
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


class _SetupError(Exception):
    pass


@functools.cache
def _libc_mount() -> Any:
    # mount(2) itself rather than mount(8): paths and options reach the
    # kernel exactly as given, with no tool in between re-parsing them.
    mount = ctypes.CDLL(None, use_errno=True).mount
    mount.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
    ]  # fmt: skip
    return mount


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc_mount()(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        what = fstype or "bind"
        raise _SetupError(f"mount {what} {source!r} on {target!r}: {os.strerror(err)}")


def _overlay_escape(path: str) -> str:
    # overlayfs splits its options on "," and lowerdir on ":"; "\" escapes.
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _resolve_inside(root: str, path: str) -> str:
    """Host path of `path` as seen from inside `root`.

    Symlinks met on the way are followed inside the root (an absolute target
    starts again at `root`, ``..`` stops at it), so a mount point made for a
    bind never lands on the host, e.g. through Debian's ``/lib -> usr/lib``
    or an absolute link in ``/etc``.
    """
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise _SetupError(f"too many symlinks resolving {path!r} inside the root")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


def _make_mount_point(target: str, *, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            with open(target, "a"):
                pass


def _populate_dev(merged: str) -> None:
    dev = _resolve_inside(merged, "/dev")
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", _MS_NOSUID, "mode=755,size=1024k")
    for name in _DEVICES:
        node = os.path.join(dev, name)
        _make_mount_point(node, is_dir=False)
        _mount(f"/dev/{name}", node, None, _MS_BIND, None)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, os.path.join(dev, name))
    shm = os.path.join(dev, "shm")
    os.mkdir(shm)
    _mount("shm", shm, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777,size=65536k")


def _setup(spec: dict[str, object]) -> None:
    merged = str(spec["merged"])
    options = ",".join(
        f"{key}dir={_overlay_escape(str(spec[key]))}" for key in ("lower", "upper", "work")
    )
    _mount("overlay", merged, "overlay", 0, options)

    proc = _resolve_inside(merged, "/proc")
    os.makedirs(proc, exist_ok=True)
    _mount("proc", proc, "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
    _populate_dev(merged)

    binds = spec["binds"]
    assert isinstance(binds, list)
    for host, inside in binds:
        target = _resolve_inside(merged, inside)
        _make_mount_point(target, is_dir=os.path.isdir(host))
        _mount(host, target, None, _MS_BIND | _MS_REC, None)

    if spec["readonly"]:
        # Only the root's own mount becomes read-only; the mounts on top of it
        # (binds, /proc, /dev) keep their flags.
        _mount("none", merged, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None)

    os.chroot(merged)
    try:
        os.chdir(str(spec["cwd"]))
    except OSError as exc:
        raise _SetupError(f"cwd {spec['cwd']!r} inside the root: {exc.strerror}") from None


def _helper_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    status_fd = int(spec["status_fd"])
    # Closed by a successful exec, so the parent reads "started" alone then.
    os.set_inheritable(status_fd, False)
    os.write(status_fd, b"started")
    try:
        _setup(spec)
    except (_SetupError, OSError) as exc:
        os.write(status_fd, f"\nerror: {exc}".encode())
        os._exit(_SETUP_FAILED)
    argv = [str(a) for a in spec["argv"]]
    env = {str(k): str(v) for k, v in spec["env"].items()}
    sys.stdout.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        os.write(2, f"{argv[0]}: cannot execute inside the root: {exc.strerror}\n".encode())
        os._exit(EXEC_FAILED)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--helper":
        _helper_main(sys.argv[2])
    else:
        sys.exit("usage: this file is a helper for tests; see its docstring")
