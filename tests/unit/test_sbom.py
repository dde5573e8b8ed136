"""The SBOM of a small made-up tree: every kind of component, its links, and byte-identical output.

The package manager is a stand-in here (``origins=``); the real dpkg answers for
a real bundle in tests/integration/test_trust.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cyclonedx.model.bom import Bom
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from shipenv.bundle import sbom
from shipenv.bundle.sbom import PackageOrigin

SITE = "lib/python3.12/site-packages"
METADATA = {
    "name": "app", "version": "2.0",
    "python": {"version": "3.12.1", "abi": "cp312", "executable": "bin/python3.12"},
    "platform": {"arch": "x86_64", "glibc_floor": "2.36", "tag": "manylinux_2_36_x86_64"},
    "distributions": [{"name": "Foo_Bar", "version": "1.0", "source": "index"}, {"name": "baz", "version": "2.0", "source": "wheelhouse"},
                      {"name": "qux", "version": "0.1", "source": "venv"}],
    "build": {"shipenv_version": "0.1.0", "source_date_epoch": 1700000000},
}


def dist_info(root: Path, name: str, version: str, headers: str) -> Path:
    info = root / SITE / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{headers}\n")
    return info


def make_tree(root: Path) -> Path:
    foo = dist_info(root, "foo_bar", "1.0", "License-Expression: MIT OR Apache-2.0\nRequires-Dist: baz>=1\n"
                    "Requires-Dist: qux; extra == 'fast'\nRequires-Dist: notbundled\nRequires-Dist: qux; python_version < '3'")
    (foo / "sboms").mkdir()
    (foo / "sboms" / "vendored.cdx.json").write_text('{"bomFormat": "CycloneDX"}\n')
    dist_info(root, "baz", "2.0", "Classifier: License :: OSI Approved :: BSD License\nRequires-Dist: qux")
    dist_info(root, "qux", "0.1", "License: Some custom licence text\n that goes on")
    (root / "bin").mkdir()
    (root / "bin" / "python3.12").write_bytes(b"\x7fELF interpreter")
    for lib in ("libssl.so.3", "libpython3.12.so.1.0", "libodd.so.1"):
        (root / "lib" / lib).write_bytes(b"\x7fELF " + lib.encode())
    (root / "lib" / "libssl.so").symlink_to("libssl.so.3")
    return root


def fake_origins(paths: list[Path]) -> dict[Path, PackageOrigin]:
    return {p: PackageOrigin("libssl3", "3.0.19-1~deb12u2", "amd64") for p in paths if p.name == "libssl.so.3"}


def build(root: Path) -> bytes:
    return sbom.build(root, METADATA, epoch=1700000000, wheel_digests={"foo-bar": "ab" * 32, "baz": "cd" * 32},
                      find_library=lambda soname: Path("/usr/lib/x86_64-linux-gnu") / soname, origins=fake_origins)


def test_every_component_and_link(tmp_path: Path) -> None:
    data = build(make_tree(tmp_path / "t"))
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode()) is None
    doc = json.loads(data)
    assert doc["metadata"]["timestamp"] == "2023-11-14T22:13:20+00:00"
    assert doc["metadata"]["component"]["purl"] == "pkg:generic/app@2.0"
    refs = {c["bom-ref"]: c for c in doc["components"]}
    foo = refs["pkg:pypi/foo-bar@1.0"]
    assert foo["name"] == "Foo_Bar" and foo["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert foo["licenses"] == [{"expression": "MIT OR Apache-2.0"}]
    assert foo["externalReferences"][0]["type"] == "bom"
    assert foo["externalReferences"][0]["url"] == f"{SITE}/foo_bar-1.0.dist-info/sboms/vendored.cdx.json"
    assert refs["pkg:pypi/baz@2.0"]["licenses"] == [{"license": {"name": "BSD License"}}]
    assert refs["pkg:pypi/qux@0.1"]["licenses"] == [{"license": {"name": "Some custom licence text"}}]
    assert "hashes" not in refs["pkg:pypi/qux@0.1"]  # copied from a venv: no wheel
    edges = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    # Only unconditional edges between bundled distributions (the extra and the python_version < 3 one are not).
    assert edges["pkg:pypi/foo-bar@1.0"] == ["pkg:pypi/baz@2.0"]
    assert edges["pkg:pypi/baz@2.0"] == ["pkg:pypi/qux@0.1"]
    assert edges["bundle"] == ["cpython", "pkg:pypi/baz@2.0", "pkg:pypi/foo-bar@1.0", "pkg:pypi/qux@0.1"]
    assert edges["cpython"] == ["lib/libodd.so.1", "lib/libpython3.12.so.1.0", "lib/libssl.so.3"]

    ssl = refs["lib/libssl.so.3"]
    assert (ssl["name"], ssl["version"]) == ("libssl3", "3.0.19-1~deb12u2")
    assert ssl["purl"].startswith("pkg:deb/") and "libssl3@3.0.19-1~deb12u2?arch=amd64" in ssl["purl"]
    assert {"name": "shipenv:host-path", "value": "/usr/lib/x86_64-linux-gnu/libssl.so.3"} in ssl["properties"]
    assert refs["lib/libpython3.12.so.1.0"]["version"] == "3.12.1"
    assert not [p for p in refs["lib/libpython3.12.so.1.0"]["properties"] if p["name"] == "shipenv:host-path"]  # names no build host
    assert refs["lib/libodd.so.1"]["name"] == "libodd.so.1" and "version" not in refs["lib/libodd.so.1"]
    assert "lib/libssl.so" not in refs  # a symlink is not another library


def test_same_tree_same_bytes_and_the_serial_follows_the_content(tmp_path: Path) -> None:
    one, two = build(make_tree(tmp_path / "a")), build(make_tree(tmp_path / "b"))
    assert one == two
    changed = make_tree(tmp_path / "c")
    (changed / "lib" / "libodd.so.1").write_bytes(b"\x7fELF changed")
    other = build(changed)
    assert json.loads(other)["serialNumber"] != json.loads(one)["serialNumber"]


def test_write_puts_it_in_the_tree(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    path = sbom.write(root, METADATA, epoch=1700000000, origins=lambda paths: {})
    assert path == root / ".shipenv" / "sbom.cdx.json"
    assert sbom.read(root) == json.loads(path.read_text())
    assert sbom.read(tmp_path) is None


def test_the_serial_number_is_the_one_a_second_rendering_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cyclonedx.output.json import JsonV1Dot6

    once = build(make_tree(tmp_path / "a"))
    rendered: list[bytes] = []
    real = sbom._render

    def twice(bom: Bom) -> bytes:
        out = real(bom)  # leaves the serial number it wrote in the Bom
        rendered.append((JsonV1Dot6(bom).output_as_string(indent=2) + "\n").encode())
        return out

    monkeypatch.setattr(sbom, "_render", twice)
    assert build(make_tree(tmp_path / "b")) == once == rendered[0]


def test_the_site_directorys_dist_info_wins_over_a_vendored_one(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    # A package vendoring another distribution's metadata, sorting before the real one.
    vendored = root / SITE / "aaa" / "_vendor" / "qux-0.0.dist-info"
    vendored.mkdir(parents=True)
    (vendored / "METADATA").write_text("Metadata-Version: 2.4\nName: qux\nVersion: 0.0\nLicense: vendored\n")
    metadata = {**METADATA, "python": {**METADATA["python"], "site_packages": SITE}}  # type: ignore[dict-item]
    doc = json.loads(sbom.build(root, metadata, epoch=1700000000, origins=lambda paths: {}))
    qux = next(c for c in doc["components"] if c["bom-ref"] == "pkg:pypi/qux@0.1")
    assert qux["licenses"] == [{"license": {"name": "Some custom licence text"}}]
    assert {"name": "shipenv:dist-info", "value": f"{SITE}/qux-0.1.dist-info"} in qux["properties"]
