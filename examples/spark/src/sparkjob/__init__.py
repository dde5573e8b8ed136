"""sparkjob: what the example's UDFs import on the executors.

This package exists only inside the bundle that ``--archives`` ships, not in
the driver's Python, so a UDF that imports it proves the executors run the
bundle's interpreter.
"""

from __future__ import annotations

import os
import platform
import sys
import unicodedata

__all__ = ["normalize", "where"]


def normalize(text: str) -> str:
    """Case-fold and strip accents, so that "Élan" and "elan" count as one word."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def where() -> dict[str, str]:
    """Which Python runs this code, from where, in which working directory."""
    return {
        "executable": sys.executable,
        "prefix": sys.prefix,
        "python": platform.python_version(),
        "module": os.path.abspath(__file__),
        "cwd": os.getcwd(),
    }
