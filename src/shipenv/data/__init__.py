"""Files shipenv reads or runs but never imports.

``policy/linux.json`` says which libraries a Linux target provides;
``probe.py`` and ``compile.py`` are scripts run by *another* interpreter (the
base Python being inspected, the bundle's own copy), so they are written for
CPython 3.8 and import nothing from shipenv.
"""

from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).parent


def path(*parts: str) -> Path:
    """The file ``parts`` inside this directory (it exists in a checkout and in a wheel)."""
    return DIRECTORY.joinpath(*parts)
