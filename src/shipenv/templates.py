"""Text templates shipped with shipenv (launchers, activate scripts, the deploy script).

They live in the repository's top-level ``templates/`` directory and are
installed as ``shipenv/templates`` inside the wheel.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

#: Files copied into every bundle: template name → path inside the bundle.
BUNDLE_FILES = {
    "deploy.sh": ".shipenv/deploy.sh",
    "activate": "bin/activate",
    "activate.fish": "bin/activate.fish",
    "activate.csh": "bin/activate.csh",
}


def directory() -> Path:
    packaged = Path(__file__).with_name("templates")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "templates"


def read(name: str) -> str:
    return (directory() / name).read_text()


def render(template: str, **values: str) -> str:
    """Fill ``${name}`` placeholders (``string.Template``); shell's own ``$`` is written ``$$``."""
    return string.Template(read(template)).substitute(values)


def install_bundle_files(root: Path) -> None:
    """Copy the files every bundle carries (for example the POSIX deploy script)."""
    for name, dest in BUNDLE_FILES.items():
        src = directory() / name
        if not src.is_file():
            continue
        target = root / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        os.chmod(target, 0o755 if name == "deploy.sh" else 0o644)
