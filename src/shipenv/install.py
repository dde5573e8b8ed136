"""Put the application's packages into the tree.

Four sources, one result: requirements files, a project directory, a
wheelhouse, or an existing venv. Resolution and building go through pip run by
the *bundled* interpreter, so markers and wheel tags are the target's; wheels
are installed with :mod:`installer` into the scheme the copied interpreter
reports (Debian's says ``local/lib/python3.11/dist-packages``). A venv is
copied as it is and then relocated like everything else.

Console and GUI scripts become launchers (``templates/script.py``) that find the
bundle from their own location.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from installer import install as installer_install
from installer.destinations import SchemeDictionaryDestination
from installer.exceptions import InstallerError
from installer.records import RecordEntry
from installer.sources import WheelFile
from installer.utils import Scheme as InstallerScheme
from packaging.tags import Tag, compatible_tags, cpython_tags, platform_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from shipenv import interpreter, resolver, templates
from shipenv.errors import InstallError, ResolveError, listing
from shipenv.model import BuildOptions, Distribution, PythonInfo

log = logging.getLogger(__name__)

Say = Callable[[str], None]

#: Never copied from a venv: installing into a deployed release would break its RECORD.
_VENV_SKIP = {"pip"}


@dataclass(frozen=True)
class Scheme:
    """Where the copied interpreter itself says things go, relative to the tree root."""

    purelib: PurePosixPath
    platlib: PurePosixPath
    scripts: PurePosixPath
    data: PurePosixPath
    headers: PurePosixPath


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
        venv = options.venv.resolve()
        host.append(venv)
        python = str(venv / "bin" / "python")
        venv_site = _venv_site(venv)
    if options.wheels is not None:
        host.append(options.wheels.resolve())
    return Sources(name, version, python, tuple(host), venv_site)


def _project_metadata(project: Path) -> dict[str, str]:
    import tomllib

    pyproject = project / "pyproject.toml"
    if not pyproject.is_file():
        if (project / "setup.py").is_file():
            return {}
        raise ResolveError(f"{project} has neither a pyproject.toml nor a setup.py.", hint="Give a Python project directory.")
    data = tomllib.loads(pyproject.read_text())
    table = data.get("project", {})
    out = {}
    if isinstance(table.get("name"), str):
        out["name"] = table["name"]
    if isinstance(table.get("version"), str):
        out["version"] = table["version"]
    return out


def _venv_site(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3.*/site-packages"))
    if not found:
        raise InstallError(f"--venv {venv} has no lib/python3.X/site-packages.")
    return found[-1]


def tree_scheme(python: Path, root: Path) -> Scheme:
    """Ask the copied interpreter where packages go (Debian says ``dist-packages``)."""
    data = interpreter.ask_tree(python, interpreter.SCHEME_CODE)
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


# --------------------------------------------------------------------------- launchers


def launcher_env(py: PythonInfo) -> str:
    """3.11+ takes ``__PYVENV_LAUNCHER__`` as ``sys.executable`` and unsets it at start-up,
    so children that run ``sys.executable`` come back through ``bin/python``; older
    versions would leave it in the environment for every child, so they get nothing."""
    return '__PYVENV_LAUNCHER__="$d/python" ' if py.version[:2] >= (3, 11) else ""


def python_launcher(py: PythonInfo) -> str:
    return templates.render("python.sh", xy=py.xy, launcher_env=launcher_env(py))


def script_launcher(py: PythonInfo, name: str, module: str, attr: str) -> str:
    import_name = attr.split(".")[0] if attr else module.rsplit(".", 1)[-1]
    if attr:
        call = f"{attr}()"
        module_text = module
    else:
        # "name = package.module" with no attribute: run the module's main().
        module_text, _, import_name = module.rpartition(".")
        call = f"{import_name}.main()" if module_text else f"{module}.main()"
        if not module_text:
            return templates.render("script.py", name=name, target=module, xy=py.xy, launcher_env=launcher_env(py),
                                    module=module, import_name="main", call="main()")
    return templates.render("script.py", name=name, target=f"{module}:{attr}", xy=py.xy,
                            launcher_env=launcher_env(py), module=module_text, import_name=import_name, call=call)


def write_python_launchers(py: PythonInfo, root: Path) -> None:
    text = python_launcher(py)
    for name in ("python", f"python{py.version[0]}"):
        path = root / "bin" / name
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_text(text)
        os.chmod(path, 0o755)


# --------------------------------------------------------------------------- install


def prepare_tree(py: PythonInfo, root: Path, scheme: Scheme) -> None:
    """Launchers for ``bin/python`` and the start-up module that re-applies safe settings."""
    write_python_launchers(py, root)
    _install_runtime(root, scheme)


def collect_wheels(
    sources: Sources,
    options: BuildOptions,
    py: PythonInfo,
    python: Path,
    wheel_dir: Path,
    say: Say,
    store: Path | None = None,
) -> list[tuple[Path, str]]:
    """Every wheel to install, with where it came from: resolved, or a wheelhouse.

    With uv available, uv resolves (in well under a second) and only the wheels
    missing from ``store`` (shipenv's wheel cache) are fetched or built by pip;
    without uv, or if uv cannot resolve, pip does everything and has the last word.
    """
    if options.wheels is not None and not options.requirements and options.project is None:
        return [(w, "wheelhouse") for w in select_wheels(options.wheels, py)]
    if not (options.requirements or options.project is not None):
        return []
    say("Resolving and building wheels")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    uv = resolver.find_uv()
    if uv is not None:
        pins = resolver.uv_compile(uv, python, options)
        if pins is not None:
            return _wheels_for_pins(pins, python, options, py, wheel_dir, store)
    return pip_wheel(python, options, wheel_dir)


def _wheels_for_pins(
    pins: list[str], python: Path, options: BuildOptions, py: PythonInfo, wheel_dir: Path, store: Path | None
) -> list[tuple[Path, str]]:
    found: list[Path] = []
    missing: list[str] = []
    tags = target_tags(py)
    for pin in pins:
        cached = resolver.lookup(store, pin, tags) if store is not None else None
        if cached is not None:
            found.append(cached)
        else:
            missing.append(pin)
    if missing:
        built = pip_wheel(python, options, wheel_dir, pins=missing)
        for wheel, _source in built:
            if store is not None and resolver.is_index_pin_wheel(wheel, missing):
                resolver.remember(store, wheel)
        found += [w for w, _ in built]
    return [(w, _source_of(w, options)) for w in found]


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


def write_entries(options: BuildOptions, py: PythonInfo, root: Path, scheme: Scheme) -> None:
    """``--entry NAME=module:function`` commands in ``bin/``."""
    for name, target in options.entries:
        module, _, attr = target.partition(":")
        _write_launcher(root / scheme.scripts / name, script_launcher(py, name, module, attr))


def _install_runtime(root: Path, scheme: Scheme) -> None:
    site = root / scheme.purelib
    site.mkdir(parents=True, exist_ok=True)
    for name in ("_shipenv_runtime.py", "_shipenv_runtime.pth"):
        (site / name).write_text(templates.read(name))


def _write_launcher(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    os.chmod(path, 0o755)


def _pip_home() -> Path:
    """A copy of pip's package that the bundled interpreter can import (pip is pure Python)."""
    import importlib.util

    spec = importlib.util.find_spec("pip")
    if spec is None or spec.origin is None:
        raise ResolveError("pip is not installed next to shipenv; it is needed to resolve requirements.", hint="pip install pip")
    return Path(spec.origin).parent.parent


_PIP_MAIN = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from pip._internal.cli.main import main; sys.argv[0] = 'pip'; sys.exit(main())"
)


def pip_wheel(
    python: Path, options: BuildOptions, wheel_dir: Path, *, pins: list[str] | None = None
) -> list[tuple[Path, str]]:
    """Resolve and build every wheel with pip running inside the bundled interpreter.

    With ``pins`` (a resolution already made), fetch or build exactly those, without dependencies.
    """
    with tempfile.TemporaryDirectory(prefix="shipenv-pip-") as tmp:
        pip_copy = Path(tmp) / "pip-home"
        pip_copy.mkdir()
        shutil.copytree(_pip_home() / "pip", pip_copy / "pip", ignore=shutil.ignore_patterns("__pycache__"))
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
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
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
    """installer's scheme destination, writing shipenv launchers instead of absolute-shebang scripts."""

    def __init__(self, scheme_dict: dict[str, str], py: PythonInfo) -> None:
        super().__init__(scheme_dict, interpreter="/bin/false", script_kind="posix")
        self.py = py

    def write_script(self, name: str, module: str, attr: str, section: str) -> RecordEntry:
        text = script_launcher(self.py, name, module, attr).encode()
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


# --------------------------------------------------------------------------- venv


def copy_venv(site: Path, root: Path, scheme: Scheme, py: PythonInfo) -> list[Distribution]:
    """Copy a venv's site-packages; regenerate its scripts as launchers; refuse what cannot move."""
    editable = _editables(site)
    if editable:
        raise InstallError(
            f"The venv has editable installs, which point at source directories on this machine: {listing(editable)}.",
            hint="Install them normally (`pip install .` without -e) or build from the project directory with `shipenv build PROJECT`.",
        )
    bad_pth = _absolute_pth(site)
    if bad_pth:
        raise InstallError(
            f"The venv has .pth files adding directories outside it: {listing(bad_pth)}.",
            hint="Install those directories as packages, or remove the .pth files.",
        )
    venv_version = site.parent.name.removeprefix("python")
    if venv_version != py.xy:
        raise InstallError(f"The venv is for Python {venv_version}, but the bundle's Python is {py.xy}.", hint="Leave out --python or give the venv's own Python.")
    dest = root / scheme.purelib
    skip = {canonicalize_name(n) for n in _VENV_SKIP}
    dists: list[Distribution] = []
    skipped_files: set[str] = set()
    for info in sorted(site.glob("*.dist-info")):
        name, version = _dist_name_version(info)
        if canonicalize_name(name) in skip:
            skipped_files |= _record_files(info)
            continue
        dists.append(Distribution(canonicalize_name(name), version, "venv"))
    for entry in sorted(site.iterdir()):
        rel = entry.name
        if rel in skipped_files or rel == "__pycache__" or any(rel.startswith(f"{s}-") and rel.endswith(".dist-info") for s in _VENV_SKIP):
            continue
        target = dest / rel
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target, follow_symlinks=False)
    for info in sorted(site.glob("*.dist-info")):
        name, _ = _dist_name_version(info)
        if canonicalize_name(name) in skip:
            continue
        for script, module, attr in _entry_points(info):
            _write_launcher(root / scheme.scripts / script, script_launcher(py, script, module, attr))
    return dists


def _record_files(info: Path) -> set[str]:
    record = info / "RECORD"
    if not record.is_file():
        return set()
    tops = set()
    for row in csv.reader(io.StringIO(record.read_text(errors="replace"))):
        if row and not row[0].startswith(".."):
            tops.add(row[0].split("/")[0])
    return tops


def _dist_name_version(info: Path) -> tuple[str, str]:
    meta = info / "METADATA"
    name = version = ""
    if meta.is_file():
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Name:") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Version:") and not version:
                version = line.split(":", 1)[1].strip()
            elif not line.strip():
                break
    if not name:
        stem = info.name[: -len(".dist-info")]
        name, _, version = stem.partition("-")
    return name, version


def _entry_points(info: Path) -> list[tuple[str, str, str]]:
    path = info / "entry_points.txt"
    if not path.is_file():
        return []
    import configparser

    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    result = []
    for section in ("console_scripts", "gui_scripts"):
        if parser.has_section(section):
            for name, value in parser.items(section):
                target = value.split("[")[0].strip()
                module, _, attr = target.partition(":")
                result.append((name.strip(), module.strip(), attr.strip()))
    return result


def _editables(site: Path) -> list[str]:
    found = []
    for info in sorted(site.glob("*.dist-info")):
        direct = info / "direct_url.json"
        if direct.is_file():
            try:
                data = json.loads(direct.read_text())
            except ValueError:
                continue
            if data.get("dir_info", {}).get("editable"):
                found.append(_dist_name_version(info)[0])
    found += [p.name for p in sorted(site.glob("*.egg-link"))]
    return found


def _absolute_pth(site: Path) -> list[str]:
    bad = []
    for pth in sorted(site.glob("*.pth")):
        for line in pth.read_text(errors="replace").splitlines():
            line = line.strip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue
            target = Path(line) if os.path.isabs(line) else site / line
            try:
                target.resolve().relative_to(site.parent.parent.parent.resolve())
            except ValueError:
                bad.append(f"{pth.name} ({line})")
    return bad


# --------------------------------------------------------------------------- text relocation

_SHEBANG = re.compile(rb"^#!\s*(\S*python[\d.]*)\b")


def relocate_text(root: Path, scheme: Scheme, py: PythonInfo, sources: Sources) -> None:
    """Scripts in ``bin/`` whose ``#!`` names a host Python become bundle launchers.

    Scripts that are not entry points (a wheel's ``.data/scripts``, a venv's
    hand-written tools) keep their body; only the first line changes, to the
    polyglot header that finds the bundle's interpreter.
    """
    bin_dir = root / scheme.scripts
    for path in sorted(bin_dir.iterdir()) if bin_dir.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as f:
            head = f.read(512)
        m = _SHEBANG.match(head)
        if not m or not m.group(1).startswith(b"/"):
            continue
        body = path.read_bytes().split(b"\n", 1)[1] if b"\n" in path.read_bytes() else b""
        header = templates.render("script.py", name=path.name, target="script", xy=py.xy, launcher_env=launcher_env(py),
                                  module="sys", import_name="exit", call="0").split("'''\n", 2)
        text = header[0] + "'''\n" + header[1] + "'''\n"
        path.write_bytes(text.encode() + body)
        os.chmod(path, 0o755)
