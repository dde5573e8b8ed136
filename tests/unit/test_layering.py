"""Fresh layers on their way to the tree (shipenv.build.layering): with a cache or without, the tree and who owns what are the same."""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path

import pytest

from shipenv.build import layering, layers
from shipenv.build.cache import BuildCache
from shipenv.bundle import manifest
from shipenv.errors import InstallError
from tests.unit.test_layers import NEEDLE, make_layer


def fresh(stage: Path, name: str = "pkg-1.0-py3-none-any.whl", key: str = "f" * 64) -> layering.Fresh:
    installed: Future[list[Path]] = Future()
    installed.set_result([])
    facts: Future[layers.LayerFacts] = Future()
    facts.set_result(layers.compute(stage, (NEEDLE,)))
    return layering.Fresh(name, stage, key, installed, facts)


def merged(tmp_path: Path, store: BuildCache | None) -> tuple[Path, layers.Ledger, layering.Fresh]:
    root = tmp_path / "root"
    root.mkdir(parents=True)
    layer = fresh(make_layer(tmp_path / "stage"))
    ledger = layers.Ledger((NEEDLE, str(root)), str(root))
    layering.merge_fresh(layer, store, root, ledger)
    return root, ledger, layer


def tree(root: Path) -> dict[str, bytes | str]:
    return {p.relative_to(root).as_posix(): os.readlink(p) if p.is_symlink() else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def test_a_fresh_layer_becomes_its_cache_entry_and_is_linked_into_the_tree(tmp_path: Path) -> None:
    store = BuildCache(tmp_path / "cache")
    root, ledger, layer = merged(tmp_path, store)
    assert not layer.stage.exists()  # renamed into the entry, not copied
    hit = store.get_layer("wheel", layer.key)
    assert hit is not None and hit.entry is not None and ledger.layers[0].entry == hit.entry
    linked = root / "lib" / "pkg" / "__init__.py"
    assert linked.stat().st_ino == (hit.entry / "tree" / "lib" / "pkg" / "__init__.py").stat().st_ino
    mine, others = ledger.owned(0, root)
    assert others == [] and mine == sorted(hit.facts.files)


def test_without_a_cache_the_same_tree_and_the_same_owner(tmp_path: Path) -> None:
    with_cache, ledger1, _ = merged(tmp_path / "a", BuildCache(tmp_path / "a" / "cache"))
    without, ledger2, layer = merged(tmp_path / "b", None)
    assert tree(with_cache) == tree(without)
    assert ledger1.owned(0, with_cache) == ledger2.owned(0, without)
    assert ledger2.layers[0].entry is None and not (layer.stage / "lib" / "pkg").exists()


@pytest.mark.parametrize("cached", [True, False])
def test_a_second_layer_with_other_bytes_in_the_same_file_is_refused(tmp_path: Path, cached: bool) -> None:
    store = BuildCache(tmp_path / "cache") if cached else None
    root, ledger, _ = merged(tmp_path, store)
    other = tmp_path / "other"
    (other / "lib" / "pkg").mkdir(parents=True)
    (other / "lib" / "pkg" / "__init__.py").write_text("VALUE = 2\n")
    with pytest.raises(InstallError, match=r"^other-1\.0-py3-none-any\.whl would overwrite files that another package installed: lib/pkg/__init__\.py\.$"):
        layering.merge_fresh(fresh(other, "other-1.0-py3-none-any.whl", "e" * 64), store, root, ledger)
    assert (root / "lib" / "pkg" / "__init__.py").read_text() == "VALUE = 1\n"


def test_owned_from_a_walk_the_caller_made_is_owned_from_lstat(tmp_path: Path) -> None:
    root, ledger, _layer = merged(tmp_path, BuildCache(tmp_path / "cache"))
    (root / "lib" / "pkg" / "__init__.py").unlink()
    (root / "lib" / "pkg" / "__init__.py").write_text("replaced by a later stage\n")
    stats = {rel: st for rel, _full, st in manifest.walk_stat(root)}
    mine, others = ledger.owned(0, root, stats)
    assert (mine, others) == ledger.owned(0, root) and others == ["lib/pkg/__init__.py"]
