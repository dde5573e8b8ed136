"""webapp: a WSGI application that says which Python serves it.

``app`` is the WSGI callable (``gunicorn webapp:app``). Every answer is JSON;
``GET /`` reports the version and where the interpreter runs from, which is
how the examples check that a moved or deployed bundle serves from itself.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import version

__all__ = ["app", "info"]

__version__ = version("webapp")

StartResponse = Callable[..., object]


def info() -> dict[str, str]:
    """What ``GET /`` answers: the app, its Python, and where that Python lives."""
    return {
        "app": "webapp",
        "version": __version__,
        "python": platform.python_version(),
        "prefix": sys.prefix,
        "executable": sys.executable,
    }


def app(environ: dict[str, object], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point."""
    path = environ.get("PATH_INFO") or "/"
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        status, body = "405 Method Not Allowed", {"error": "only GET is served"}
    elif path == "/":
        status, body = "200 OK", info()
    elif path == "/healthz":
        status, body = "200 OK", {"status": "ok"}
    else:
        status, body = "404 Not Found", {"error": f"no such page: {path}"}
    data = json.dumps(body).encode() + b"\n"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
