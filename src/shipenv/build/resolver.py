"""Fast resolution with uv, and a store of the wheels pip fetched or built.

pip is the reference: it runs inside the bundled interpreter and reads the
machine's pip configuration. uv, where installed, answers the same question
(which distributions, at which versions, for this interpreter) an order of
magnitude faster; it is given the same indexes and find-links that pip's
configuration names. Anything uv cannot do is left to pip, whose answer and
error messages are authoritative.

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
from collections.abc import Iterable
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from shipenv.build.runner import REAL, Runner
from shipenv.model import BuildOptions

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


def pip_locations() -> dict[str, list[str]]:
    """index-url, extra-index-url, find-links and no-index from pip's environment and config files.

    ``no-index`` is ``["1"]`` when pip is told to use no index (only its find-links), else ``[]``.
    """
    result: dict[str, list[str]] = {"index-url": [], "extra-index-url": [], "find-links": [], "no-index": []}
    files = [Path("/etc/pip.conf"), Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "pip" / "pip.conf",
             Path.home() / ".pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    for path in files:
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


def uv_compile(uv: Path, python: Path, options: BuildOptions, runner: Runner = REAL) -> list[str] | None:
    """Pinned requirement lines for the bundled interpreter, or None to let pip decide."""
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
    inputs = [str(r) for r in options.requirements]
    for con in options.constraints:
        args += ["-c", str(con)]
    tmp_req = None
    if options.project is not None:
        import tempfile

        tmp_req = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        tmp_req.write(str(options.project.resolve()) + "\n")
        tmp_req.close()
        inputs.append(tmp_req.name)
    try:
        proc = runner.run([*args, *inputs], timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("uv could not run (%s); resolving with pip", exc)
        return None
    finally:
        if tmp_req is not None:
            os.unlink(tmp_req.name)
    if proc.returncode != 0:
        log.info("uv could not resolve; pip will (and report why):\n%s", proc.stderr.strip())
        return None
    pins = [line.strip() for line in proc.stdout.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    log.debug("uv resolved: %s", pins)
    return pins


def lookup(store: Path, pin: str, tags: list[Tag]) -> Path | None:
    """A stored wheel for ``name==version`` that this interpreter accepts, best tag first."""
    m = _PIN.match(pin)
    if not m:
        return None  # a path or URL: always built by pip
    directory = store / canonicalize_name(m.group(1))
    found = _best(sorted(directory.glob("*.whl")) if directory.is_dir() else [], pin, tags)
    if found is not None:
        with contextlib.suppress(OSError):
            os.utime(directory)  # used now: `shipenv cache --prune` removes the least recently used first
    return found


def lookup_wheelhouse(wheelhouses: list[Path], pin: str, tags: list[Tag]) -> Path | None:
    """The wheel pip would take for ``name==version`` from flat find-links directories (:func:`wheelhouses`).

    With no index those directories are pip's only sources, so the best tag of
    the pinned version is exactly pip's choice: no pip needs to start for it.
    """
    return _best([w for d in wheelhouses for w in sorted(d.glob("*.whl"))], pin, tags)


def _best(wheels: Iterable[Path], pin: str, tags: list[Tag]) -> Path | None:
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
