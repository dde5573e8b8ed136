"""``bin/app``: serve ``webapp:app`` with gunicorn.

Starts from the settings in :mod:`webapp.gunicorn_conf`; options given on the
command line come later and win (``bin/app --bind 0.0.0.0:8000 --workers 4``).
Any gunicorn option works, and so do gunicorn's ``PORT``, ``WEB_CONCURRENCY``
and ``GUNICORN_CMD_ARGS`` environment variables.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    from gunicorn.app.wsgiapp import run

    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["app", "--config", "python:webapp.gunicorn_conf", *args, "webapp:app"]
    run(prog="app")


if __name__ == "__main__":
    main()
