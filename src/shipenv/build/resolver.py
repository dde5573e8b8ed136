"""Fast resolution with uv, and a store of the wheels fetched (by shipenv or pip) or built by pip.

pip is the reference: it runs inside the bundled interpreter and reads the
machine's pip configuration. uv, where installed, answers the same question
(which distributions, at which versions, for this interpreter) an order of
magnitude faster; it is given the same indexes and find-links that pip's
configuration names. Anything uv cannot do is left to pip, whose answer and
error messages are authoritative.

uv also says which file: its PEP 751 lock (``--format pylock.toml``, asked
for in the same call) names each pinned wheel with its URL, sha256 and size
(:class:`Resolution`), which :mod:`shipenv.build.fetch` downloads in parallel
instead of pip. uv is given pip's configured ``constraint`` files too, since
pip applies them.

When pip's only sources are local directories (``--wheels DIR``, or pip's
``no-index`` with local find-links), a pin uv resolved is answered from them
directly: pip starts only for what is not there as a wheel (an sdist to build,
a project directory).
"""

from __future__ import annotations

import configparser
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from shipenv.build.runner import REAL, Completed, Runner
from shipenv.model import BuildOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)$")


def find_uv() -> Path | None:
    """uv from the ``uv`` package next to shipenv, or on PATH; ``SHIPENV_RESOLVER=pip`` opts out."""
    if os.environ.get("SHIPENV_RESOLVER", "").lower() == "pip":
        return None
    candidate = Path(sys.executable).with_name("uv")
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("uv")
    return Path(found) if found else None


#: pip's configuration keys shipenv reads (``pip config``'s names; each is also ``PIP_<KEY>``).
PIP_KEYS = ("index-url", "extra-index-url", "find-links", "no-index", "constraint", "cert", "client-cert",
            "trusted-host", "proxy", "keyring-provider", "no-binary", "timeout", "default-timeout")


def _pip_config_files() -> list[Path]:
    """pip's configuration files, lowest precedence first, as pip orders them (site-wide, user, ``PIP_CONFIG_FILE``)."""
    xdg_dirs = [d for d in os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep) if d]
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs] + [Path("/etc/pip.conf")]
    env_file = os.environ.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:  # pip's way to read no file at all
        return []
    if not (env_file and Path(env_file).exists()):  # pip skips the user's files when PIP_CONFIG_FILE exists
        files += [Path.home() / ".pip" / "pip.conf",
                  Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "pip" / "pip.conf"]
    if env_file:
        files.append(Path(env_file))
    return files


def pip_locations() -> dict[str, list[str]]:
    """:data:`PIP_KEYS` from pip's environment and config files: each a list of words, ``[]`` when unset.

    ``no-index`` is ``["1"]`` when pip is told to use no index (only its find-links), else ``[]``.
    """
    result: dict[str, list[str]] = {key: [] for key in PIP_KEYS}
    for path in _pip_config_files():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in ("global", "wheel", "install"):
            for key in result:
                if parser.has_option(section, key):
                    result[key] = parser.get(section, key).split()
    for key in result:
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            result[key] = env.split()
    result["no-index"] = ["1"] if [v.lower() for v in result["no-index"]] in (["1"], ["true"], ["yes"], ["on"]) else []
    return result


def wheelhouses(options: BuildOptions) -> list[Path]:
    """The local directories that are pip's only sources: ``--wheels``, or with pip's ``no-index`` its find-links.

    A pinned wheel found in one of them is the one pip would take, so it is used
    without starting pip. With an index or a remote find-links page in play
    there are none: it may offer a better wheel of the same version.
    """
    if options.wheels is not None:
        return [options.wheels]
    locations = pip_locations()
    if not locations["no-index"]:
        return []
    links = locations["find-links"]
    if any("://" in link and not link.startswith("file://") for link in links):
        return []  # a remote page may offer a better wheel: pip decides
    return [d for d in (Path(link.removeprefix("file://")) for link in links) if d.is_dir()]


@dataclass(frozen=True)
class LockedFile:
    """A wheel uv's lock names for a pin: where it is, and what it must be (checked before it is used)."""

    filename: str
    url: str
    sha256: str | None
    size: int | None


@dataclass(frozen=True)
class Resolution:
    """uv's answer: the pins, and for the pins it found as wheels on an index, the files it chose.

    ``files`` maps ``name==version`` (canonical name) to every wheel the lock
    lists for it; :func:`best_locked` picks the one for the bundled interpreter.
    """

    pins: list[str]
    files: dict[str, tuple[LockedFile, ...]] = field(default_factory=dict)


def uv_compile(uv: Path, python: Path, options: BuildOptions, runner: Runner = REAL) -> list[str] | None:
    """Pinned requirement lines for the bundled interpreter, or None to let pip decide."""
    resolution = uv_resolve(uv, python, options, runner)
    return resolution.pins if resolution is not None else None


def uv_resolve(uv: Path, python: Path, options: BuildOptions, runner: Runner = REAL) -> Resolution | None:
    """uv's resolution for the bundled interpreter, with the files of its lock (PEP 751), or None to let pip decide.

    One ``uv pip compile --format pylock.toml`` gives both the pins and the wheel
    files; a project directory, a URL or a VCS requirement in the lock (or a uv
    too old for that format) makes a second, plain call for the pins, as pip reads
    them (the lock's files still serve the index pins).
    """
    # pip weighs every index equally and takes the best match; uv's default
    # (first index that has the name) could pick other versions than pip would.
    args = [str(uv), "pip", "compile", "-q", "--no-header", "--no-annotate", "--python", str(python),
            "--index-strategy", "unsafe-best-match"]
    locations = pip_locations()
    if options.wheels is not None:
        args += ["--no-index", "--find-links", str(options.wheels)]
    elif locations["no-index"]:  # pip uses only its find-links: so does uv
        args.append("--no-index")
        for link in locations["find-links"]:
            args += ["--find-links", link]
    else:
        for url in locations["index-url"][:1]:
            args += ["--index-url", url]
        for url in locations["extra-index-url"]:
            args += ["--extra-index-url", url]
        for link in locations["find-links"]:
            args += ["--find-links", link]
    # pip applies the constraints its configuration names (a site-wide cap, say): uv must too.
    for con in [*locations["constraint"], *map(str, options.constraints)]:
        args += ["-c", con]
    with tempfile.TemporaryDirectory(prefix="shipenv-uv-") as tmp:
        inputs = [str(r) for r in options.requirements]
        if options.project is not None:
            project_req = Path(tmp) / "project.txt"
            project_req.write_text(str(options.project.resolve()) + "\n")
            inputs.append(str(project_req))
        lock_path = Path(tmp) / "pylock.toml"
        proc = _run_uv(runner, [*args, "--format", "pylock.toml", "-o", str(lock_path), *inputs])
        if proc is not None and proc.returncode == 2 and not lock_path.exists():  # a uv without that format: plain pins
            proc = _run_uv(runner, [*args, *inputs])
        if proc is None:
            return None
        if proc.returncode != 0:
            log.info("uv could not resolve; pip will (and report why):\n%s", proc.stderr.strip())
            return None
        lock = _lock_text(lock_path)
        packages = _lock_packages(lock) if lock is not None else None
        pins = _index_pins(packages) if packages is not None else None
        if pins is None:
            text = proc.stdout
            if lock is not None:  # not only index pins: ask for them as pip reads them
                again = _run_uv(runner, [*args, *inputs])
                if again is None or again.returncode != 0:
                    return None
                text = again.stdout
            pins = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        resolution = Resolution(pins, _lock_files(packages or []))
    log.debug("uv resolved: %s", resolution.pins)
    return resolution


def _run_uv(runner: Runner, argv: list[str]) -> Completed | None:
    try:
        return runner.run(argv, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("uv could not run (%s); resolving with pip", exc)
        return None


def _lock_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _lock_packages(text: str) -> list[dict[str, Any]] | None:
    try:
        packages = tomllib.loads(text).get("packages", [])
    except tomllib.TOMLDecodeError as exc:
        log.info("uv's lock is not valid TOML (%s); its files are not used", exc)
        return None
    return [p for p in packages if isinstance(p, dict)] if isinstance(packages, list) else None


def parse_lock(text: str) -> Resolution | None:
    """Pins and files from a PEP 751 lock whose packages all come from an index (else None: see :func:`uv_resolve`)."""
    packages = _lock_packages(text)
    pins = _index_pins(packages) if packages is not None else None
    return Resolution(pins, _lock_files(packages or [])) if pins is not None else None


def _index_pins(packages: list[dict[str, Any]]) -> list[str] | None:
    """``name==version`` of every locked package, or None when one is not from an index (a directory, archive or VCS)."""
    pins = []
    for package in packages:
        name, version = package.get("name"), package.get("version")
        if not (isinstance(name, str) and isinstance(version, str)) or any(k in package for k in ("directory", "archive", "vcs")):
            return None
        pins.append(f"{canonicalize_name(name)}=={version}")
    return pins


def parse_lock_files(text: str) -> dict[str, tuple[LockedFile, ...]]:
    """The wheels a PEP 751 lock lists, by ``name==version``; an entry that is not a plain wheel file is left out."""
    return _lock_files(_lock_packages(text) or [])


def _lock_files(packages: list[dict[str, Any]]) -> dict[str, tuple[LockedFile, ...]]:
    files: dict[str, tuple[LockedFile, ...]] = {}
    for package in packages:
        name, version, wheels = package.get("name"), package.get("version"), package.get("wheels")
        if not (isinstance(name, str) and isinstance(version, str) and isinstance(wheels, list)):
            continue
        found = []
        for wheel in wheels:
            if not isinstance(wheel, dict) or not isinstance(wheel.get("url"), str):
                continue
            url: str = wheel["url"]
            given, hashes, size = wheel.get("name"), wheel.get("hashes"), wheel.get("size")
            filename = given if isinstance(given, str) else unquote(urlsplit(url).path.rsplit("/", 1)[-1])  # torch-2.1%2Bcpu-...
            sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
            sha256 = sha256.lower() if isinstance(sha256, str) else None
            if not isinstance(size, int) or isinstance(size, bool):
                size = None
            if filename.endswith(".whl"):
                found.append(LockedFile(filename, url, sha256, size))
        if found:
            files[f"{canonicalize_name(name)}=={version}"] = tuple(found)
    return files


def best_locked(resolution: Resolution, pin: str, tags: list[Tag]) -> LockedFile | None:
    """The wheel of the lock that pip would take for ``pin`` on this interpreter: the best tag (None: none fits)."""
    m = _PIN.match(pin)
    if not m:
        return None
    candidates = resolution.files.get(f"{canonicalize_name(m.group(1))}=={m.group(3)}", ())
    by_name = {c.filename: c for c in candidates}
    chosen = best_wheel([Path(c.filename) for c in candidates], pin, tags)
    return by_name[chosen.name] if chosen is not None else None


def lookup(store: Path, pin: str, tags: list[Tag]) -> Path | None:
    """A stored wheel for ``name==version`` that this interpreter accepts, best tag first."""
    m = _PIN.match(pin)
    if not m:
        return None  # a path or URL: always built by pip
    directory = store / canonicalize_name(m.group(1))
    found = best_wheel(sorted(directory.glob("*.whl")) if directory.is_dir() else [], pin, tags)
    if found is not None:
        with contextlib.suppress(OSError):
            os.utime(directory)  # used now: `shipenv cache --prune` removes the least recently used first
    return found


def lookup_wheelhouse(wheelhouses: list[Path], pin: str, tags: list[Tag]) -> Path | None:
    """The wheel pip would take for ``name==version`` from flat find-links directories (:func:`wheelhouses`).

    With no index those directories are pip's only sources, so the best tag of
    the pinned version is exactly pip's choice: no pip needs to start for it.
    """
    return best_wheel([w for d in wheelhouses for w in sorted(d.glob("*.whl"))], pin, tags)


def best_wheel(wheels: Iterable[Path], pin: str, tags: list[Tag]) -> Path | None:
    """Of ``wheels``, the one of ``name==version`` whose best tag comes first in ``tags`` (pip's choice), or None."""
    m = _PIN.match(pin)
    if not m:
        return None
    name = canonicalize_name(m.group(1))
    try:
        version = Version(m.group(3))
    except InvalidVersion:
        return None
    rank = {tag: i for i, tag in enumerate(tags)}
    best: tuple[int, Path] | None = None
    for wheel in wheels:
        try:
            wname, wversion, _b, wtags = parse_wheel_filename(wheel.name)
        except ValueError:
            continue
        if wname != name or wversion != version:
            continue
        ranks = [rank[t] for t in wtags if t in rank]
        if ranks and (best is None or min(ranks) < best[0]):
            best = (min(ranks), wheel)
    return best[1] if best else None


def is_index_pin_wheel(wheel: Path, pins: list[str]) -> bool:
    """True when the wheel answers a ``name==version`` pin (not a local path build)."""
    name, version, _b, _t = parse_wheel_filename(wheel.name)
    for pin in pins:
        m = _PIN.match(pin)
        if m and canonicalize_name(m.group(1)) == name and m.group(3) == str(version):
            return True
    return False


def remember(store: Path, wheel: Path) -> None:
    """Keep a copy of a fetched wheel (renamed into place: readers never see half a file)."""
    name = parse_wheel_filename(wheel.name)[0]
    dest_dir = store / name
    dest = dest_dir / wheel.name
    if dest.exists():
        return
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = dest_dir / f".{wheel.name}.{os.getpid()}.tmp"
        shutil.copyfile(wheel, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        log.warning("cache: could not keep %s (%s)", wheel.name, exc)
