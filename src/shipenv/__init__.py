"""shipenv: relocatable, self-contained Python application bundles for Linux.

A bundle is one directory tree (or an archive of it) holding a CPython
interpreter, its standard library, the application's installed wheels and every
shared library they need that the target cannot be trusted to have. Nothing in
it names the build machine; it runs from wherever it is unpacked.

The public API mirrors the command line::

    from shipenv import BuildOptions, build
    result = build(BuildOptions(python="python3.12", name="hello", version="1.0",
                                output=Path("out"), fmt="dir"))
"""

from __future__ import annotations

__version__ = "0.1.0"

from shipenv.build.pipeline import build
from shipenv.errors import ShipenvError
from shipenv.model import BuildOptions, BuildResult

__all__ = ["BuildOptions", "BuildResult", "ShipenvError", "__version__", "build"]
