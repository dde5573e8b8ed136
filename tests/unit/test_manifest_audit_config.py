"""RECORD round trips, audit classification, and [tool.shipenv] merging."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from shipenv import config
from shipenv.build import audit
from shipenv.bundle import manifest
from shipenv.errors import UsageError, listing


def test_record_round_trip_with_symlinks_and_odd_names(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3.12").write_bytes(b"elf")
    (tmp_path / "bin" / "python").symlink_to("python3.12")
    (tmp_path / "a, b \"c\".txt").write_text("odd")
    manifest.write(tmp_path, manifest.Manifest("x", "1", manifest.ManifestPython("3.12.1"), manifest.ManifestPlatform("x86_64")))
    entries = manifest.parse_record((tmp_path / manifest.RECORD).read_bytes())
    assert entries["bin/python"].symlink == "python3.12"
    assert entries['a, b "c".txt'].size == 3
    assert entries[".shipenv/manifest.json"].sha256 is not None
    assert entries[".shipenv/RECORD"].sha256 is None
    assert manifest.read(tmp_path).format == manifest.FORMAT_VERSION


def test_record_rejects_malformed_rows() -> None:
    with pytest.raises(ValueError):
        manifest.parse_record(b"only,two\n")


def test_versions() -> None:
    assert manifest.parse_version("2.31") == (2, 31)
    assert manifest.format_version((2, 36)) == "2.36"
    with pytest.raises(ValueError):
        manifest.parse_version("two")


def test_audit_separates_what_runs_from_metadata(tmp_path: Path) -> None:
    host = "/opt/buildhost/.pyenv/versions/3.12.1"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_text(f"#!{host}/bin/python3.12\nprint(1)\n")
    (tmp_path / "lib/python3.12").mkdir(parents=True)
    (tmp_path / "lib/python3.12/_sysconfigdata__linux.py").write_text(f"build_time_vars = {{'prefix': '{host}'}}\n")
    (tmp_path / "x.pth").write_text(f"{host}/lib\n")
    (tmp_path / "clean.py").write_text("print('nothing here')\n")
    findings = {f.path.as_posix(): f for f in audit.audit(tmp_path, [host, "/opt/buildhost/.pyenv"])}
    assert findings["bin/tool"].kind == "runs"
    assert findings["x.pth"].kind == "runs"
    assert findings["lib/python3.12/_sysconfigdata__linux.py"].kind == "metadata"
    assert "clean.py" not in findings
    assert findings["bin/tool"].needle == host  # the most specific path only


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = dict(project=None, fmt=None, entries=[], max_glibc=None, requirements=[], constraints=[],
                                   wheels=None, venv=None, output=Path("dist"), python=None, name=None, bundle_version=None,
                                   keep_stdlib=[], system_libs=[], report=False, level=None, threads=0, cache_dir=None, no_cache=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_tool_shipenv_table_and_flags_win(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\nversion = "1"\n[tool.shipenv]\npython = "3.12"\nentry = ["serve=p:main"]\nformat = "tar.gz"\nmax-glibc = "2.31"\n'
    )
    opts = config.build_options(_args(project=tmp_path))
    assert opts.python == "3.12" and opts.entries == (("serve", "p:main"),) and opts.fmt == "tar.gz" and opts.max_glibc == (2, 31)
    opts = config.build_options(_args(project=tmp_path, python="3.11", fmt="dir"))
    assert opts.python == "3.11" and opts.fmt == "dir"


def test_tool_shipenv_unknown_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.shipenv]\npyhton = "3.12"\n')
    with pytest.raises(UsageError, match="unknown key 'pyhton'"):
        config.build_options(_args(project=tmp_path))


def test_listing() -> None:
    assert listing(["a"]) == "a"
    assert listing([str(i) for i in range(8)], limit=3) == "0, 1, 2 (+ 5 more)"
