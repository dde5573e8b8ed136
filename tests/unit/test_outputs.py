"""The key of a whole build (build/outputs.py) and the cache's stored outputs (BuildCache.get_output/put_output).

Integration tests (tests/integration/test_outputs.py) build real bundles; these
check, without building, that inputs a test cannot change through the command
line (shipenv's templates, the host's package database, the host libraries the
layers came from) change the key or void the stored output.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path, PurePosixPath

import pytest

from shipenv import templates
from shipenv.build import cache, interpreter, output, outputs, pipeline
from shipenv.build.install import Sources
from shipenv.build.layers import Layer, LayerFacts
from shipenv.build.runner import REAL
from shipenv.model import AuditFinding, BuildOptions, BuildResult, PythonInfo
from tests.helpers import pyenv_python


@pytest.fixture(scope="module")
def py() -> PythonInfo:
    return interpreter.inspect(str(pyenv_python("3.12")))


def _key(py: PythonInfo, tmp_path: Path, *, layer: bool = False, **changes: object) -> str | None:
    """The output key of an interpreter-only build; with ``layer``, the real interpreter layer key (a walk of the stdlib)."""
    options = BuildOptions(output=tmp_path / "out", **changes)  # type: ignore[arg-type]
    target = output.target(options, "c", "1", py.machine)
    store = cache.BuildCache(tmp_path / "cache")
    layer_key = (lambda: pipeline._interpreter_key(py, options)) if layer else (lambda: "the interpreter layer")
    return outputs.plan(options, Sources(), py, target, store, layer_key, REAL).key


def test_the_key_is_stable_and_follows_the_options_that_change_the_bytes(py: PythonInfo, tmp_path: Path) -> None:
    base = _key(py, tmp_path)
    assert base is not None and base == _key(py, tmp_path)
    assert _key(py, tmp_path, threads=1) == base  # the bytes do not depend on the thread count
    for change in ({"entries": (("x", "m:f"),)}, {"source_date_epoch": 1}, {"compress_level": 5}, {"keep_stdlib": frozenset({"test"})},
                   {"max_glibc": (2, 17)}, {"system_libs": frozenset({"libz.so.1"})}):
        assert _key(py, tmp_path, **change) != base, change


def test_no_output_is_kept_without_a_cache_or_for_a_tree(py: PythonInfo, tmp_path: Path) -> None:
    options = BuildOptions(output=tmp_path / "out", fmt="dir")
    target = output.target(options, "c", "1", py.machine)
    assert outputs.plan(options, Sources(), py, target, cache.BuildCache(tmp_path / "cache"), lambda: "k", REAL).key is None
    options = BuildOptions(output=tmp_path / "out")
    target = output.target(options, "c", "1", py.machine)
    assert outputs.plan(options, Sources(), py, target, None, lambda: "k", REAL).key is None


def test_a_template_of_shipenv_changes_the_key(py: PythonInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "templates"
    shutil.copytree(templates.directory(), copy)
    monkeypatch.setattr(templates, "directory", lambda: copy)
    before = _key(py, tmp_path, layer=True)
    with (copy / "deploy.sh").open("a") as f:
        f.write("# changed\n")
    assert _key(py, tmp_path, layer=True) != before


def test_the_host_package_database_changes_the_key(py: PythonInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = tmp_path / "dpkg-status"
    status.write_text("Package: libssl3\nVersion: 3.0.1\n")
    monkeypatch.setattr(outputs, "_HOST_FILES", (status,))
    before = _key(py, tmp_path)
    status.write_text("Package: libssl3\nVersion: 3.0.17\n")  # an upgrade
    assert _key(py, tmp_path) != before


def _result(tmp_path: Path) -> BuildResult:
    archive = tmp_path / "c-1.tar.zst"
    archive.write_bytes(b"not really an archive" * 100)
    finding = AuditFinding(PurePosixPath("lib/x.pyc"), "/opt/buildhost", "metadata", "a string constant")
    return BuildResult(archive, "c-1", (2, 17), hashlib.sha256(archive.read_bytes()).hexdigest(), (finding,), ("libz.so.1",))


def _layer(tmp_path: Path, host_file: Path) -> Layer:
    """A layer entry as BuildCache.put leaves it, made from ``host_file``."""
    tree = tmp_path / "layer"
    tree.mkdir()
    (tree / "f").write_text("x")
    entry = cache.BuildCache(tmp_path / "cache").put("wheel", "k" * 64, tree, host_files=[host_file])
    assert entry is not None
    return Layer("a wheel", LayerFacts({}, ()), entry)


def test_a_kept_output_comes_back_as_stored(tmp_path: Path) -> None:
    store = cache.BuildCache(tmp_path / "cache")
    result, sbom = _result(tmp_path), tmp_path / "sbom.json"
    sbom.write_text("{}")
    outputs.keep(store, "a" * 64, result, sbom, [_layer(tmp_path, sbom)], fresh="/tmp/staging")
    hit = outputs.lookup(store, "a" * 64)
    assert hit is not None and hit.archive.read_bytes() == result.path.read_bytes()
    assert hit.result == BuildResult(Path(), "c-1", (2, 17), result.sha256, result.audit, ("libz.so.1",))
    outputs.copy(hit.archive, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == result.path.read_bytes()


@pytest.mark.parametrize("damage", ["edited", "sbom-touched", "host-file"])
def test_a_kept_output_that_changed_is_dropped(tmp_path: Path, damage: str) -> None:
    store = cache.BuildCache(tmp_path / "cache")
    host = tmp_path / "libfoo.so.1"
    host.write_bytes(b"\x7fELF v1")
    sbom = tmp_path / "sbom.json"
    sbom.write_text("{}")
    outputs.keep(store, "a" * 64, _result(tmp_path), sbom, [_layer(tmp_path, host)], fresh="/tmp/staging")
    (stored,) = (tmp_path / "cache" / "outputs").glob("*/*/archive")
    st = stored.stat()
    if damage == "edited":  # the same size and mtime, other bytes: its sha256 tells
        with stored.open("r+b") as f:
            f.write(b"N")
        os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "sbom-touched":  # a copy: its mtime (and ctime) tell
        os.utime(stored.with_name("sbom.cdx.json"), ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    else:
        host.write_bytes(b"\x7fELF v2, upgraded")
    assert outputs.lookup(store, "a" * 64) is None
    assert not stored.parent.exists()


def test_an_output_whose_report_names_the_staging_directory_is_not_kept(tmp_path: Path) -> None:
    store = cache.BuildCache(tmp_path / "cache")
    sbom = tmp_path / "sbom.json"
    sbom.write_text("{}")
    outputs.keep(store, "a" * 64, _result(tmp_path), sbom, [], fresh="/opt/buildhost")
    assert outputs.lookup(store, "a" * 64) is None


def test_a_hit_marks_the_entry_used_and_stays_a_hit(tmp_path: Path) -> None:
    """``shipenv cache --prune`` goes by the entry's mtime; touching it must not void the files' ctime check."""
    store = cache.BuildCache(tmp_path / "cache")
    sbom = tmp_path / "sbom.json"
    sbom.write_text("{}")
    outputs.keep(store, "a" * 64, _result(tmp_path), sbom, [], fresh="/tmp/staging")
    (entry,) = (tmp_path / "cache" / "outputs").glob("*/*")
    os.utime(entry, (1, 1))
    assert outputs.lookup(store, "a" * 64) is not None and entry.stat().st_mtime > 1
    assert outputs.lookup(store, "a" * 64) is not None


def test_the_kept_archive_is_a_link_that_an_edit_of_the_artifact_voids_and_a_removal_does_not(tmp_path: Path) -> None:
    store = cache.BuildCache(tmp_path / "cache")
    sbom = tmp_path / "sbom.json"
    sbom.write_text("{}")
    result = _result(tmp_path)
    outputs.keep(store, "a" * 64, result, sbom, [], fresh="/tmp/staging")
    (stored,) = (tmp_path / "cache" / "outputs").glob("*/*/archive")
    assert stored.stat().st_ino == result.path.stat().st_ino  # not written a second time
    kept = result.path.read_bytes()
    result.path.unlink()  # the user cleans dist/ (the link's ctime changes)
    result.path.write_bytes(b"the user's own file now")
    hit = outputs.lookup(store, "a" * 64)
    assert hit is not None and hit.archive.read_bytes() == kept

    (tmp_path / "b").mkdir()
    other = _result(tmp_path / "b")
    outputs.keep(store, "b" * 64, other, sbom, [], fresh="/tmp/staging")
    st = other.path.stat()
    with other.path.open("r+b") as f:  # the artifact edited in place, size and mtime kept: the link changed too
        f.write(b"N")
    os.utime(other.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert outputs.lookup(store, "b" * 64) is None
