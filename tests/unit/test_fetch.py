"""uv's lock and the parallel downloads (shipenv.build.resolver's lock, shipenv.build.fetch).

Wheels are served from ``file://`` URLs in ``tmp_path`` and from an HTTP server
this test starts on 127.0.0.1; uv and pip are faked by a runner. Nothing here
reaches an index.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from packaging.tags import Tag

from shipenv.build import fetch, install, resolver
from shipenv.build.resolver import LockedFile
from shipenv.build.runner import Completed
from shipenv.model import BuildOptions, PythonInfo

TAGS = [Tag("cp311", "cp311", "manylinux_2_17_x86_64"), Tag("cp311", "abi3", "manylinux_2_17_x86_64"), Tag("py3", "none", "any")]

LOCK = '''lock-version = "1.0"
created-by = "uv"

[[packages]]
name = "SQLAlchemy"
version = "2.1.9"
sdist = { url = "https://files.example/sqlalchemy-2.1.9.tar.gz", size = 10, hashes = { sha256 = "00" } }
wheels = [
    { url = "https://files.example/sqlalchemy-2.1.9-py3-none-any.whl", size = 20, hashes = { sha256 = "AA" } },
    { url = "https://files.example/sqlalchemy-2.1.9-cp311-cp311-manylinux_2_17_x86_64.whl", size = 30, hashes = { sha256 = "bb" } },
]

[[packages]]
name = "idna"
version = "3.20"
wheels = [{ url = "file:///opt/pypi/files/idna-3.20-py3-none-any.whl", hashes = { sha256 = "cc" } }]

[[packages]]
name = "torch"
version = "2.13.0+cpu"
wheels = [{ url = "https://download.example/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_17_x86_64.whl", hashes = { sha256 = "ee" } }]

[[packages]]
name = "srcpkg"
version = "1.0"
sdist = { url = "https://files.example/srcpkg-1.0.tar.gz", size = 10, hashes = { sha256 = "dd" } }
'''


@pytest.fixture(autouse=True)
def clean_pip_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No pip configuration but what a test writes, and no PIP_* variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg"))
    for name in list(os.environ):
        if name.startswith("PIP_") or name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SHIPENV_RESOLVER"):
            monkeypatch.delenv(name)


# -- the lock ------------------------------------------------------------------------------------


def test_a_lock_of_index_packages_gives_the_pins_and_every_wheel() -> None:
    resolution = resolver.parse_lock(LOCK)
    assert resolution is not None
    assert resolution.pins == ["sqlalchemy==2.1.9", "idna==3.20", "torch==2.13.0+cpu", "srcpkg==1.0"]
    assert [f.filename for f in resolution.files["sqlalchemy==2.1.9"]] == [
        "sqlalchemy-2.1.9-py3-none-any.whl", "sqlalchemy-2.1.9-cp311-cp311-manylinux_2_17_x86_64.whl"]
    assert resolution.files["sqlalchemy==2.1.9"][0] == LockedFile(
        "sqlalchemy-2.1.9-py3-none-any.whl", "https://files.example/sqlalchemy-2.1.9-py3-none-any.whl", "aa", 20)
    (idna,) = resolution.files["idna==3.20"]
    assert idna.size is None and idna.sha256 == "cc"  # uv gives file:// indexes no size
    assert "srcpkg==1.0" not in resolution.files  # an sdist only: pip builds it
    (torch,) = resolution.files["torch==2.13.0+cpu"]
    assert torch.filename == "torch-2.13.0+cpu-cp311-cp311-manylinux_2_17_x86_64.whl"  # the URL's %2B is not in the name
    assert resolver.best_locked(resolution, "torch==2.13.0+cpu", TAGS) == torch


def test_a_lock_with_a_project_directory_does_not_give_the_pins() -> None:
    text = LOCK + '\n[[packages]]\nname = "app"\ndirectory = { path = "/src/app" }\n'
    assert resolver.parse_lock(text) is None  # uv_resolve asks for them as pip reads them
    assert set(resolver.parse_lock_files(text)) == {"sqlalchemy==2.1.9", "idna==3.20", "torch==2.13.0+cpu"}


def test_the_best_tag_for_the_interpreter_is_the_wheel_taken() -> None:
    resolution = resolver.parse_lock(LOCK)
    assert resolution is not None
    best = resolver.best_locked(resolution, "sqlalchemy==2.1.9", TAGS)
    assert best is not None and best.filename == "sqlalchemy-2.1.9-cp311-cp311-manylinux_2_17_x86_64.whl"
    assert resolver.best_locked(resolution, "sqlalchemy==2.1.9", [Tag("py3", "none", "any")]) == resolution.files["sqlalchemy==2.1.9"][0]
    assert resolver.best_locked(resolution, "sqlalchemy==2.1.9", [Tag("cp312", "cp312", "win_amd64")]) is None
    assert resolver.best_locked(resolution, "srcpkg==1.0", TAGS) is None
    assert resolver.best_locked(resolution, "idna==3.19", TAGS) is None  # not the version uv pinned


def test_uv_is_asked_for_a_lock_and_given_pips_configured_constraints(tmp_path: Path) -> None:
    site = tmp_path / "xdg" / "pip" / "pip.conf"
    site.parent.mkdir(parents=True)
    site.write_text(f"[global]\nconstraint = {tmp_path / 'cap.txt'}\n")
    runner = LockRunner(LOCK)
    req = tmp_path / "req.txt"
    req.write_text("sqlalchemy\n")
    resolution = resolver.uv_resolve(Path("/fake/bin/uv"), tmp_path / "python", BuildOptions(output=tmp_path / "out", requirements=(req,)), runner)
    assert resolution is not None and resolution.pins == ["sqlalchemy==2.1.9", "idna==3.20", "torch==2.13.0+cpu", "srcpkg==1.0"]
    (argv,) = runner.calls
    assert argv[argv.index("--format") + 1] == "pylock.toml"
    assert argv[argv.index("-c") + 1] == str(tmp_path / "cap.txt")  # pip would apply it: so does uv


# -- pip's settings ------------------------------------------------------------------------------


def locations(**set_: list[str]) -> dict[str, list[str]]:
    return {key: set_.get(key.replace("-", "_"), []) for key in resolver.PIP_KEYS}


def test_pips_cert_and_timeout_are_used() -> None:
    assert fetch.settings(locations(cert=["/etc/ca.pem"], default_timeout=["180"])) == fetch.Settings("/etc/ca.pem", 180.0)
    assert fetch.settings(locations()) == fetch.Settings(None, 15.0)


@pytest.mark.parametrize("setting", [{"client_cert": ["/c.pem"]}, {"trusted_host": ["mirror"]}, {"proxy": ["http://p:3128"]},
                                     {"keyring_provider": ["subprocess"]}, {"no_binary": [":all:"]},
                                     {"extra_index_url": ["https://user:secret@private.example/simple"]}])
def test_settings_this_path_does_not_honour_leave_every_download_to_pip(setting: dict[str, list[str]]) -> None:
    assert isinstance(fetch.settings(locations(**setting)), str)


def test_files_this_path_cannot_fetch_as_pip_would() -> None:
    assert fetch.unsupported(LockedFile("a-1-py3-none-any.whl", "https://h/a-1-py3-none-any.whl", "00", 1)) is None
    assert fetch.unsupported(LockedFile("a-1-py3-none-any.whl", "http://127.0.0.1:8/a-1-py3-none-any.whl", "00", 1)) is None
    assert fetch.unsupported(LockedFile("a-1-py3-none-any.whl", "http://mirror.example/a.whl", "00", 1)) is not None
    assert fetch.unsupported(LockedFile("a-1-py3-none-any.whl", "https://u:p@h/a.whl", "00", 1)) is not None
    assert fetch.unsupported(LockedFile("a-1-py3-none-any.whl", "https://h/a.whl", None, 1)) is not None


# -- downloads -----------------------------------------------------------------------------------


def served(directory: Path, name: str, content: bytes) -> LockedFile:
    """A wheel file in ``directory``, described as a lock would (file:// URL, sha256, size)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(content)
    return LockedFile(name, (directory / name).as_uri(), hashlib.sha256(content).hexdigest(), len(content))


def test_files_are_fetched_checked_and_renamed_into_place(tmp_path: Path) -> None:
    files = {f"pkg{i}==1.0": served(tmp_path / "index", f"pkg{i}-1.0-py3-none-any.whl", b"PK" + bytes([i]) * 1000) for i in range(5)}
    heard: list[tuple[int, int]] = []
    done, failed = fetch.fetch({pin: (f, tmp_path / "store" / pin.split("=")[0]) for pin, f in files.items()}, fetch.Settings(),
                               lambda n, b: heard.append((n, b)))
    assert failed == {}
    for pin, file in files.items():
        assert done[pin] == tmp_path / "store" / pin.split("=")[0] / file.filename
        assert done[pin].read_bytes() == (tmp_path / "index" / file.filename).read_bytes()
    assert heard[-1] == (5, 5 * 1002)
    assert not [p for p in (tmp_path / "store").rglob(".*")]  # no temporary file left


def test_a_file_that_is_not_the_locks_is_refused(tmp_path: Path) -> None:
    good = served(tmp_path / "index", "a-1.0-py3-none-any.whl", b"PK right")
    wrong_hash = LockedFile(good.filename, good.url, hashlib.sha256(b"PK other").hexdigest(), good.size)
    wrong_size = LockedFile(good.filename, good.url, good.sha256, (good.size or 0) + 1)
    for file in (wrong_hash, wrong_size):
        done, failed = fetch.fetch({"a==1.0": (file, tmp_path / "store")}, fetch.Settings())
        assert done == {} and "a==1.0" in failed
        assert not (tmp_path / "store" / good.filename).exists()  # never renamed into place
        assert list((tmp_path / "store").iterdir()) == []  # and the partial file is gone


class _Index(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/private/"):
            self.send_error(401, "Unauthorized")
        else:
            super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def index(tmp_path: Path) -> Iterator[str]:
    """An HTTP index on 127.0.0.1 serving ``tmp_path / "http"``; ``/private/`` answers 401."""
    root = tmp_path / "http"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Index(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_over_http_a_401_is_left_to_pip_and_the_rest_is_fetched(tmp_path: Path, index: str) -> None:
    ok = served(tmp_path / "http", "a-1.0-py3-none-any.whl", b"PK from http")
    public = LockedFile(ok.filename, f"{index}/{ok.filename}", ok.sha256, ok.size)
    private = LockedFile("b-1.0-py3-none-any.whl", f"{index}/private/b-1.0-py3-none-any.whl", "00", 3)
    missing = LockedFile("c-1.0-py3-none-any.whl", f"{index}/c-1.0-py3-none-any.whl", "00", 3)
    done, failed = fetch.fetch({"a==1.0": (public, tmp_path / "s"), "b==1.0": (private, tmp_path / "s"), "c==1.0": (missing, tmp_path / "s")},
                               fetch.Settings())
    assert done == {"a==1.0": tmp_path / "s" / ok.filename} and done["a==1.0"].read_bytes() == b"PK from http"
    assert "401" in failed["b==1.0"] and "404" in failed["c==1.0"]


# -- the build: fetched where it can be, pip for the rest --------------------------------------


class LockRunner:
    """Answers uv by writing ``lock`` where it is told (-o), and pip wheel by building ``pip_makes``; records argv."""

    def __init__(self, lock: str, pip_makes: Sequence[str] = ()) -> None:
        self.lock = lock
        self.pip_makes = pip_makes
        self.calls: list[list[str]] = []

    def run(
        self, argv: Sequence[str], *, env_extra: Mapping[str, str | None] | None = None, cwd: Path | None = None, timeout: float | None = None
    ) -> Completed:
        self.calls.append(list(argv))
        if argv[0].endswith("/uv"):
            Path(argv[argv.index("-o") + 1]).write_text(self.lock)
            return Completed(0, "", "")
        wheel_dir = Path(argv[argv.index("--wheel-dir") + 1])
        for name in self.pip_makes:
            (wheel_dir / name).write_bytes(b"PK built")
        return Completed(0, "", "")


def _py311() -> PythonInfo:
    return PythonInfo(Path("/x/bin/python3.11"), (3, 11, 7), "cpython", "", "", "", "x86_64", Path("/x"), Path("/x/lib"), None, None, True, None, None)


def test_pip_starts_only_for_what_could_not_be_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver, "find_uv", lambda: Path("/fake/bin/uv"))
    six = served(tmp_path / "index", "six-1.16.0-py2.py3-none-any.whl", b"PK six")
    bad = served(tmp_path / "index", "bad-1.0-py3-none-any.whl", b"PK bad")
    lock = (f'[[packages]]\nname = "six"\nversion = "1.16.0"\nwheels = [{{ url = "{six.url}", hashes = {{ sha256 = "{six.sha256}" }} }}]\n'
            f'[[packages]]\nname = "bad"\nversion = "1.0"\nwheels = [{{ url = "{bad.url}", hashes = {{ sha256 = "{"0" * 64}" }} }}]\n'
            '[[packages]]\nname = "srcpkg"\nversion = "1.0"\nsdist = { url = "https://h/srcpkg-1.0.tar.gz", hashes = { sha256 = "00" } }\n')
    runner = LockRunner(lock, pip_makes=["bad-1.0-py3-none-any.whl", "srcpkg-1.0-py3-none-any.whl"])
    req = tmp_path / "req.txt"
    req.write_text("six\nbad\nsrcpkg\n")
    store = tmp_path / "cache" / "wheels"
    wd = tmp_path / "wd"
    said: list[str] = []
    wheels = install.collect_wheels(install.Sources(), BuildOptions(output=tmp_path / "out", requirements=(req,)), _py311(),
                                    Path("/tree/bin/python3.11"), wd, said.append, store=store, runner=runner)
    # six came from the lock's URL into the store; pip fetched the mismatched one and built the sdist.
    assert wheels == [(store / "six" / six.filename, "index"), (wd / "bad-1.0-py3-none-any.whl", "index"),
                      (wd / "srcpkg-1.0-py3-none-any.whl", "index")]
    assert (store / "six" / six.filename).read_bytes() == b"PK six"
    _uv, pip = runner.calls
    assert (Path(pip[pip.index("-r") + 1]).name, "--no-deps" in pip) == ("pins.txt", True)
    assert "Downloading 2 wheels" in said
    # The next build finds all three in the store: neither a download nor pip.
    again = LockRunner(lock)
    assert [w for w, _ in install.collect_wheels(install.Sources(), BuildOptions(output=tmp_path / "out", requirements=(req,)), _py311(),
                                                 Path("/tree/bin/python3.11"), tmp_path / "wd2", said.append, store=store, runner=again)] == [
        store / "six" / six.filename, store / "bad" / "bad-1.0-py3-none-any.whl", store / "srcpkg" / "srcpkg-1.0-py3-none-any.whl"]
    assert len(again.calls) == 1


def test_with_a_client_cert_in_pips_config_pip_fetches_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver, "find_uv", lambda: Path("/fake/bin/uv"))
    monkeypatch.setenv("PIP_CLIENT_CERT", str(tmp_path / "me.pem"))
    six = served(tmp_path / "index", "six-1.16.0-py2.py3-none-any.whl", b"PK six")
    lock = f'[[packages]]\nname = "six"\nversion = "1.16.0"\nwheels = [{{ url = "{six.url}", hashes = {{ sha256 = "{six.sha256}" }} }}]\n'
    runner = LockRunner(lock, pip_makes=[six.filename])
    req = tmp_path / "req.txt"
    req.write_text("six\n")
    wheels = install.collect_wheels(install.Sources(), BuildOptions(output=tmp_path / "out", requirements=(req,)), _py311(),
                                    Path("/tree/bin/python3.11"), tmp_path / "wd", lambda _m: None, store=tmp_path / "store", runner=runner)
    assert wheels == [(tmp_path / "wd" / six.filename, "index")]
    assert len(runner.calls) == 2  # uv, then pip
