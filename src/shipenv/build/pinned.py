"""Requirements that are already a resolution: a closed set of ``==`` pins over a wheelhouse, answered without uv.

A CI build usually installs a lock file (``pip-compile``, ``uv pip compile``,
``pip freeze``): every requirement pinned with ``==``, and every dependency of
every pin pinned too. Over a local wheelhouse (``--wheels``) the resolution of
such a set is the set itself, and starting uv to say so was a tenth of a
rebuild. :func:`closed` checks what a resolver would:

- every line is one requirement ``name[extras]==version``, with at most a
  marker: no range, no URL, no option line (``-r``, ``-c``, ``--hash``...);
  every constraint that applies (``-c``, or pip's configuration: plain
  requirements only) admits the pinned version;
- the wheelhouse has a wheel of each pin the bundled interpreter accepts
  (the one :func:`shipenv.build.resolver.lookup_wheelhouse` takes), and its
  ``Requires-Python`` admits that interpreter;
- every ``Requires-Dist`` of every pin, its marker evaluated for the bundled
  interpreter with the extras asked of it, names another pin whose version
  it allows (the extras it asks for are then asked of that pin in turn).

Markers are evaluated with the bundled interpreter's values, as uv does with
``--python``; a marker on the build host's kernel (``platform_release``,
``platform_version``) is left to uv. Anything that does not pass returns None,
and uv resolves as before (and says what is wrong, if anything is). The pins
come out as uv writes them: canonical names, sorted, the marker-excluded ones
left out, so the build that follows is the same either way.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Iterable
from email.parser import HeaderParser
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from shipenv.build import resolver
from shipenv.model import BuildOptions, PythonInfo

if TYPE_CHECKING:
    from shipenv.build.cache import BuildCache

log = logging.getLogger(__name__)

#: Markers whose value is the build host's, not the bundled interpreter's: uv decides.
_HOST_MARKERS = ("platform_release", "platform_version")
#: Packages a resolver may treat apart (left out of its output, or added): uv decides.
_APART = {"pip", "setuptools", "wheel", "distribute"}
_COMMENT = re.compile(r"(^|\s)#.*$")  #: as pip reads a requirements file: ``#`` at the start or after a blank


def closed(options: BuildOptions, py: PythonInfo, tags: list[Tag], constraints: Iterable[str] = (),
           store: BuildCache | None = None) -> resolver.Resolution | None:
    """The resolution of ``options.requirements`` over ``options.wheels`` if it is a closed set of pins, else None.

    ``constraints`` are the constraint files in play besides ``options.constraints`` (pip's
    configuration, as uv is given them). With ``store``, each wheel's requirements are kept in the cache while the
    file stays as it was (reading a wheel's table of contents is most of the cost).
    """
    if options.wheels is None or options.project is not None or not options.requirements:
        return None
    try:
        return _closed(options.requirements, [*options.constraints, *map(Path, constraints)], options.wheels, py, tags, store)
    except _HostMarker:
        return None


def _closed(requirements: Iterable[Path], constraints: list[Path], wheels: Path, py: PythonInfo, tags: list[Tag],
            store: BuildCache | None) -> resolver.Resolution | None:
    env = marker_environment(py)
    requested = _read(requirements, env)
    if requested is None:
        return None
    limits = _constraints(constraints, env)
    if limits is None:
        return None  # a constraint file that is not plain requirements: uv reads it
    for limit in limits:
        at = requested.get(canonicalize_name(limit.name))
        if at is not None and not limit.specifier.contains(at[0], prereleases=True):
            return None  # uv says which constraint a pin breaks
    pins: dict[NormalizedName, Version] = {}
    extras: dict[NormalizedName, set[str]] = {}
    for name, (version, wanted) in requested.items():
        pins[name] = version
        extras[name] = {canonicalize_name(e) for e in wanted}
    if _APART & set(pins):
        return None
    by_name: dict[str, list[Path]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        try:
            by_name.setdefault(parse_wheel_filename(wheel.name)[0], []).append(wheel)
        except InvalidWheelFilename:
            continue
    requires: dict[NormalizedName, list[Requirement]] = {}
    for name, version in pins.items():
        chosen = resolver.best_wheel(by_name.get(name, []), f"{name}=={version}", tags)
        if chosen is None:
            return None
        found = _metadata(chosen, store)
        if found is None or (found[0] and not _admits(found[0], py)):
            return None
        try:
            requires[name] = [Requirement(r) for r in found[1]]
        except InvalidRequirement:
            return None
    todo = list(pins)
    done: dict[NormalizedName, set[str]] = {}
    while todo:
        name = todo.pop()
        asked = extras[name]
        if done.get(name) == asked:
            continue
        done[name] = set(asked)
        for dep in requires[name]:
            if not _applies(dep, env, asked):
                continue
            dep_name = canonicalize_name(dep.name)
            if dep.url or dep_name not in pins or not dep.specifier.contains(pins[dep_name], prereleases=True):
                log.debug("pins: %s needs %s, which the requirements do not pin: uv resolves", name, dep)
                return None
            more = {canonicalize_name(e) for e in dep.extras}
            if not more <= extras[dep_name]:
                extras[dep_name] |= more
                todo.append(dep_name)
    found_pins = [f"{name}=={version}" for name, version in sorted(pins.items())]
    log.debug("pins: the requirements are a closed set of %d pins; uv is not needed", len(found_pins))
    return resolver.Resolution(found_pins)


def marker_environment(py: PythonInfo) -> dict[str, str]:
    """PEP 508's marker variables for the bundled interpreter (Linux; not the host's kernel, see :data:`_HOST_MARKERS`)."""
    cpython = py.implementation == "cpython"
    return {
        "implementation_name": py.implementation,
        "implementation_version": py.version_str,
        "os_name": "posix",
        "platform_machine": py.machine,
        "platform_python_implementation": "CPython" if cpython else py.implementation,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "python_version": py.xy,
        "python_full_version": py.version_str,
        "extra": "",
    }


def _read(paths: Iterable[Path], env: dict[str, str]) -> dict[NormalizedName, tuple[Version, frozenset[str]]] | None:
    """Each requirement of the files whose marker holds, as name -> (pinned version, extras); None unless every line is a plain pin."""
    lines = _lines(paths, env)
    if lines is None:
        return None
    found: dict[NormalizedName, tuple[Version, frozenset[str]]] = {}
    for req, holds in lines:
        version = _pinned(req)
        if version is None:
            return None
        if not holds:
            continue
        name = canonicalize_name(req.name)
        before = found.get(name)
        if before is not None and before[0] != version:
            return None  # two pins of one name: uv says which is wrong
        found[name] = (version, frozenset(req.extras) | (before[1] if before else frozenset()))
    return found


def _constraints(paths: list[Path], env: dict[str, str]) -> list[Requirement] | None:
    """Every constraint of the files whose marker holds; None if a line is anything but a plain requirement."""
    lines = _lines(paths, env)
    if lines is None or any(req.url or req.extras for req, _holds in lines):
        return None
    return [req for req, holds in lines if holds]


def _lines(paths: Iterable[Path], env: dict[str, str]) -> list[tuple[Requirement, bool]] | None:
    """Every requirement of the files, with whether its marker holds; None if a file cannot be read or a line is
    anything but one requirement (an option such as ``-r`` or ``--hash``, a continued line): uv reads those."""
    found: list[tuple[Requirement, bool]] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None  # uv reports it
        for raw in text.splitlines():
            line = _COMMENT.sub("", raw).strip()
            if not line:
                continue
            if line.startswith("-") or line.endswith("\\") or "--" in line:
                return None
            try:
                req = Requirement(line)
            except InvalidRequirement:
                return None
            found.append((req, req.marker is None or _evaluates(req.marker, env, "")))
    return found


def _pinned(req: Requirement) -> Version | None:
    """The version ``name==X`` pins (no wildcard, no ``===``, no other clause), or None."""
    if req.url:
        return None
    specs = list(req.specifier)
    if len(specs) != 1 or specs[0].operator != "==" or specs[0].version.endswith(".*"):
        return None
    try:
        return Version(specs[0].version)
    except InvalidVersion:
        return None


def _metadata(wheel: Path, store: BuildCache | None) -> tuple[str, list[str]] | None:
    """The wheel's ``Requires-Python`` ("" if none) and ``Requires-Dist`` lines, or None if its metadata cannot be read."""
    if store is None:
        return _read_metadata(wheel)
    try:
        st = wheel.stat()
    except OSError:
        return None
    found = store.remember("requires", [str(wheel), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns],
                           lambda: _read_metadata(wheel))
    if found is None:
        return None
    try:
        python_spec, dists = found
        if isinstance(python_spec, str) and isinstance(dists, list) and all(isinstance(d, str) for d in dists):
            return python_spec, dists
    except (TypeError, ValueError):
        pass
    return _read_metadata(wheel)  # not what remember() stored: read it again


def _read_metadata(wheel: Path) -> tuple[str, list[str]] | None:
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                return None
            text = z.read(names[0]).decode("utf-8")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, KeyError):
        return None  # pip and uv report a broken wheel
    meta = HeaderParser().parsestr(text)
    return meta.get("Requires-Python") or "", list(meta.get_all("Requires-Dist") or [])


def _admits(python_spec: str, py: PythonInfo) -> bool:
    try:
        return SpecifierSet(python_spec).contains(py.version_str, prereleases=True)
    except InvalidSpecifier:
        return False


def _applies(dep: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    if dep.marker is None:
        return True
    return any(_evaluates(dep.marker, env, extra) for extra in ("", *sorted(extras)))


def _evaluates(marker: Marker, env: dict[str, str], extra: str) -> bool:
    if any(name in str(marker) for name in _HOST_MARKERS):
        raise _HostMarker
    return marker.evaluate({**env, "extra": extra})


class _HostMarker(Exception):
    """A marker on the build host's kernel: :func:`closed` leaves the resolution to uv."""
