"""Copy an existing venv's packages into the bundle, refusing what cannot move.

The venv's files are copied as they are (they become relocatable like every
other file of the bundle); its scripts, which name the venv's interpreter in
their ``#!`` line, are regenerated as launchers from each distribution's
``entry_points.txt``. Editable installs and ``.pth`` files pointing outside the
venv would make the bundle depend on this machine: they are refused, with a
message saying how to fix them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

from packaging.utils import canonicalize_name

from shipenv.build import launchers
from shipenv.errors import InstallError, listing
from shipenv.model import Distribution, PythonInfo, Scheme

#: Never copied from a venv: installing into a deployed release would break its RECORD.
_VENV_SKIP = {"pip"}


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3.*/site-packages"))
    if not found:
        raise InstallError(f"--venv {venv} has no lib/python3.X/site-packages.")
    return found[-1]


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
    entries = []
    for info in sorted(site.glob("*.dist-info")):
        name, _ = _dist_name_version(info)
        if canonicalize_name(name) not in skip:
            entries += [(script, f"{module}:{attr}") for script, module, attr in _entry_points(info)]
    launchers.write(launchers.entry_launchers(entries, py, scheme), root)
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

