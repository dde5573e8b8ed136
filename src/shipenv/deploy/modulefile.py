"""Environment Modules files for a deployed bundle: ``module load app/2.0.0``.

Clusters and shared login hosts put software on ``PATH`` with environment
modules rather than by hand. ``shipenv modulefile`` writes, for one release of
a deploy root (or for any unpacked bundle directory), a Tcl modulefile (read by
Environment Modules and by Lmod) and a Lua one (Lmod's own)::

    modulefiles/app/2.0.0          #%Module1.0 ... prepend-path PATH /srv/app/releases/app-2.0.0/bin
    modulefiles/app/2.0.0.lua      prepend_path("PATH", "/srv/app/releases/app-2.0.0/bin")

Loading one puts the release's ``bin/`` first on ``PATH`` and nothing else:
the bundle needs no other variable, and exports none (its launchers find
everything from their own location). Unloading takes that entry out again.
Help and whatis text come from the release's manifest.

Which directory the module points at:

- by default, the release ``ROOT/current`` points to now, by its real path,
  named by its version: it keeps loading that release after later deploys;
- ``release="1.0.0"`` (a version or ``NAME-VERSION``): that release;
- ``follow_current=True``: ``ROOT/current`` itself, named ``current``: it
  loads whatever release is current when a command runs, following deploys
  and rollbacks.

Lmod reads Tcl modulefiles by translating them to Lua, and that translation
turns a path holding ``"`` or ``\\`` into another path; for such a path only the
Lua file can be written, and asking for the Tcl one is an error, not a
modulefile that loads the wrong directory.

Finding the target reads the file system; rendering is pure (text in, text
out), so tests can check the files without a module system and then load them
with a real one.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shipenv import __version__, templates
from shipenv.bundle import manifest
from shipenv.bundle.manifest import Manifest
from shipenv.deploy import fs, layout
from shipenv.errors import DeployError, ShipenvError, UsageError, listing

Syntax = Literal["tcl", "lua"]
SYNTAXES: tuple[Syntax, ...] = ("tcl", "lua")

#: Files in a bundle's bin/ that are not commands to advertise.
_NOT_COMMANDS = re.compile(r"^(activate(\..*)?|python[\d.]*-config)$")
#: Valid in Tcl, but Lmod's Tcl-to-Lua translation turns them into another path.
_TCL_AWKWARD = '"\\\n'
_IMPLEMENTATIONS = {"cpython": "CPython", "pypy": "PyPy"}
#: Module names and versions become file names, and Tcl/Lua words.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Target:
    """What a modulefile points at, and what to say about it."""

    path: Path  #: the bundle directory whose bin/ goes on PATH (absolute)
    name: str  #: module name: app in app/2.0.0
    version: str  #: module version: 2.0.0 in app/2.0.0
    release: str  #: NAME-VERSION of the bundle that path holds now
    follows_current: bool
    manifest: Manifest  #: the bundle's manifest.json
    commands: tuple[str, ...]  #: what bin/ offers

    @property
    def module(self) -> str:
        return f"{self.name}/{self.version}"


def find_target(
    root: Path,
    *,
    release: str | None = None,
    follow_current: bool = False,
    name: str | None = None,
    version: str | None = None,
) -> Target:
    """Resolve ``root`` (a deploy root or an unpacked bundle) to what the modulefile loads."""
    root = Path(os.path.abspath(root))
    if release is not None and follow_current:
        raise UsageError("--release and --current exclude each other.", hint="--release pins one release; --current follows ROOT/current.")
    if (root / ".shipenv" / "manifest.json").is_file():
        if release is not None or follow_current:
            raise UsageError(
                f"{root} is a bundle, not a deploy root, so there is no release to choose.",
                hint="Drop --release/--current, or give the root that shipenv deploy manages.",
            )
        path, follows = root, False
    elif (root / "releases").is_dir():
        path, follows = _in_deploy_root(root, release, follow_current), follow_current
    else:
        raise UsageError(
            f"{root} is neither a deploy root (no releases/) nor a bundle (no .shipenv/manifest.json).",
            hint="Give the --root of shipenv deploy, or an unpacked bundle directory.",
        )
    real = Path(os.path.realpath(path))
    bundle = manifest.read(real)
    bundle_name, bundle_version = bundle.name, bundle.version
    module_name = name or bundle_name
    module_version = version or ("current" if follows else bundle_version)
    for what, value in (("name", module_name), ("version", module_version)):
        if not _NAME.fullmatch(value):
            raise UsageError(
                f"The module {what} {value!r} cannot be a modulefile name.",
                hint=f"Use letters, digits and . _ + - (set it with --{what}).",
            )
    bin_dir = real / "bin"
    commands = tuple(sorted(p.name for p in bin_dir.iterdir() if not _NOT_COMMANDS.match(p.name))) if bin_dir.is_dir() else ()
    return Target(
        path=path, name=module_name, version=module_version, release=f"{bundle_name}-{bundle_version}",
        follows_current=follows, manifest=bundle, commands=commands,
    )  # fmt: skip


def _in_deploy_root(root: Path, release: str | None, follow_current: bool) -> Path:
    """The release directory to load, by the one definition of a release (:mod:`shipenv.deploy.layout`).

    Read-only, like ``shipenv releases``: what ``--release`` can name is what
    listing, rollback and prune see, and ``current`` must point at one of them.
    """
    try:
        with layout.open_root(root) as opened:
            if release is not None:
                return root / layout.RELEASES / layout.find_release(opened, release, flag="--release")
            current = layout.current_release(opened)
            if current is None:
                raise UsageError(f"{root / layout.CURRENT} does not exist: nothing is deployed in {root} yet.",
                                 hint=f"shipenv deploy ARCHIVE --root {root}")
            if layout.release_version(opened, current) is None:
                raise DeployError(
                    f"{root / layout.CURRENT} points to {current}, which is not a release in {root / layout.RELEASES}.",
                    hint=f"Switch it to a release first: shipenv rollback --root {root} --to NAME-VERSION",
                )
    except OSError as exc:
        raise fs.os_error(exc, str(root), "nothing was written") from None
    # Pinned: the release current points to now, by its own path; or current itself, which follows.
    return root / layout.CURRENT if follow_current else Path(os.path.realpath(root / layout.RELEASES / current))


# --------------------------------------------------------------------------- rendering


def help_text(target: Target) -> str:
    """What ``module help NAME/VERSION`` prints."""
    meta = target.manifest
    py, plat, build = meta.python, meta.platform, meta.build
    dists = [f"{d.name} {d.version}" for d in meta.distributions]
    where = str(target.path)
    if target.follows_current:
        where += f" (now {target.release}; follows deploys and rollbacks)"
    lines = [
        f"{target.release}: a relocatable Python application bundle made by shipenv.",
        "",
        f"  bundle     {where}",
        f"  python     {_IMPLEMENTATIONS.get(py.implementation, py.implementation or '?')} "
        f"{py.version} ({py.abi or '?'}), "
        f"{plat.arch}, "
        + (f"glibc {plat.glibc or '?'} bundled, Linux >= {plat.kernel_floor or '?'}" if plat.libc == "bundled" else f"glibc >= {plat.glibc_floor or '?'}"),
        f"  commands   {', '.join(target.commands) or '(none)'}",
        f"  packages   {listing(dists, limit=8) if dists else '(none)'}",
    ]
    if build.time:
        lines.append(f"  built      {build.time} by shipenv {build.shipenv_version or '?'}")
    lines += ["", "Loading puts the bundle's bin/ first on PATH; unloading takes it out again."]
    return "\n".join(lines)


def whatis(target: Target) -> list[str]:
    """``module whatis`` lines, in the Name/Version/Description form Lmod's spider reads."""
    return [
        f"Name: {target.name}",
        f"Version: {target.version}",
        f"Description: {target.release}, Python {target.manifest.python.version} application bundle (shipenv)",
    ]


def tcl_quote(text: str) -> str:
    """A Tcl word that is exactly ``text``: double quotes, with ``\\ $ [ ] "`` and newlines escaped."""
    escaped = re.sub(r'([\\$\[\]"])', r"\\\1", text).replace("\n", "\\n")
    return f'"{escaped}"'


def lua_quote(text: str) -> str:
    """A Lua string literal that is exactly ``text``."""
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03d}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render(target: Target, syntax: Syntax) -> str:
    """The modulefile text for ``target`` in Tcl or Lua, from ``templates/modulefile.*``."""
    bin_dir = str(target.path / "bin")
    if syntax == "tcl":
        awkward = sorted(set(bin_dir) & set(_TCL_AWKWARD))
        if awkward:
            raise UsageError(
                f"{bin_dir} contains {' and '.join(repr(c) for c in awkward)}, which Lmod's reader of Tcl modulefiles "
                "mangles (it loads a different path).",
                hint="Write only the Lua modulefile (--syntax lua), or deploy under a plainer path.",
            )
        quote, whatis_line = tcl_quote, "module-whatis {}"
        extra = f"conflict {tcl_quote(target.name)}"
    elif syntax == "lua":
        quote, whatis_line = lua_quote, "whatis({})"
        extra = ""  # Lmod's one-name rule already swaps app/1.0.0 for app/2.0.0
    else:
        raise ValueError(f"unknown modulefile syntax {syntax!r}")
    return templates.render(
        f"modulefile.{syntax}",
        module=target.module,
        source=str(target.path),
        shipenv_version=__version__,
        help=quote(help_text(target)),
        whatis="\n".join(whatis_line.format(quote(line)) for line in whatis(target)),
        conflict=extra,
        bin=quote(bin_dir),
    )


def file_name(target: Target, syntax: Syntax) -> str:
    """Where a modulefile goes under the directory given to ``module use``."""
    return f"{target.name}/{target.version}" + (".lua" if syntax == "lua" else "")


def write(target: Target, out_dir: Path, syntaxes: tuple[Syntax, ...] = SYNTAXES) -> list[Path]:
    """Write the modulefiles under ``out_dir``; each replaces an older one in one rename.

    Both syntaxes can share a directory: Lmod prefers ``2.0.0.lua`` to
    ``2.0.0``, and Environment Modules skips files without its ``#%Module``
    header.
    """
    texts = {syntax: render(target, syntax) for syntax in syntaxes}  # refuse before writing anything
    written = []
    for syntax, text in texts.items():
        dest = out_dir / file_name(target, syntax)
        tmp: str | None = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except OSError as exc:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise ShipenvError(f"Cannot write {dest}: {exc.strerror}.", hint="Choose another -o directory.") from exc
        written.append(dest)
    return written
