"""Whole builds kept in the cache: a build whose inputs are all what they were copies its archive.

Archives are byte-reproducible, so a build whose every input is unchanged
would write the bytes it wrote before. Its **key** is computed after the
sources are resolved and before anything is installed, from every input of
the archive:

* shipenv's own code and the interpreter layer's key (:func:`cache.key`
  fingerprints the code; the layer key holds the executable's digest, the
  stdlib's fingerprint, the policy, the templates, ``--keep-stdlib``,
  ``--system-lib`` and ``--libc``), and everything the interpreter reported;
* each wheel, in install order (which decides who owns a file, so the
  fragments): its file name, its sha256 (the SBOM records it, and the wheel's
  layer key derives from its bytes) and its source;
* every option that changes the bytes: name and version, format, level,
  ``SOURCE_DATE_EPOCH``, ``--entry``, ``--max-glibc`` and the options above;
  not ``-o``, ``--cache-dir``, ``--threads`` (the bytes do not depend on it),
  progress or ``--sign-key`` (a hit is signed afresh);
* the host paths the audit looks for (they decide the findings reported);
* what the stages after the layers read from the build host: ``/etc/os-release``
  (the SBOM's distro), ``/etc/ld.so.cache`` and the loader's default
  directories and the interpreter's ``LIBDIR`` (where the SBOM's library
  lookup finds a vendored library), dpkg's ``status`` (which package owns
  it), each by its size and mtime; ``libc.finish`` reads only the tree;
* the libraries shipenv runs with (every ``*.dist-info`` name on ``sys.path``,
  part of every cache key (:func:`cache.key`): cyclonedx renders the SBOM,
  zstandard and zlib-ng compress) and its Python.

The host files the layers were made from (vendored libraries, the
executable) are checked as the layers check them (:func:`cache.hosts_changed`)
from the list stored with the output, so the output does not need its layer
entries to still be there. The stored archive is checked by ``stat`` (size,
inode, mtime and ctime: it is a copy nothing else links to) rather than
re-hashed: 0.1 s instead of 0.3 s for a 100 MB archive.

No output is kept with ``--no-cache``, ``--venv`` (the venv's contents are in
no key), ``--format dir`` and the image formats (a tree is made anyway), when
pip must fetch or build a wheel (its bytes are not known before it runs: a
project, an sdist, a wheel not yet in the store) or when uv does not resolve;
nor when a finding names this build's own staging directory (the next build's
would differ).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from shipenv.build import audit, cache, output, policy
from shipenv.build.runner import Runner
from shipenv.bundle import manifest
from shipenv.model import IMAGE_FORMATS, AuditFinding, BuildOptions, BuildResult, PythonInfo

if TYPE_CHECKING:
    from shipenv.build.install import Sources
    from shipenv.build.layers import Layer
    from shipenv.build.resolver import Resolution

log = logging.getLogger(__name__)

_FORMAT = 1
#: dpkg answers from it: a package installed, upgraded or removed changes it.
DPKG_STATE = (Path("/var/lib/dpkg/status"),)
_HOST_FILES = (Path("/etc/os-release"), Path("/etc/ld.so.cache"), *DPKG_STATE)
_ARCHIVE, _SBOM = "archive", "sbom.cdx.json"


@dataclass(frozen=True)
class Plan:
    """What the top of a build decided: uv's pins (None: resolved later, or by pip) and the output's key.

    ``key`` is None when the build's output is not kept, or not yet known: when
    pip must fetch a wheel first, :func:`key_after` asks again once it has (the
    next build then finds that wheel in the store, and so the same key).
    """

    pins: Resolution | None
    key: str | None
    cacheable: bool  #: the format and sources allow keeping the output at all


@dataclass(frozen=True)
class Stored:
    """A kept output: the archive and SBOM to copy, and the result the full build returned (its ``path`` is the new one)."""

    archive: Path
    sbom: Path
    result: BuildResult


def plan(options: BuildOptions, sources: Sources, py: PythonInfo, target: output.Target, store: cache.BuildCache | None,
         interpreter_key: Callable[[], str], runner: Runner) -> Plan:
    """Resolve (uv, once for the whole build) and, when this build's output can be kept, compute its key."""
    from shipenv.build import install

    if options.venv is not None or sources.venv_site is not None:
        return Plan(None, None, False)
    pins = install.resolve_pins(options, py, py.executable, runner, store)
    if store is None or target.fmt == "dir" or target.fmt in IMAGE_FORMATS:
        return Plan(pins, None, False)
    return Plan(pins, _key(options, sources, py, target, store, interpreter_key, pins), True)


def key_after(planned: Plan, options: BuildOptions, sources: Sources, py: PythonInfo, target: output.Target,
              store: cache.BuildCache, interpreter_key: Callable[[], str]) -> str | None:
    """The key a full build keeps its output under: the planned one, or the one known now that pip has fetched its wheels."""
    if planned.key is not None or not planned.cacheable:
        return planned.key
    return _key(options, sources, py, target, store, interpreter_key, planned.pins)


def _key(options: BuildOptions, sources: Sources, py: PythonInfo, target: output.Target, store: cache.BuildCache,
         interpreter_key: Callable[[], str], pins: Resolution | None) -> str | None:
    from shipenv.build import install

    wheels = install.known_wheels(options, py, pins, store.root / "wheels")
    if wheels is None:
        log.debug("output: pip must fetch or build a wheel (or uv did not resolve), so the archive's inputs are not known yet")
        return None
    digests = wheel_digests(store, [w for w, _ in wheels])
    placeholder = Path("/nonexistent/shipenv-staging")
    parts = {
        "interpreter": interpreter_key(),
        "python": dataclasses.asdict(py),
        "wheels": [[w.name, digest, source] for (w, source), digest in zip(wheels, digests)],
        "artifact": [target.tree_name, target.fmt, target.epoch, options.compress_level],
        "options": [list(options.entries), sorted(options.keep_stdlib), sorted(options.system_libs), options.libc, options.max_glibc],
        "needles": [n for n in audit.needles(py, sources, placeholder) if n != str(placeholder)],
        "host": cache.host_files_state(host_files(py)),
        "runtime": sys.version,
    }
    return cache.key("output", _FORMAT, parts)


def host_files(py: PythonInfo) -> list[Path]:
    """The build host's files the stages after the layers read (see the module docstring)."""
    return [*_HOST_FILES, *policy.default_dirs(py.machine), *([py.libdir] if py.libdir else [])]


def wheel_digests(store: cache.BuildCache, wheels: list[Path]) -> list[str]:
    """Each wheel's sha256, kept in the cache while the file's size, inode, mtime and ctime stay as they were.

    One entry per wheel: a requirement added costs hashing that one wheel. The
    build's key and its SBOM both use these, so a wheel is hashed once.
    """
    digests = []
    for wheel in wheels:
        st = wheel.stat()
        state = [str(wheel), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
        found = store.remember("wheel-digest", state, functools.partial(_sha256, wheel))
        digests.append(found if isinstance(found, str) and len(found) == 64 else _sha256(wheel))
    return digests


def _sha256(path: Path) -> str:
    return manifest.hash_file(path)[0]


def lookup(store: cache.BuildCache, key: str) -> Stored | None:
    """The kept output of ``key`` if it is still as stored, else None (a damaged one is removed)."""
    found = store.get_output(key)
    if found is None:
        return None
    entry, about = found
    try:
        result = _parse(about)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("cache: dropping damaged output %s (%s)", key[:12], exc)
        store.drop_output(key)
        return None
    return Stored(entry / _ARCHIVE, entry / _SBOM, result)


def keep(store: cache.BuildCache, key: str, result: BuildResult, sbom: Path, layers: Iterable[Layer], fresh: str) -> None:
    """Store a full build's archive, SBOM and result under ``key``, with the host files its layers were made from."""
    if any(f.needle == fresh for f in result.audit):
        return  # the report names this build's staging directory: the next build's would not
    hosts: list[Path] = []
    for layer in layers:
        if layer.entry is None:
            return  # a layer the cache could not keep: its host files are not on record
        try:
            hosts += cache.recorded_host_files(layer.entry)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cache: not keeping the build's output (%s)", exc)
            return
    linked = {_ARCHIVE: result.sha256} if result.sha256 else {}
    store.put_output(key, {_ARCHIVE: result.path, _SBOM: sbom}, _dump(result), hosts, linked)


def copy(src: Path, dest: Path) -> None:
    """Copy a stored archive inside the kernel (``copy_file_range``; ``sendfile`` where that is refused)."""
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        left = os.fstat(fin.fileno()).st_size
        try:
            while left > 0:
                done = os.copy_file_range(fin.fileno(), fout.fileno(), left)
                if done == 0:
                    break
                left -= done
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            fin.seek(0)
            fout.seek(0)
            fout.truncate()
            shutil.copyfileobj(fin, fout, 1 << 20)


def _dump(result: BuildResult) -> dict[str, Any]:
    return {
        "tree_name": result.tree_name,
        "glibc_floor": list(result.glibc_floor) if result.glibc_floor else None,
        "sha256": result.sha256,
        "audit": [[str(f.path), f.needle, f.kind, f.reason] for f in result.audit],
        "vendored": list(result.vendored),
        "libc": result.libc,
    }


def _parse(about: Any) -> BuildResult:
    """Raises KeyError, TypeError or ValueError for anything :func:`_dump` did not write."""
    floor = about["glibc_floor"]
    findings = []
    for path, needle, kind, reason in about["audit"]:
        if kind not in ("runs", "metadata"):
            raise ValueError(f"finding kind {kind!r}")
        findings.append(AuditFinding(PurePosixPath(path), str(needle), "runs" if kind == "runs" else "metadata", str(reason)))
    sha256 = about["sha256"]
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise ValueError("no sha256")
    return BuildResult(
        path=Path(), tree_name=str(about["tree_name"]), glibc_floor=(int(floor[0]), int(floor[1])) if floor else None,
        sha256=sha256, audit=tuple(findings), vendored=tuple(str(v) for v in about["vendored"]),
        libc=str(about["libc"]) if about["libc"] is not None else None,
    )
