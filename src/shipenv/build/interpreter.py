"""Find a base CPython, ask it about itself, and copy what it needs at run time.

Paths are learned by running the interpreter (``sysconfig``), never guessed: a
pyenv build keeps its stdlib under its own prefix and links ``libpython``
shared, Debian's ``/usr/bin/python3.11`` links it statically and keeps its
stdlib in ``/usr/lib/python3.11``. Both become the same tree shape::

    bin/python3.X            the real interpreter ELF
    bin/python3, bin/python  relative symlinks to it
    lib/python3.X/           stdlib and lib-dynload (CPython finds them from bin/)
    lib/python3.X/site-packages/

``libpython`` and every other shared library are added by :mod:`shipenv.build.relocate`,
which follows the ELF ``NEEDED`` entries instead of special-casing them here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from shipenv import data
from shipenv.build.runner import REAL, Runner
from shipenv.errors import InterpreterError
from shipenv.model import STDLIB_OPTIONAL, CopyFile, CopyPlan, MakeSymlink, PythonInfo

_PROBE = data.path("probe.py")

#: Top-level stdlib entries each optional group removes, and lib-dynload modules.
_OPTIONAL_TOP: dict[str, tuple[str, ...]] = {
    "test": ("test",),
    "idlelib": ("idlelib",),
    "tkinter": ("tkinter", "turtle.py"),
    "turtledemo": ("turtledemo",),
    "ensurepip": ("ensurepip/_bundled",),
}
_OPTIONAL_DYNLOAD: dict[str, tuple[str, ...]] = {
    "tkinter": ("_tkinter.",),
    # CPython's own test helpers, built into lib-dynload.
    "test": ("_test", "_ctypes_test.", "_xxtestfuzz.", "xxlimited.", "xxlimited_35.", "xxsubtype."),
}
#: Test suites nested inside stdlib packages belong to the "test" group.
_NESTED_TESTS = re.compile(
    r"^(ctypes/test|distutils/tests|lib2to3/tests|sqlite3/test|unittest/test|tkinter/test)(/|$)"
)
#: Never copied: bytecode is rebuilt for the bundle, the base's own
#: site-packages is not part of the interpreter (DESIGN.md).
_ALWAYS_SKIP = ("site-packages", "dist-packages", "__pycache__")
#: Directories of the base's stdlib that no layer copies (its installed packages, its bytecode).
NOT_COPIED = _ALWAYS_SKIP


def find_python(spec: str | None) -> Path:
    """Turn ``--python`` (a path, a name on PATH, or a version like ``3.12``) into a file.

    A pyenv shim that refuses to run a version not selected is bypassed by
    looking in pyenv's own versions directory.
    """
    spec = spec or f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if "/" in spec:
        path = Path(spec).expanduser()
        if not path.exists():
            raise InterpreterError(
                f"--python {spec} does not exist.",
                hint="Give the path of a CPython executable, or a name on PATH such as python3.12.",
            )
        return path
    name = spec if not re.fullmatch(r"\d+\.\d+", spec) else f"python{spec}"
    candidates: list[Path] = []
    for root in _pyenv_roots():
        m = re.fullmatch(r"python(\d+\.\d+)", name)
        if m:
            versions = sorted(
                root.glob(f"versions/{m.group(1)}.*/bin/{name}"),
                key=lambda p: _version_key(p.parent.parent.name),
            )
            candidates.extend(reversed(versions))
    found = shutil.which(name)
    if found and "/shims/" not in found:
        return Path(found)
    if candidates:
        return candidates[0]
    if found:
        return Path(found)
    raise InterpreterError(
        f"--python {spec} was not found on PATH.",
        hint="Give the full path of a CPython executable, or install that version.",
    )


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _pyenv_roots() -> Iterator[Path]:
    env = os.environ.get("PYENV_ROOT")
    for candidate in (env, str(Path.home() / ".pyenv")):
        if candidate and Path(candidate, "versions").is_dir():
            yield Path(candidate)
            return


def probe(executable: Path, runner: Runner = REAL) -> dict[str, object]:
    """Run ``executable`` in isolated mode and return what it says about itself."""
    try:
        proc = runner.run([str(executable), "-I", "-S", str(_PROBE)], timeout=60)
    except OSError as exc:
        raise InterpreterError(
            f"--python {executable} cannot be run ({exc.strerror}).",
            hint="Give the path of a CPython 3.8 or newer executable.",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise InterpreterError(f"--python {executable} did not answer within 60 s.") from exc
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise InterpreterError(
            f"--python {executable} is not a working CPython 3.8 or newer ({first}).",
            hint="Give the path of a CPython executable, such as /usr/bin/python3.11.",
        )
    try:
        data: dict[str, object] = json.loads(proc.stdout)
    except ValueError as exc:
        raise InterpreterError(f"--python {executable} is not a CPython interpreter.") from exc
    return data


def inspect(spec: str | None, runner: Runner = REAL) -> PythonInfo:
    """Find and describe the base interpreter; a venv's python resolves to its base."""
    path = find_python(spec)
    data = probe(path, runner)
    if data.get("implementation") != "cpython":
        raise InterpreterError(
            f"--python {path} is {data.get('implementation')}, not CPython.",
            hint="shipenv bundles CPython; give a CPython executable.",
        )
    venv: Path | None = None
    if data["prefix"] != data["base_prefix"]:
        venv = Path(str(data["prefix"]))
        base = _base_of_venv(path, data)
        data = probe(base, runner)
        if data["prefix"] != data["base_prefix"]:
            raise InterpreterError(f"The base interpreter of venv {venv} is itself a venv.")
    version = tuple(int(v) for v in data["version"])  # type: ignore[attr-defined]
    if version < (3, 8):
        raise InterpreterError(f"--python {path} is Python {'.'.join(map(str, version))}; shipenv needs 3.8 or newer.")
    exe = Path(os.path.realpath(str(data["executable"])))
    if not _is_elf(exe):
        raise InterpreterError(
            f"--python {path} resolves to {exe}, which is not an ELF executable.",
            hint="Give the interpreter binary itself rather than a wrapper script.",
        )

    def opt_path(key: str) -> Path | None:
        value = data.get(key)
        return Path(str(value)) if value else None

    return PythonInfo(
        executable=exe,
        version=(version[0], version[1], version[2]),
        implementation="cpython",
        abiflags=str(data["abiflags"]),
        soabi=str(data["soabi"]),
        ext_suffix=str(data["ext_suffix"]),
        machine=str(data["machine"]),
        prefix=Path(str(data["base_prefix"])),
        stdlib=Path(str(data["stdlib"])),
        dynload=opt_path("dynload"),
        libdir=opt_path("libdir"),
        shared=bool(data["shared"]),
        ldlibrary=str(data["ldlibrary"]) if data.get("ldlibrary") else None,
        multiarch=str(data["multiarch"]) if data.get("multiarch") else None,
        was_venv=venv,
    )


def _base_of_venv(path: Path, data: dict[str, object]) -> Path:
    """The interpreter a venv was made from: its symlink target, or pyvenv.cfg's ``home``."""
    real = Path(os.path.realpath(str(data["executable"])))
    venv = Path(str(data["prefix"]))
    if not real.is_relative_to(venv.resolve()):
        return real
    cfg = venv / "pyvenv.cfg"
    home = None
    if cfg.is_file():
        for line in cfg.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                home = Path(value.strip())
    version = data["version"]
    if home is not None:
        for name in (f"python{version[0]}.{version[1]}", f"python{version[0]}", "python"):  # type: ignore[index]
            if (home / name).exists():
                return Path(os.path.realpath(home / name))
    raise InterpreterError(
        f"Cannot find the base interpreter of the venv {venv}.",
        hint="Pass the base interpreter itself with --python.",
    )


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def plan_copy(info: PythonInfo, keep: frozenset[str]) -> CopyPlan:
    """Decide every file of the interpreter layer, before anything is written."""
    unknown = keep - set(STDLIB_OPTIONAL) - {"all"}
    if unknown:
        raise InterpreterError(
            f"--keep-stdlib {sorted(unknown)[0]} is not a known part.",
            hint=f"Choose from: {', '.join(STDLIB_OPTIONAL)}, all.",
        )
    if "all" in keep:
        keep = frozenset(STDLIB_OPTIONAL)
    xy = info.xy
    exe_name = f"python{xy}"
    files: list[CopyFile] = [CopyFile(info.executable, PurePosixPath("bin", exe_name))]
    skipped: set[str] = set()
    dest_std = PurePosixPath("lib", f"python{xy}")
    dropped_top = {t for group, tops in _OPTIONAL_TOP.items() if group not in keep for t in tops}
    dropped_dyn = tuple(p for group, ps in _OPTIONAL_DYNLOAD.items() if group not in keep for p in ps)
    dynload = info.dynload
    for src, rel in _walk(info.stdlib):
        top = rel.parts[0]
        if top in _ALWAYS_SKIP or "__pycache__" in rel.parts:
            continue
        if dynload is not None and is_within(src, dynload):
            continue  # copied below, from wherever lib-dynload lives
        hit = next((t for t in dropped_top if rel.as_posix() == t or rel.as_posix().startswith(t + "/")), None)
        if hit is None and "test" not in keep and _NESTED_TESTS.match(rel.as_posix()):
            hit = rel.as_posix().split("/")[0] + "/" + rel.as_posix().split("/")[1]
        if hit is None and "static-lib" not in keep and top.startswith("config-") and _is_build_artifact(rel.name):
            hit = f"{top}/*.a"
        if hit is not None:
            skipped.add(hit)
            continue
        if top == "sitecustomize.py" and src.is_symlink():
            skipped.add(top)  # Debian's hook into /etc: not part of a portable tree
            continue
        files.append(CopyFile(src, dest_std / rel.as_posix()))
    if dynload is not None:
        for src, rel in _walk(dynload):
            if any(rel.name.startswith(p) for p in dropped_dyn):
                skipped.add(f"lib-dynload/{rel.name}")
                continue
            files.append(CopyFile(src, dest_std / "lib-dynload" / rel.as_posix()))
    dirs = (PurePosixPath("bin"), PurePosixPath("lib"), dest_std / "lib-dynload")
    symlinks = (
        MakeSymlink(PurePosixPath("bin", f"python{info.version[0]}"), exe_name),
        MakeSymlink(PurePosixPath("bin", "python"), exe_name),
    )
    return CopyPlan(tuple(files), symlinks, dirs, tuple(sorted(skipped)))


def _is_build_artifact(name: str) -> bool:
    """Static libraries and objects used only to link against Python."""
    return name.endswith((".a", ".o")) or ".so" in name


def is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
    except ValueError:
        return False
    return True


def _walk(root: Path) -> Iterator[tuple[Path, PurePosixPath]]:
    """Every file under root (symlinks to files included), in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__",))
        base = Path(dirpath)
        rel_dir = PurePosixPath(base.relative_to(root).as_posix())
        if rel_dir.parts and rel_dir.parts[0] in ("site-packages", "dist-packages"):
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            src = base / name
            if src.is_symlink() and not src.exists():
                continue
            yield src, rel_dir / name


def apply_copy(plan: CopyPlan, root: Path) -> None:
    """Write the interpreter layer into ``root``.

    Symlinks inside the source tree that stay inside it are kept as symlinks;
    anything else is copied as a regular file, so nothing points back at the host.
    """
    for d in plan.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for item in plan.files:
        dest = root / item.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.src, dest)
        mode = item.src.stat().st_mode & 0o777
        os.chmod(dest, (mode | 0o644) & 0o755)
    for link in plan.symlinks:
        dest = root / link.dest
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(link.target)


def ask_tree(python: Path, code: str, runner: Runner = REAL) -> object:
    """Run the copied interpreter with ``code`` that prints JSON, and return it (the host's library path unset)."""
    proc = runner.run([str(python), "-I", "-B", "-c", code], env_extra={"LD_LIBRARY_PATH": None}, timeout=120)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise InterpreterError(f"The copied interpreter {python.name} does not start in the new tree ({tail}).")
    return json.loads(proc.stdout)


SCHEME_CODE = (
    "import json, site, sys, sysconfig; "
    "print(json.dumps({'paths': sysconfig.get_paths(), 'prefix': sys.prefix, 'path': sys.path, "
    "'site': site.getsitepackages()}))"
)
