"""``python -m webapp``: serve (same as ``bin/app``), or ``--selftest``.

``python -m webapp --selftest`` checks an installed release without opening a
port: the application answers a request, gunicorn and its settings load. It is
what ``shipenv deploy --check 'bin/python -m webapp --selftest'`` runs before
switching a server to a new release.
"""

from __future__ import annotations

import io
import json
import sys
from wsgiref.util import setup_testing_defaults


def selftest() -> int:
    """Check this release: the app answers, gunicorn loads it with our settings."""
    from gunicorn.app.wsgiapp import WSGIApplication

    from webapp import app

    problems = []
    environ: dict[str, object] = {"wsgi.errors": io.StringIO()}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    data = json.loads(b"".join(app(environ, lambda status, headers: statuses.append(status))))
    if statuses != ["200 OK"]:
        problems.append(f"GET / answered {statuses}")
    if data.get("prefix") != sys.prefix:
        problems.append(f"GET / reported prefix {data.get('prefix')!r}, not {sys.prefix!r}")

    # What bin/app does, short of binding a port: parse the settings, import the app.
    saved, sys.argv = sys.argv, ["app", "--config", "python:webapp.gunicorn_conf", "webapp:app"]
    try:
        server = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]", prog="app")
        loaded = server.load()
    finally:
        sys.argv = saved
    if loaded is not app:
        problems.append(f"gunicorn loaded {loaded!r} instead of webapp.app")
    if server.cfg.accesslog != "-":
        problems.append("gunicorn did not read webapp.gunicorn_conf")

    if problems:
        print("webapp selftest FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"webapp {data['version']} selftest ok: Python {data['python']} at {data['prefix']}")
    return 0


def main() -> None:
    if sys.argv[1:] == ["--selftest"]:
        sys.exit(selftest())
    from webapp.serve import main as serve

    serve(sys.argv[1:])


if __name__ == "__main__":
    main()
