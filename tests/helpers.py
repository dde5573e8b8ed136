"""Helpers shared by the test modules: the CLI, pyenv interpreters, synthetic bundles.

Test modules import from here (and from :mod:`tests.chroots`), never from one
another or from ``conftest.py``; fixtures stay in ``conftest.py``.

The synthetic bundles are made in a few milliseconds with ``manifest.write``
and ``tarfile`` (``make_tree``/``pack``), so every refusal can get its own
archive, crafted with exactly one thing wrong and a RECORD that otherwise
matches.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shipenv import templates
from shipenv.bundle import codecs, frames, manifest
from shipenv.bundle.manifest import RecordEntry
from shipenv.deploy import releases as deploy

REPO = Path(__file__).resolve().parent.parent
PACKAGES_DIR = REPO / "tests" / "packages"
PYENV_ROOT = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
SHIPENV = [sys.executable, "-m", "shipenv"]


def pyenv_python(xy: str) -> Path:
    """The newest pyenv CPython X.Y on this machine; fails (never skips) when absent."""
    found = sorted(
        PYENV_ROOT.glob(f"versions/{xy}.*/bin/python{xy}"),
        key=lambda p: tuple(int(x) for x in p.parent.parent.name.split(".")[:3] if x.isdigit()),
    )
    found = [p for p in found if p.parent.parent.name.count(".") == 2 and p.parent.parent.name.replace(".", "").isdigit()]
    if not found:
        pytest.fail(f"pyenv CPython {xy} is not installed under {PYENV_ROOT}; run ci/setup.sh or `pyenv install {xy}`.")
    return found[-1]


def run_shipenv(*args: str | os.PathLike[str], check: bool = True, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    proc = subprocess.run([*SHIPENV, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"shipenv {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


#: ``built_bundle(key, *build_args)`` (the fixture in conftest.py) -> the artifact's path.
BuildFn = Callable[..., Path]


# -- synthetic bundles -------------------------------------------------------------------------

ARCH = os.uname().machine
HOST = deploy.HostFacts(ARCH, (2, 36))

Member = tuple[tarfile.TarInfo, bytes | None]

def make_tree(base: Path, version: str = "1.0", *, name: str = "app", floor: str | None = "2.17", arch: str = ARCH,
              big: int = 0, files: int = 0, shared: bytes = b"the same in every version\n" * 2000) -> Path:
    """A tiny bundle directory with a valid manifest and RECORD (and the real deploy.sh).

    ``big`` adds that many bytes of incompressible data (different per
    version), ``files`` that many small files: for crash and full-disk tests.
    """
    root = base / f"{name}-{version}"
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "app").mkdir(parents=True)
    app = root / "bin" / "app"
    app.write_text(f"#!/bin/sh\necho {name} {version}\n")
    app.chmod(0o755)
    (root / "bin" / "app-link").symlink_to("app")
    (root / "lib" / "app" / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (root / "lib" / "shared.txt").write_bytes(shared)
    rng = random.Random(f"{name}-{version}")
    if big:
        (root / "lib" / "data.bin").write_bytes(rng.randbytes(big))
    for i in range(files):
        path = root / "lib" / "many" / f"{i // 100:02d}" / f"f{i:04d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(200, 4000)))
    templates.install_bundle_files(root)
    metadata = {
        "name": name,
        "version": version,
        "platform": {"arch": arch, "glibc_floor": floor, "tag": f"linux_{arch}"},
        "python": {"version": "3.12.1", "executable": "bin/python3.12"},
    }
    manifest.write(root, manifest.Manifest.from_dict(metadata))
    return root


def members_of(tree: Path) -> list[Member]:
    """The tar entries ``archive.write`` makes of a tree: manifest and RECORD first."""
    top = tree.name
    head = [tree / manifest.MANIFEST, tree / manifest.RECORD]
    rest = sorted(p for p in tree.rglob("*") if p not in head)
    result: list[Member] = []
    for path in [tree, *head, *rest]:
        st = path.lstat()
        info = tarfile.TarInfo(f"{top}/{path.relative_to(tree).as_posix()}" if path != tree else top)
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = 1577836800
        data = None
        if path.is_symlink():
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
        elif path.is_dir():
            info.type = tarfile.DIRTYPE
        else:
            data = path.read_bytes()
            info.size = len(data)
        result.append((info, data))
    return result


def write_tar(dest: Path, members: list[Member]) -> Path:
    with tarfile.open(dest, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def pack(tree: Path, dest_dir: Path) -> Path:
    """``tree`` as ``dest_dir/NAME-VERSION.tar.gz``, as shipenv build --format tar.gz lays it out."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    return write_tar(dest_dir / f"{tree.name}.tar.gz", members_of(tree))


def file_member(name: str, data: bytes, mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
    return info, None


def with_record(members: list[Member], *extra: RecordEntry, drop: tuple[str, ...] = ()) -> list[Member]:
    """The same members with RECORD rewritten to also list ``extra`` (so only the tested flaw remains)."""
    out: list[Member] = []
    for info, data in members:
        if info.name.endswith("/" + manifest.RECORD.as_posix()):
            assert data is not None
            entries = manifest.parse_record(data)
            for path in drop:
                entries.pop(path, None)
            for entry in extra:
                entries[entry.path] = entry
            entries.pop(manifest.RECORD.as_posix(), None)
            data = manifest.render_record(entries.values())
            info = tarfile.TarInfo(info.name)
            info.size = len(data)
            info.mode = 0o644
        out.append((info, data))
    return out


def digest(data: bytes) -> RecordEntry:
    return RecordEntry("", hashlib.sha256(data).hexdigest(), len(data))


def index_of(path: Path) -> frames.Index:
    """The checked frame index of a ``.tar.zst`` (it must have one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        found = frames.read_index(fd, path, codecs.check_zstd_frames(fd, path))
    finally:
        os.close(fd)
    assert found is not None, path
    return found


def rewrite_index(path: Path, dest: Path, change: Callable[[list[frames.Frame]], list[frames.Frame]]) -> Path:
    """``path`` with its frame index replaced by ``change(frames)``: an index that lies about the frames it lists."""
    data = path.read_bytes()
    length = int.from_bytes(data[-frames.FOOTER : -len(frames.MAGIC)], "little")
    body = data[: len(data) - frames.FOOTER - length - 8]
    dest.write_bytes(body + frames.encode(change(list(index_of(path).frames))))
    return dest


def entry(path: str, data: bytes) -> RecordEntry:
    d = digest(data)
    return RecordEntry(path, d.sha256, d.size)


def check_release(path: Path) -> int:
    """What ``shipenv verify`` checks of an unpacked release: every RECORD row, and nothing else."""
    record = manifest.parse_record((path / manifest.RECORD).read_bytes())
    for rel, e in record.items():
        full = path / rel
        if e.symlink is not None:
            assert os.readlink(full) == e.symlink, rel
        elif e.sha256 is not None:
            assert not full.is_symlink() and manifest.hash_file(full) == (e.sha256, e.size), rel
    on_disk = {rel for rel, _ in manifest.walk(path)}
    assert on_disk == set(record), on_disk ^ set(record)
    return len(record)


@contextmanager
def small_tmpfs(point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"1m"``) mounted at ``point`` (made here) while the block runs; we run as root, as a deploy on a server does."""
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def snapshot(base: Path) -> dict[str, tuple[object, ...]]:
    """Everything under ``base`` that a deploy could change (directory and lock mtimes aside)."""
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            extra: object = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
            if stat.S_ISREG(st.st_mode):
                # The lock file is written (its pid) by every run, by design.
                mtime = 0 if name == ".shipenv.lock" else st.st_mtime_ns
                extra = (st.st_size, mtime, st.st_ino, Path(full).read_bytes())
            result[os.path.relpath(full, base)] = (st.st_mode, extra)
    return result


# -- the service stack -------------------------------------------------------------------------

#: The packages a typical service bundles (test_packages, test_libc), and a script that uses each.
STACK = ["django", "gunicorn", "requests", "numpy", "pandas", "cryptography", "lxml", "pillow", "pyyaml", "sqlalchemy", "psycopg[binary]"]

STACK_CHECK = r'''
import io, json, sys
import django, gunicorn, requests, numpy, pandas, cryptography, lxml, PIL, yaml, sqlalchemy, psycopg
from django.conf import settings
settings.configure(DEBUG=False, INSTALLED_APPS=["django.contrib.contenttypes"], DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})
django.setup()
frame = pandas.DataFrame({"k": ["a", "b", "a"], "v": [1, 2, 3]})
assert frame.groupby("k")["v"].sum().to_dict() == {"a": 4, "b": 2}
from lxml import etree
assert etree.fromstring(b"<r><i>1</i><i>2</i></r>").xpath("count(//i)") == 2
from cryptography.fernet import Fernet
f = Fernet(Fernet.generate_key()); assert f.decrypt(f.encrypt(b"secret")) == b"secret"
from PIL import Image
assert Image.new("RGB", (64, 48), "red").resize((16, 12)).size == (16, 12)
engine = sqlalchemy.create_engine("sqlite://")
with engine.connect() as conn:
    assert conn.execute(sqlalchemy.text("select 6 * 7")).scalar() == 42
assert yaml.safe_load("a: [1, 2]") == {"a": [1, 2]}
assert requests.Request("GET", "http://example.invalid/x", params={"q": 1}).prepare().url.endswith("x?q=1")
from psycopg import pq
assert pq.__impl__ == "binary", pq.__impl__
assert numpy.linalg.inv(numpy.eye(3)).trace() == 3.0
print(json.dumps({"prefix": sys.prefix, "django": django.__version__}))
'''


# -- real bundles ------------------------------------------------------------------------------

ASK_VERSION = (
    "import json, os, sys; "
    "print(json.load(open(os.path.join(sys.prefix, '.shipenv', 'manifest.json')))['version'], os.path.realpath(sys.prefix))"
)


def real_bundle(built_bundle: BuildFn, version: str) -> Path:
    """An interpreter-only bundle of pyenv's 3.12 as app-VERSION.tar.gz (shared with test_deploy_sh)."""
    return built_bundle(f"deploy-app-{version}", "--python", pyenv_python("3.12"), "--name", "app",
                        "--version", version, "--format", "tar.gz")


def requirements_file(directory: Path, lines: list[str]) -> Path:
    """``directory/requirements.txt`` holding ``lines``."""
    req = directory / "requirements.txt"
    req.write_text("\n".join(lines) + "\n")
    return req
