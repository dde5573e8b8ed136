"""The typed manifest: today's bytes, one clear error for what is not shipenv's, and the facts file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shipenv.bundle import manifest
from shipenv.bundle.manifest import Manifest
from shipenv.errors import ManifestError

#: What ``shipenv build`` wrote before the manifest was typed, key for key.
BUILT: dict[str, Any] = {
    "build": {"shipenv_version": "0.4.0", "source_date_epoch": 1577836800, "time": "2020-01-01T00:00:00Z"},
    "distributions": [{"name": "six", "source": "requirements", "version": "1.16.0"}],
    "format": 1,
    "launchers": "native",
    "name": "app",
    "platform": {"arch": "x86_64", "glibc_floor": "2.36", "tag": "manylinux_2_36_x86_64"},
    "python": {
        "abi": "cp312", "executable": "bin/python3.12", "implementation": "cpython",
        "site_packages": "lib/python3.12/site-packages", "soabi": "cpython-312-x86_64-linux-gnu", "version": "3.12.1",
    },
    "vendored_libraries": ["libpython3.12.so.1.0", "libssl.so.3"],
    "version": "2.0.0",
}  # fmt: skip
BUILT_BYTES = (json.dumps(BUILT, indent=2, sort_keys=True) + "\n").encode()


def test_round_trip_gives_exactly_the_bytes_shipenv_wrote() -> None:
    parsed = Manifest.parse(BUILT_BYTES)
    assert parsed.to_json() == BUILT_BYTES
    assert parsed.release == "app-2.0.0"
    assert parsed.platform.glibc_floor == "2.36"
    assert parsed.distributions[0].source == "requirements"


def test_unknown_keys_are_ignored_and_optional_ones_default() -> None:
    data = dict(BUILT, signer="ci@example.com", platform={"arch": "aarch64", "kernel_floor": "3.2"})
    del data["build"], data["distributions"]
    parsed = Manifest.from_dict(data)
    assert parsed.platform.arch == "aarch64"
    assert parsed.platform.glibc_floor is None
    assert parsed.distributions == ()
    assert parsed.build.source_date_epoch is None


def _without(key: str, sub: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BUILT_BYTES)
    if sub is None:
        del data[key]
    else:
        del data[key][sub]
    return data


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"{not json", "it is not JSON"),
        (b"[1, 2]", "it is not a JSON object"),
        (json.dumps(_without("name")).encode(), "it has no 'name'"),
        (json.dumps(_without("platform", "arch")).encode(), "it has no 'platform.arch'"),
        (json.dumps(dict(BUILT, version=2)).encode(), "'version' is not a string"),
        (json.dumps(dict(BUILT, python="3.12")).encode(), "'python' is not a JSON object"),
        (json.dumps(dict(BUILT, format=True)).encode(), "'format' is not an integer"),
        (json.dumps(dict(BUILT, distributions=[{"name": "six"}])).encode(), "it has no 'distributions[0].version'"),
        (json.dumps(dict(BUILT, platform={"arch": "x86_64", "glibc_floor": "2.3x"})).encode(), "is not a glibc version"),
    ],
)
def test_what_is_not_a_shipenv_manifest_is_one_sentence(data: bytes, why: str) -> None:
    with pytest.raises(ManifestError) as caught:
        Manifest.parse(data, source="app-2.0.0/.shipenv/manifest.json")
    assert caught.value.message.startswith("app-2.0.0/.shipenv/manifest.json is not a shipenv manifest: ")
    assert why in caught.value.message
    assert caught.value.message.count(".") >= 1 and caught.value.hint


def test_a_newer_format_asks_for_a_newer_shipenv() -> None:
    with pytest.raises(ManifestError, match="newer than this shipenv reads") as caught:
        Manifest.from_dict(dict(BUILT, format=2))
    assert "pip install -U shipenv" in (caught.value.hint or "")


def test_facts_file_is_written_listed_in_record_and_escaped(tmp_path: Path) -> None:
    odd = Manifest.from_dict(dict(BUILT, python=dict(BUILT["python"], abi="100%\tcp")))
    manifest.write(tmp_path, odd)
    data = (tmp_path / manifest.FACTS).read_bytes()
    assert b"arch=x86_64\n" in data and b"glibc_floor=2.36\n" in data and b"release=app-2.0.0\n" in data
    assert b"python_abi=100%25%09cp\n" in data
    assert manifest.parse_facts(data) == odd.facts()
    record = manifest.parse_record((tmp_path / manifest.RECORD).read_bytes())
    assert record[manifest.FACTS.as_posix()].sha256 is not None
    assert manifest.read(tmp_path) == odd


def test_reading_a_missing_manifest_is_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="Cannot read .*manifest.json: No such file"):
        manifest.read(tmp_path)


def test_bundled_libc_keys_round_trip_and_reach_the_facts() -> None:
    platform = {"arch": "x86_64", "glibc_floor": None, "tag": "linux_x86_64", "libc": "bundled", "glibc": "2.36",
                "kernel_floor": "3.2.0", "loader": "lib/ld-linux-x86-64.so.2"}  # fmt: skip
    data = (json.dumps(dict(BUILT, platform=platform), indent=2, sort_keys=True) + "\n").encode()
    parsed = Manifest.parse(data)
    assert parsed.to_json() == data
    assert parsed.platform.bundled_libc()["kernel_floor"] == "3.2.0"
    assert b"libc=bundled\n" in manifest.render_facts(parsed) and b"kernel_floor=3.2.0\n" in manifest.render_facts(parsed)


def test_a_name_with_a_newline_is_refused_at_build_time(tmp_path: Path) -> None:
    """No bundle is made that its own deploy.sh cannot deploy (it reads one name a line)."""
    tree = tmp_path / "app-1.0"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "new\nline.txt").write_text("x\n")
    meta = Manifest.from_dict({"name": "app", "version": "1.0", "platform": {"arch": "x86_64"}, "python": {"version": "3.12.1"}})
    with pytest.raises(ManifestError, match=r"^1 file name\(s\) or link target\(s\) in app-1.0 hold a newline, .*: 'lib/new\\nline.txt'\.$"):
        manifest.write(tree, meta)
    assert not (tree / ".shipenv").exists()



@pytest.mark.parametrize("meta_dir_before", [True, False])
def test_record_is_what_a_fresh_walk_gives(tmp_path: Path, meta_dir_before: bool) -> None:
    """write() walks the tree once and .shipenv/ again: RECORD lists every file in walk order, as scanning the finished tree does."""
    tree = tmp_path / "app-1.0"
    for rel in ("bin/python", "-odd/x", "#first/y", ".shipenv-later/z", "top.txt", "lib/a/b.py", ".aaa/c"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(rel)
    if meta_dir_before:
        (tree / ".shipenv" / "sub").mkdir(parents=True)
        (tree / ".shipenv" / "deploy.sh").write_text("#!/bin/sh\n")
        (tree / ".shipenv" / "sub" / "x").write_text("x")
    meta = Manifest.from_dict({"name": "app", "version": "1.0", "platform": {"arch": "x86_64"}, "python": {"version": "3.12.1"}})
    manifest.write(tree, meta)
    assert (tree / manifest.RECORD).read_bytes() == manifest.render_record(manifest.scan(tree))
