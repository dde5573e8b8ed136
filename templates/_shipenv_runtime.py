"""Imported at start-up by ``_shipenv_runtime.pth`` inside a shipenv bundle.

The bundle's launchers run the interpreter with ``-E`` so that the host's
``PYTHONPATH``/``PYTHONHOME`` cannot change what the bundle imports. ``-E``
also drops harmless settings that containers rely on; this module re-applies
the ones that can be applied after start-up, and changes nothing else.
"""

import os
import sys


def _apply() -> None:
    if not sys.flags.ignore_environment:
        return  # the bare interpreter, run directly: leave it as any Python behaves
    if sys.version_info < (3, 11):
        # 3.11+ learns this from __PYVENV_LAUNCHER__; older versions report the
        # real ELF, whose children would run without -E -s. Point them back at the
        # launcher so subprocess and multiprocessing stay inside the bundle.
        launcher = os.path.join(os.path.dirname(sys.executable), "python")
        if os.path.basename(sys.executable).startswith("python3.") and os.path.isfile(launcher):
            sys.executable = launcher
    env = os.environ
    if env.get("PYTHONDONTWRITEBYTECODE"):
        sys.dont_write_bytecode = True
    encoding = env.get("PYTHONIOENCODING")
    if encoding:
        enc, _, errors = encoding.partition(":")
        for stream in (sys.stdout, sys.stderr, sys.stdin):
            try:
                stream.reconfigure(encoding=enc or None, errors=errors or None)
            except (AttributeError, LookupError, ValueError):
                pass
    if env.get("PYTHONUNBUFFERED"):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(write_through=True)
            except (AttributeError, ValueError):
                pass
    if env.get("PYTHONWARNINGS"):
        import warnings

        for spec in reversed(env["PYTHONWARNINGS"].split(",")):
            try:
                warnings._setoption(spec)  # the parser -W uses
            except Exception:
                pass
    if env.get("PYTHONFAULTHANDLER"):
        import faulthandler

        faulthandler.enable()


_apply()
