"""Serve one HTTP request with the bundle's own stack, then exit."""

import json
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server


def app(environ, start_response):
    import django
    import numpy

    body = json.dumps({"prefix": sys.prefix, "django": django.__version__, "sum": int(numpy.arange(5).sum())}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def serve():
    port = int(sys.argv[1])
    with make_server("127.0.0.1", port, app, handler_class=_Quiet) as server:
        print(f"listening on {port}", flush=True)
        server.handle_request()


def where():
    """Which interpreter and C library run this command (``--entry where=stackapp:where``)."""
    import platform

    print(f"WHERE {sys.executable} {platform.libc_ver()[1]}")
    return 0
