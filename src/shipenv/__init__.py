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

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from shipenv.errors import ShipenvError

if TYPE_CHECKING:
    from shipenv.build.pipeline import build
    from shipenv.model import BuildOptions, BuildResult

__all__ = ["BuildOptions", "BuildResult", "ShipenvError", "__version__", "build"]

#: The public names imported on first use: the build pipeline pulls in most of the package
#: (a tenth of a second), which ``shipenv deploy``, ``verify`` and ``inspect`` never need.
_LAZY = {"build": "shipenv.build.pipeline", "BuildOptions": "shipenv.model", "BuildResult": "shipenv.model"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """``shipenv`` itself: ``shipenv.build`` stays the function when the subpackage ``shipenv.build`` is imported.

    Importing ``shipenv.build.X`` binds the subpackage as the attribute ``build`` of ``shipenv``
    (the import system's last step); the public name is the function, as it was when it was
    imported eagerly. ``from shipenv.build import X`` and ``sys.modules`` are unaffected.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name == "build" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
