"""Layer facts (shipenv.build.layers): what a cache layer knows about its files, and when the tree may use it.

A build assembles RECORD, the audit and the glibc floor from its layers; a file
that a later stage replaced or edited after the merge must be read again, or
RECORD would promise bytes the bundle does not hold.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from shipenv.build import audit, layers, placing
from shipenv.build.cache import BuildCache
from shipenv.bundle import manifest

NEEDLE = "/opt/build-host/prefix"


def make_layer(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "pkg").mkdir(parents=True)
    (root / "bin" / "tool").write_text(f"#!{NEEDLE}/bin/python3\nprint('tool')\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "tool-link").symlink_to("tool")
    (root / "lib" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "lib" / "pkg" / "notes.txt").write_text(f"built in {NEEDLE}\n")
    shutil.copy(os.path.realpath("/bin/true"), root / "lib" / "true")  # a real ELF: NEEDED libc, GLIBC_ versions
    return root


def merged(tmp_path: Path, needles: tuple[str, ...] = (NEEDLE,)) -> tuple[Path, layers.Ledger]:
    """A layer stored in a cache, fetched back and merged into a tree, as a rebuild does."""
    store = BuildCache(tmp_path / "cache")
    layer = make_layer(tmp_path / "layer")
    store.put("wheel", "a" * 64, layer, facts=layers.compute(layer, needles))
    hit = store.get_layer("wheel", "a" * 64)
    assert hit is not None and hit.entry is not None
    root = tmp_path / "root"
    root.mkdir()
    clashes, placed = placing.merge_layer(hit, root)
    assert clashes == []
    # What the merge says it placed (no lstat for a hard link) is what lstat says.
    assert placed == {rel: layers.signature(os.lstat(root / rel)) for rel in hit.facts.files}
    ledger = layers.Ledger((NEEDLE, str(root)), str(root))
    ledger.add(hit, root, placed)
    return root, ledger


def test_merge_layer_reports_clashes_and_skips_identical_files(tmp_path: Path) -> None:
    root, _ledger = merged(tmp_path)
    store = BuildCache(tmp_path / "cache")
    other = tmp_path / "other"
    (other / "lib" / "pkg").mkdir(parents=True)
    (other / "lib" / "pkg" / "__init__.py").write_text("VALUE = 1\n")  # the same bytes: no clash
    (other / "lib" / "pkg" / "notes.txt").write_text("other\n")  # other bytes: a clash
    (other / "bin").mkdir()
    (other / "bin" / "tool-link").symlink_to("elsewhere")
    (other / "lib" / "new.py").write_text("NEW = 1\n")
    store.put("wheel", "c" * 64, other)
    hit = store.get_layer("wheel", "c" * 64)
    assert hit is not None
    clashes, placed = placing.merge_layer(hit, root)
    assert clashes == ["bin/tool-link", "lib/pkg/notes.txt"]
    assert sorted(placed) == ["lib/new.py"]
    assert (root / "lib" / "pkg" / "notes.txt").read_text() == f"built in {NEEDLE}\n"


def test_record_from_the_layer_is_the_record_of_the_bytes(tmp_path: Path) -> None:
    root, ledger = merged(tmp_path)
    assert manifest.scan(root, known=ledger.record) == manifest.scan(root)
    st = os.lstat(root / "lib" / "pkg" / "__init__.py")
    assert ledger.record("lib/pkg/__init__.py", st) == manifest.RecordEntry(
        "lib/pkg/__init__.py", manifest.hash_file(root / "lib" / "pkg" / "__init__.py")[0], 10
    )
    assert ledger.record("bin/tool-link", os.lstat(root / "bin" / "tool-link")) == manifest.RecordEntry("bin/tool-link", symlink="tool")


def test_a_file_changed_after_the_merge_is_hashed_again(tmp_path: Path) -> None:
    root, ledger = merged(tmp_path)
    replaced = root / "lib" / "pkg" / "__init__.py"
    new = root / "lib" / "pkg" / ".new"
    new.write_text("VALUE = 2\n")  # same size, new inode: how the stages rewrite a file
    os.replace(new, replaced)
    edited = root / "lib" / "pkg" / "notes.txt"
    with edited.open("r+b") as f:  # edited in place, through the hard link into the cache entry
        f.write(b"B")
    # An edit moves the mtime; set it apart explicitly, as the kernel's clock tick is coarser than this test.
    os.utime(edited, ns=(edited.stat().st_mtime_ns + 10**9,) * 2)
    os.utime(root / "lib" / "true", ns=(0, 0))  # touched: same bytes, but nothing vouches for it now
    (root / "lib" / "added.py").write_text("ADDED = 1\n")

    rows = {e.path: e for e in manifest.scan(root, known=ledger.record)}
    assert rows == {e.path: e for e in manifest.scan(root)}
    assert rows["lib/pkg/__init__.py"].sha256 == manifest.hash_file(replaced)[0]
    assert rows["lib/pkg/notes.txt"].sha256 == manifest.hash_file(edited)[0]
    assert "lib/added.py" in rows
    for rel in ("lib/pkg/__init__.py", "lib/pkg/notes.txt", "lib/true", "lib/added.py"):
        assert ledger.record(rel, os.lstat(root / rel)) is None, rel
    assert ledger.record("bin/tool", os.lstat(root / "bin" / "tool")) is not None


def test_audit_and_glibc_facts_from_the_layer_match_reading_the_files(tmp_path: Path) -> None:
    root, ledger = merged(tmp_path)
    needles = (NEEDLE, str(root))
    from_layers = audit.audit(root, needles, known=ledger.findings)
    assert from_layers == audit.audit(root, needles)
    assert [(f.path.as_posix(), f.kind) for f in from_layers] == [("bin/tool", "runs"), ("lib/pkg/notes.txt", "metadata")]
    infos = layers.glibc_infos(root, ledger)
    assert infos == layers.glibc_infos(root, None)
    info = infos["lib/true"]
    assert info is not None and "libc.so.6" in info.needed and info.glibc_versions
    assert list(infos) == ["lib/true"]


def test_a_layer_not_searched_for_a_needle_is_audited_again(tmp_path: Path) -> None:
    root, ledger = merged(tmp_path, needles=())  # a layer made by a build that searched for nothing
    st = os.lstat(root / "bin" / "tool")
    assert ledger.findings("bin/tool", st) is None  # read again: its facts cannot say
    assert ledger.record("bin/tool", st) is not None  # its digest still holds
    assert audit.audit(root, (NEEDLE,), known=ledger.findings) == audit.audit(root, (NEEDLE,))


def test_facts_survive_the_cache_and_catch_an_edit(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    layer = make_layer(tmp_path / "layer")
    facts = layers.compute(layer, (NEEDLE,))
    store.put("wheel", "b" * 64, layer, facts=facts)
    hit = store.get_layer("wheel", "b" * 64)
    assert hit is not None and hit.entry is not None
    assert {rel: (f.sha256, f.size, f.executable, f.symlink, f.elf, f.hits) for rel, f in hit.facts.files.items()} == {
        rel: (f.sha256, f.size, f.executable, f.symlink, f.elf, f.hits) for rel, f in facts.files.items()
    }
    assert hit.facts.files["bin/tool"].executable and not hit.facts.files["lib/pkg/__init__.py"].executable
    assert layers.check(hit.entry / "tree", hit.facts) is None
    os.chmod(hit.entry / "tree" / "lib" / "pkg" / "__init__.py", 0o755)
    assert layers.check(hit.entry / "tree", hit.facts) == "lib/pkg/__init__.py changed"
    assert store.get_layer("wheel", "b" * 64) is None
