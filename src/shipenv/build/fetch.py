"""Download the wheels uv's lock names, a few at a time, each checked against the lock.

pip, given pins, downloads one wheel after another; uv has already said which
file each pin is (:class:`~shipenv.build.resolver.LockedFile`: URL, sha256,
size), so shipenv fetches those files itself on a few threads. Each is written
under a temporary name beside its destination, checked (size, then sha256, as
the lock gives them) and only then renamed into place: no reader ever sees half
a file, or one the lock does not describe.

HTTP goes through :mod:`urllib`, which honours ``https_proxy``, ``http_proxy``
and ``no_proxy``; TLS is verified against pip's configured ``cert`` (else
``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, as pip's requests would, else the
default store); the timeout is pip's ``timeout`` (15 s unless configured).
``file://`` URLs are copied.

pip stays the authority: whatever this path cannot do exactly as pip would is
left to pip, which then fetches (or builds) it as before and reports any error.
:func:`settings` refuses the whole path when pip's configuration sets
``client-cert``, ``trusted-host``, ``proxy``, a ``keyring-provider`` other than
``auto``/``disabled``, ``no-binary`` (pip would build from source) or an index
URL with credentials in it. :func:`fetch` leaves one pin to pip when its file
has no sha256 in the lock, a URL with credentials, a scheme other than https,
file or plain http to this host, or when its download fails in any way: an
HTTP 401/403 (pip may have credentials from a keyring or ``.netrc``), any other
HTTP, TLS or network error, or a file that is not the one the lock describes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shipenv.build.resolver import LockedFile

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

#: How many downloads run at once: enough to hide each request's latency, few enough for a small index.
WORKERS = 8
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Settings:
    """How to reach the indexes, from pip's configuration (:func:`settings`)."""

    cafile: str | None = None
    timeout: float = 15.0


class _Refused(Exception):
    """A file this path will not use (the reason is the message); pip fetches it instead."""


def settings(locations: dict[str, list[str]]) -> Settings | str:
    """The download settings pip's configuration implies, or why only pip may download (a phrase for the log)."""
    for key in ("client-cert", "trusted-host", "proxy"):
        if locations[key]:
            return f"pip's configuration sets {key}"
    if [v.lower() for v in locations["keyring-provider"]] not in ([], ["auto"], ["disabled"]):
        return "pip's configuration sets a keyring-provider"
    if locations["no-binary"] and locations["no-binary"] != [":none:"]:
        return "pip's configuration sets no-binary (pip builds those from source)"
    for url in locations["index-url"] + locations["extra-index-url"] + locations["find-links"]:
        if "@" in urlsplit(url).netloc:
            return "an index URL in pip's configuration has credentials"
    cafile = next(iter(locations["cert"]), None) or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
    timeout = 15.0
    for key in ("default-timeout", "timeout"):
        try:
            timeout = float(locations[key][0]) if locations[key] else timeout
        except ValueError:
            return f"pip's {key} is not a number"
    return Settings(cafile, timeout)


def unsupported(file: LockedFile) -> str | None:
    """Why this path cannot fetch ``file`` as pip would (None: it can)."""
    parts = urlsplit(file.url)
    if file.sha256 is None:
        return "the lock gives no sha256 for it"
    if "@" in parts.netloc:
        return "its URL has credentials"
    if parts.scheme in ("https", "file"):
        return None
    if parts.scheme == "http" and _is_local(parts.hostname or ""):
        return None  # pip takes plain HTTP only from this host (or a trusted-host, which is pip's)
    return f"its URL is {parts.scheme}:// on another host"


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch(jobs: dict[str, tuple[LockedFile, Path]], config: Settings, progress: Progress | None = None,
          workers: int = WORKERS) -> tuple[dict[str, Path], dict[str, str]]:
    """Fetch each pin's file into its directory: the files fetched, by pin, and for the others why not (pip's to do).

    ``jobs`` maps a pin to its locked file and the directory the wheel goes into.
    ``progress`` hears (files done, bytes so far), from one thread at a time.
    """
    done: dict[str, Path] = {}
    failed: dict[str, str] = {}
    todo: dict[str, tuple[LockedFile, Path]] = {}
    for pin, (file, directory) in jobs.items():
        reason = unsupported(file)
        if reason is None:
            todo[pin] = (file, directory)
        else:
            failed[pin] = reason
    if todo:
        try:
            opener = _opener(config)
        except OSError as exc:  # pip's cert file cannot be read (ssl.SSLError is an OSError): pip says so
            failed.update((pin, f"the certificates in {config.cafile} cannot be loaded ({exc})") for pin in todo)
            todo = {}
    meter = _Meter(progress)

    def one(pin: str) -> None:
        file, directory = todo[pin]
        try:
            done[pin] = _download(file, directory, opener, config.timeout, meter)
        except urllib.error.HTTPError as exc:
            failed[pin] = f"HTTP {exc.code} {exc.reason}" + (" (pip may have credentials for it)" if exc.code in (401, 403) else "")
        except (OSError, ValueError, _Refused) as exc:  # URLError, timeouts, TLS and disk errors are OSErrors
            failed[pin] = str(exc)
        meter.file_done()

    if todo:
        with ThreadPoolExecutor(max_workers=min(workers, len(todo)), thread_name_prefix="shipenv-fetch") as pool:
            list(pool.map(one, todo))
    for pin in sorted(failed):
        log.info("fetch: %s is left to pip: %s", pin, failed[pin])
    return done, failed


def _opener(config: Settings) -> urllib.request.OpenerDirector:
    """urllib with proxies from the environment and TLS verified against pip's certificates."""
    context = ssl.create_default_context(cafile=config.cafile)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))


def _download(file: LockedFile, directory: Path, opener: urllib.request.OpenerDirector, timeout: float, meter: _Meter) -> Path:
    """Fetch one file under a temporary name, check it against the lock, then rename it into place."""
    from shipenv import __version__

    if "/" in file.filename or file.filename.startswith("."):
        raise _Refused(f"the lock names an unsafe file name {file.filename!r}")
    dest = directory / file.filename
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{file.filename}.{os.getpid()}.{threading.get_ident()}.tmp"
    digest = hashlib.sha256()
    size = 0
    try:
        if urlsplit(file.url).scheme == "file":
            source = open(urllib.request.url2pathname(urlsplit(file.url).path), "rb")  # closed by the with below
        else:
            request = urllib.request.Request(file.url, headers={"User-Agent": f"shipenv/{__version__}"})
            source = opener.open(request, timeout=timeout)
        with source, open(tmp, "wb") as out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
                if file.size is not None and size > file.size:
                    raise _Refused(f"{file.url} is larger than the {file.size} bytes the lock says")
                meter.add(len(chunk))
        if file.size is not None and size != file.size:
            raise _Refused(f"{file.url} has {size} bytes, the lock says {file.size}")
        if digest.hexdigest() != file.sha256:
            raise _Refused(f"{file.url} does not match the sha256 the lock gives")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class _Meter:
    """Adds up what the threads fetched and tells ``progress`` at most ten times a second."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.lock = threading.Lock()
        self.files = 0
        self.nbytes = 0
        self.last = 0.0

    def add(self, n: int) -> None:
        with self.lock:
            self.nbytes += n
            self._tell(force=False)

    def file_done(self) -> None:
        with self.lock:
            self.files += 1
            self._tell(force=True)

    def _tell(self, *, force: bool) -> None:
        now = time.monotonic()
        if self.progress is not None and (force or now - self.last >= 0.1):
            self.last = now
            self.progress(self.files, self.nbytes)
