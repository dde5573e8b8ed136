"""Put the application's packages into the tree.

Four sources, one result: requirements files, a project directory, a
wheelhouse, or an existing venv. uv resolves for the bundled interpreter, and
the wheels its lock names are downloaded in parallel (:mod:`shipenv.build.fetch`);
what is left (sdists to build, or anything without uv) goes through pip run by
the *bundled* interpreter, so markers and wheel tags are the target's; wheels
are installed with :mod:`installer` into the scheme the copied interpreter
reports (Debian's says ``local/lib/python3.11/dist-packages``). A venv is
copied as it is and then relocated like everything else.

Console and GUI scripts become launchers (``templates/script.py``) that find the
bundle from their own location.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from installer import install as installer_install
from installer.destinations import SchemeDictionaryDestination
from installer.exceptions import InstallerError
from installer.records import Hash, RecordEntry
from installer.sources import WheelFile
from installer.utils import Scheme as InstallerScheme
from installer.utils import copyfileobj_with_hashing, make_file_executable
from packaging.tags import Tag, compatible_tags, cpython_tags, platform_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from shipenv import config
from shipenv.build import interpreter, launchers, pinned, resolver, venv
from shipenv.build.runner import REAL, Runner
from shipenv.errors import InstallError, ResolveError, listing
from shipenv.model import BuildOptions, Distribution, PythonInfo, Scheme

if TYPE_CHECKING:
    from shipenv.build.cache import BuildCache

log = logging.getLogger(__name__)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Sources:
    """What goes into the bundle besides the interpreter, and what names it."""

    name: str | None = None
    version: str | None = None
    python: str | None = None
    host_paths: tuple[Path, ...] = field(default_factory=tuple)
    venv_site: Path | None = None


def resolve_sources(options: BuildOptions) -> Sources:
    """Name, version and base Python implied by the sources (flags win later)."""
    host: list[Path] = []
    name = version = python = None
    venv_site = None
    if options.project is not None:
        meta = _project_metadata(options.project)
        name, version = meta.get("name"), meta.get("version")
        host.append(options.project.resolve())
    if options.venv is not None:
        venv_dir = options.venv.resolve()
        host.append(venv_dir)
        python = str(venv_dir / "bin" / "python")
        venv_site = venv.site_packages(venv_dir)
    if options.wheels is not None:
        host.append(options.wheels.resolve())
    return Sources(name, version, python, tuple(host), venv_site)


def _project_metadata(project: Path) -> dict[str, str]:
    pyproject = project / "pyproject.toml"
    if not pyproject.is_file():
        if (project / "setup.py").is_file():
            return {}
        raise ResolveError(f"{project} has neither a pyproject.toml nor a setup.py.", hint="Give a Python project directory.")
    table = config.read_pyproject(pyproject).get("project", {})
    out = {}
    if isinstance(table.get("name"), str):
        out["name"] = table["name"]
    if isinstance(table.get("version"), str):
        out["version"] = table["version"]
    return out


def tree_scheme(python: Path, root: Path, runner: Runner = REAL) -> Scheme:
    """Ask the copied interpreter where packages go (Debian says ``dist-packages``)."""
    data = interpreter.ask_tree(python, interpreter.SCHEME_CODE, runner)
    assert isinstance(data, dict)
    real_root = os.path.realpath(root)
    if os.path.realpath(data["prefix"]) != real_root:
        raise InstallError(
            f"The copied interpreter reports sys.prefix {data['prefix']} instead of the bundle; it is not relocatable."
        )

    def inside(key: str) -> PurePosixPath:
        value = os.path.realpath(data["paths"][key])
        rel = os.path.relpath(value, real_root)
        if rel.startswith(".."):
            raise InstallError(f"The copied interpreter puts {key} outside the bundle ({value}).")
        return PurePosixPath(rel)

    purelib = inside("purelib")
    (root / purelib).mkdir(parents=True, exist_ok=True)
    site_dirs = [os.path.realpath(p) for p in data["site"]]
    if os.path.realpath(root / purelib) not in site_dirs:
        raise InstallError(f"The copied interpreter does not import from its own {purelib}.")
    return Scheme(
        purelib=purelib,
        platlib=inside("platlib"),
        scripts=PurePosixPath("bin"),
        data=PurePosixPath("."),
        headers=PurePosixPath("include"),
    )


# --------------------------------------------------------------------------- install


def collect_wheels(
    sources: Sources,
    options: BuildOptions,
    py: PythonInfo,
    python: Path,
    wheel_dir: Path,
    say: Say,
    store: Path | None = None,
    runner: Runner = REAL,
    pins: resolver.Resolution | None = None,
    before_pip: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[Path, str]]:
    """Every wheel to install, with where it came from: resolved, or a wheelhouse.

    With uv available, uv resolves (in well under a second); the wheels missing
    from a local wheelhouse (``--wheels``) and from ``store`` (shipenv's wheel
    cache) are downloaded in parallel from the URLs uv's lock gives
    (:mod:`shipenv.build.fetch`, into ``store``), and pip starts only for what is
    left: a pin with no wheel (an sdist to build, a project directory) or one
    that path could not fetch as pip would. Without uv, or if uv cannot resolve,
    pip does everything and has the last word. ``pins`` is uv's answer when the caller already has
    it (:func:`resolve_pins`, run before the tree existed): uv is not run twice.
    ``before_pip`` is called before pip starts: pip runs in the bundled
    interpreter and writes bytecode for what it imports, so the build lets the
    standard library's own byte-compilation finish first.
    """
    if options.wheels is not None and not options.requirements and options.project is None:
        return [(w, "wheelhouse") for w in select_wheels(options.wheels, py)]
    if not (options.requirements or options.project is not None):
        return []
    say("Resolving and building wheels")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    if pins is None:
        pins = resolve_pins(options, py, python, runner)
    if pins is not None:
        return _wheels_for_pins(pins, python, options, py, wheel_dir, store, runner, before_pip, say, progress)
    if before_pip is not None:
        before_pip()
    return pip_wheel(python, options, wheel_dir, cache_root=store.parent if store else None, runner=runner)


def resolve_pins(options: BuildOptions, py: PythonInfo, python: Path, runner: Runner = REAL,
                 store: BuildCache | None = None) -> resolver.Resolution | None:
    """uv's pinned resolution of the requirements for ``python``, or None (no uv, nothing to resolve, or uv could not: pip decides).

    The base interpreter gives the same answer as its copy in the tree: the
    markers and tags uv asks about are the interpreter's, not its location's.
    Requirements that are a closed set of pins over ``--wheels`` are their
    own resolution (:mod:`shipenv.build.pinned`): uv does not start.
    """
    if not (options.requirements or options.project is not None):
        return None
    if options.wheels is not None:
        found = pinned.closed(options, py, target_tags(py), resolver.pip_locations()["constraint"], store)
        if found is not None:
            return found
    uv = resolver.find_uv()
    return resolver.uv_resolve(uv, python, options, runner) if uv is not None else None


def known_wheels(options: BuildOptions, py: PythonInfo, pins: resolver.Resolution | None, store: Path | None) -> list[tuple[Path, str]] | None:
    """What :func:`collect_wheels` will return given ``pins``, when that is known without starting pip (else None)."""
    if options.wheels is not None and not options.requirements and options.project is None:
        return [(w, "wheelhouse") for w in select_wheels(options.wheels, py)]
    if not (options.requirements or options.project is not None):
        return []
    if pins is None:
        return None
    found, missing = _lookup_pins(pins.pins, options, py, store)
    return None if missing else [(w, _source_of(w, options)) for w in found]


def _lookup_pins(pins: list[str], options: BuildOptions, py: PythonInfo, store: Path | None) -> tuple[list[Path], list[str]]:
    """The wheels of ``pins`` found without pip, and the pins pip must fetch or build."""
    found: list[Path] = []
    missing: list[str] = []
    tags = target_tags(py)
    local = resolver.wheelhouses(options)
    for pin in pins:
        # A local wheelhouse is pip's only source, so its wheel is the one pip would
        # take; the store keeps what pip fetched from an index or built from an sdist.
        wheel = resolver.lookup_wheelhouse(local, pin, tags) if local else None
        if wheel is None and store is not None:
            wheel = resolver.lookup(store, pin, tags)
        if wheel is not None:
            found.append(wheel)
        else:
            missing.append(pin)
    return found, missing


def _wheels_for_pins(
    resolution: resolver.Resolution, python: Path, options: BuildOptions, py: PythonInfo, wheel_dir: Path, store: Path | None,
    runner: Runner, before_pip: Callable[[], None] | None = None, say: Say | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[Path, str]]:
    pins = resolution.pins
    found, missing = _lookup_pins(pins, options, py, store)
    by_pin = dict(zip([p for p in pins if p not in missing], found))
    if missing:
        fetched = _fetch_locked(resolution, missing, py, store, wheel_dir, say, progress)
        by_pin.update(fetched)
        missing = [p for p in missing if p not in fetched]
    log.debug("wheels for %d pin(s) found without pip; pip fetches or builds %d (%d downloaded from uv's lock)",
              len(by_pin), len(missing), len(by_pin) - len(found))
    built: list[tuple[Path, str]] = []
    if missing:
        if before_pip is not None:
            before_pip()
        built = pip_wheel(python, options, wheel_dir, pins=missing, cache_root=store.parent if store else None, runner=runner)
        for wheel, _source in built:
            if store is not None and resolver.is_index_pin_wheel(wheel, missing):
                resolver.remember(store, wheel)
    # In uv's order whichever way a wheel came (the store, the lock, pip): a clean build and a cached one agree.
    ordered = [by_pin[p] for p in pins if p in by_pin] + [w for w, _ in built]
    return [(w, _source_of(w, options)) for w in ordered]


def _fetch_locked(resolution: resolver.Resolution, missing: list[str], py: PythonInfo, store: Path | None, wheel_dir: Path,
                  say: Say | None, progress: Callable[[int, int], None] | None) -> dict[str, Path]:
    """The missing pins whose wheel uv's lock names, downloaded into the store (as pip's downloads are kept) or
    ``wheel_dir`` without one; what is not returned is pip's to fetch or build."""
    from shipenv.build import fetch

    tags = target_tags(py)
    locked = {pin: f for pin in missing if (f := resolver.best_locked(resolution, pin, tags)) is not None}
    if not locked:
        return {}
    config = fetch.settings(resolver.pip_locations())
    if isinstance(config, str):
        log.info("fetch: pip downloads every wheel: %s", config)
        return {}
    jobs = {pin: (f, store / str(parse_wheel_filename(f.filename)[0]) if store is not None else wheel_dir)
            for pin, f in locked.items() if _wheel_name_ok(f.filename)}
    if not jobs:
        return {}
    if say is not None:
        known = sum(f.size or 0 for f, _ in jobs.values())
        say(f"Downloading {len(jobs)} wheels" + (f" ({known / 1e6:.1f} MB)" if known else ""))
    done, _failed = fetch.fetch(jobs, config, progress)
    return done


def _wheel_name_ok(filename: str) -> bool:
    try:
        parse_wheel_filename(filename)
    except ValueError:
        return False
    return True


def _source_of(wheel: Path, options: BuildOptions) -> str:
    if options.project is not None:
        meta = _project_metadata(options.project)
        if "name" in meta and canonicalize_name(meta["name"]) == canonicalize_name(parse_wheel_filename(wheel.name)[0]):
            return "project"
    return "index"


def wheel_content_key(wheel: Path) -> str:
    """A digest of what a wheel installs: its RECORD lists every file's hash.

    Unlike the wheel file's own digest this does not change when pip rebuilds
    the same project from source (zip timestamps), so cached layers are reused.
    """
    import hashlib

    try:
        with zipfile.ZipFile(wheel) as zf:
            records = sorted(n for n in zf.namelist() if n.endswith(".dist-info/RECORD") and n.count("/") == 1)
            if len(records) == 1:
                return hashlib.sha256(wheel.name.encode() + b"\0" + zf.read(records[0])).hexdigest()
    except (OSError, zipfile.BadZipFile):
        pass
    return hashlib.sha256(wheel.read_bytes()).hexdigest()


def wheel_distribution(wheel: Path, source: str) -> Distribution:
    name, version, _b, _t = parse_wheel_filename(wheel.name)
    return Distribution(canonicalize_name(str(name)), str(version), source)


def _pip_home() -> Path:
    """A copy of pip's package that the bundled interpreter can import (pip is pure Python)."""
    import importlib.util

    spec = importlib.util.find_spec("pip")
    if spec is None or spec.origin is None:
        raise ResolveError("pip is not installed next to shipenv; it is needed to resolve requirements.", hint="pip install pip")
    return Path(spec.origin).parent.parent


def _pip_copy(cache_root: Path | None, tmp: Path) -> Path:
    """A directory holding a copy of pip for the bundled interpreter to import.

    Kept in the cache when there is one, so the interpreter's bytecode for pip
    is written once there instead of pip being compiled again on every build.
    """
    import importlib.metadata

    if cache_root is None:
        home = tmp / "pip-home"
    else:
        home = cache_root / "pip" / importlib.metadata.version("pip")
        if (home / "pip" / "__init__.py").is_file():
            return home
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pip-", dir=home.parent))
    shutil.copytree(_pip_home() / "pip", staging / "pip", ignore=shutil.ignore_patterns("__pycache__"))
    try:
        os.replace(staging, home)
    except OSError:  # another build put it there first
        shutil.rmtree(staging, ignore_errors=True)
    return home


_PIP_MAIN = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from pip._internal.cli.main import main; sys.argv[0] = 'pip'; sys.exit(main())"
)


def pip_wheel(
    python: Path, options: BuildOptions, wheel_dir: Path, *, pins: list[str] | None = None, cache_root: Path | None = None,
    runner: Runner = REAL,
) -> list[tuple[Path, str]]:
    """Resolve and build every wheel with pip running inside the bundled interpreter.

    With ``pins`` (a resolution already made), fetch or build exactly those, without dependencies.
    """
    with tempfile.TemporaryDirectory(prefix="shipenv-pip-") as tmp:
        pip_copy = _pip_copy(cache_root, Path(tmp))
        args = [str(python), "-I", "-c", _PIP_MAIN, str(pip_copy), "wheel", "--wheel-dir", str(wheel_dir),
                "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
        if options.wheels is not None:
            args += ["--no-index", "--find-links", str(options.wheels)]
        if pins is not None:
            pin_file = Path(tmp) / "pins.txt"
            pin_file.write_text("\n".join(pins) + "\n")
            args += ["--no-deps", "-r", str(pin_file)]
        else:
            for req in options.requirements:
                args += ["-r", str(req)]
            for con in options.constraints:
                args += ["-c", str(con)]
            if options.project is not None:
                args.append(str(options.project.resolve()))
        # Wheels built from source get the build's timestamps, so the same inputs give the
        # same wheel bytes: the SBOM records each wheel's sha256 (bundle.sbom).
        from shipenv.build.output import source_date_epoch

        proc = runner.run(args, env_extra={"SOURCE_DATE_EPOCH": str(source_date_epoch(options))})
    log.debug("pip wheel output:\n%s%s", proc.stdout, proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        log.debug("pip's output ends with:\n%s", tail)
        raise ResolveError(_pip_failure(proc.stdout + proc.stderr), hint="Fix the requirement or the project, then build again; run with -v to see pip's output.")
    project_name = None
    if options.project is not None:
        meta = _project_metadata(options.project)
        project_name = canonicalize_name(meta["name"]) if "name" in meta else None
    result = []
    for wheel in sorted(wheel_dir.glob("*.whl")):
        name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
        result.append((wheel, "project" if name == project_name else "index"))
    if options.project is not None and project_name is None and result:
        # Dynamic name: the project's wheel is the one pip built from its directory.
        pass
    return result


def _pip_failure(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for pattern, sentence in (
        (r"No matching distribution found for (\S+)", "No release of {0} matches the requirement for this bundle's Python and platform."),
        (r"Could not find a version that satisfies the requirement (\S+)", "No release of {0} matches the requirement for this bundle's Python and platform."),
        (r"Failed to build (.+)", "Building a wheel from source failed for {0}."),
        (r"Failed building wheel for (\S+)", "Building a wheel from source failed for {0}."),
        (r"ResolutionImpossible|conflicting dependencies", "The requirements conflict with each other."),
        (r"(?:Could not open requirements file|Invalid requirement): (.+)", "A requirement is invalid: {0}."),
    ):
        for line in lines:
            m = re.search(pattern, line)
            if m:
                return sentence.format(*(g.strip().rstrip(".") for g in m.groups())) if m.groups() else sentence
    if any("subprocess-exited-with-error" in line or "metadata-generation-failed" in line for line in lines):
        # A build backend failed before pip could name the package: the last
        # "Processing"/"Collecting" line before the error says which one.
        first_error = next(i for i, line in enumerate(lines) if "subprocess-exited-with-error" in line or "metadata-generation-failed" in line)
        subject = next((line.split(None, 1)[1] for line in reversed(lines[:first_error]) if line.startswith(("Processing ", "Collecting "))), "a package")
        step = next((line.lstrip("× ").rstrip(".") for line in lines if line.startswith("×")), "its build failed")
        return f"Building {subject.rstrip('/').rsplit('/', 1)[-1]} from source failed ({step})."
    tail = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "no output")
    return f"pip could not resolve or build the requirements ({tail})."


def target_tags(py: PythonInfo) -> list[Tag]:
    """Wheel tags the bundled interpreter accepts, most specific first."""
    xy = (py.version[0], py.version[1])
    platforms = list(platform_tags())
    return [*cpython_tags(xy, [py.abi_tag, "abi3", "none"], platforms), *compatible_tags(xy, f"cp{xy[0]}{xy[1]}", platforms)]


def select_wheels(directory: Path, py: PythonInfo) -> list[Path]:
    """One compatible wheel per project from a wheelhouse; incompatible ones are an error."""
    tags = target_tags(py)
    rank = {tag: i for i, tag in enumerate(tags)}
    best: dict[str, tuple[tuple[int, object], Path]] = {}
    incompatible: list[str] = []
    names_ok: set[str] = set()
    files = sorted(directory.glob("*.whl"))
    if not files:
        raise ResolveError(f"--wheels {directory} holds no .whl files.")
    for wheel in files:
        try:
            name, version, _build, wtags = parse_wheel_filename(wheel.name)
        except ValueError as exc:
            raise ResolveError(f"{wheel.name} is not a valid wheel file name.") from exc
        ranks = [rank[t] for t in wtags if t in rank]
        if not ranks:
            incompatible.append(wheel.name)
            continue
        names_ok.add(name)
        key = (-min(ranks), version)
        if name not in best or key[1] > best[name][0][1] or (key[1] == best[name][0][1] and key[0] > best[name][0][0]):  # type: ignore[operator]
            best[name] = (key, wheel)
    bad = [w for w in incompatible if canonicalize_name(parse_wheel_filename(w)[0]) not in names_ok]
    if bad:
        raise ResolveError(
            f"These wheels are not for this bundle's Python {py.xy} ({py.abi_tag}) on {py.machine}: {listing(bad)}.",
            hint=f"Download wheels for the target, e.g. `pip download --only-binary :all: --python-version {py.xy} -d {directory} ...`, or choose the matching --python.",
        )
    return [best[n][1] for n in sorted(best)]


class _Destination(SchemeDictionaryDestination):
    """installer's scheme destination, writing shipenv launchers instead of absolute-shebang scripts.

    Its :meth:`write_to_fs` is installer's without ``pathlib`` (a dozen path
    objects per file, for wheels of thousands of files, cost more than the
    writing) and with each directory made once, with installer's checks: no
    file outside its scheme's directory, and none overwritten (``O_EXCL``, so
    a clash names the file).
    """

    def __init__(self, scheme_dict: dict[str, str], py: PythonInfo) -> None:
        super().__init__(scheme_dict, interpreter="/bin/false", script_kind="posix")
        self.py = py
        self._bases = {scheme: os.path.abspath(path) for scheme, path in scheme_dict.items()}
        self._made: set[str] = set()

    def write_to_fs(self, scheme: InstallerScheme, path: str, stream: BinaryIO, is_executable: bool) -> RecordEntry:
        base = self._bases[scheme]
        target = os.path.abspath(os.path.join(base, path))
        if not target.startswith(base + os.sep):
            raise ValueError(f"Attempting to write {path} outside of the target directory")
        parent = os.path.dirname(target)
        if parent not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)
        with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), "wb") as f:
            digest, size = copyfileobj_with_hashing(stream, f, self.hash_algorithm)
        if is_executable:
            make_file_executable(Path(target))
        return RecordEntry(path, Hash(self.hash_algorithm, digest), size)

    def write_script(self, name: str, module: str, attr: str, section: str) -> RecordEntry:
        text = launchers.script_file(self.py, name, module, attr)
        entry: RecordEntry = self.write_to_fs(InstallerScheme("scripts"), name, io.BytesIO(text), is_executable=True)
        return entry


def install_wheel(wheel: Path, root: Path, scheme: Scheme, py: PythonInfo, source: str) -> Distribution:
    scheme_dict = {
        "purelib": str(root / scheme.purelib),
        "platlib": str(root / scheme.platlib),
        "scripts": str(root / scheme.scripts),
        "data": str(root / scheme.data),
        "headers": str(root / scheme.headers / "site" / f"python{py.xy}"),
    }
    try:
        with WheelFile.open(wheel) as source_wheel:
            installer_install(source_wheel, _Destination(scheme_dict, py), {"INSTALLER": b"shipenv\n"})
    except FileExistsError as exc:
        raise InstallError(f"Installing {wheel.name} would overwrite {exc.filename}, which another package installed.") from exc
    except (zipfile.BadZipFile, InstallerError, ValueError, KeyError) as exc:
        raise InstallError(f"Cannot install {wheel.name} ({exc}).", hint="The wheel may be corrupt; download it again.") from exc
    return wheel_distribution(wheel, source)

