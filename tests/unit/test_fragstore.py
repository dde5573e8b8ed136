"""Where fragments' compressed streams are kept between builds (shipenv.bundle.fragstore).

A stored stream is copied into an archive only when it is as it was stored
(a changed, cut or tampered one is compressed again: the same bytes either
way); a store that cannot be written costs the store, not the archive; and a
store does not grow with every build under a new version's name while its
layer stays in use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from shipenv.bundle import fragments, fragstore
from tests.helpers import small_tmpfs
from tests.unit.test_fragments import EPOCH, big_tree, large_tree, make_tree, members, pack_large
from tests.unit.test_fragments import pack as pack_one


def pack(root: Path, dest: Path, store: Path, arcname: str) -> str:
    parts = [fragments.Fragment(frozenset({"lib/a/one.py", "lib/a/link"}), store)]
    return fragments.write(root, dest, "tar.zst", level=None, threads=1, mtime=EPOCH, arcname=arcname, fragments=parts).sha256


def age(store: Path, seconds: float, pattern: str = "*.json") -> None:
    """Every stream of the store last used ``seconds`` earlier than it was (its ``.json``'s mtime; the ``.frag``'s is checked)."""
    for path in store.glob(pattern):
        st = path.stat()
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def kept(store: Path, kind: str) -> set[str]:
    return {p.stem for p in store.glob(f"{kind}-*.json") if p.with_suffix(".frag").is_file()}


def test_a_store_keeps_the_mixed_streams_of_the_last_names_only(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    (root / "lib" / "a" / "big.bin").write_bytes(os.urandom(fragments.DATA_FRAME_MIN))  # data frames of their own
    store = tmp_path / "store"
    names: list[set[str]] = []
    for version in range(1, 7):
        parts = [fragments.Fragment(frozenset({"lib/a/one.py", "lib/a/link", "lib/a/big.bin"}), store)]
        fragments.write(root, tmp_path / f"{version}.tar.zst", "tar.zst", level=None, threads=1, mtime=EPOCH,
                        arcname=f"app-{version}", fragments=parts)
        names.append(kept(store, "mixed"))
        age(store, fragstore.IN_USE + 60)  # between builds: nothing is in use
    assert [len(n) for n in names] == [1, 2, 3, 3, 3, 3]
    added = [now - before for before, now in zip([set(), *names], names)]
    assert all(len(a) == 1 for a in added)  # each name stored one
    assert names[-1] == added[-1] | added[-2] | added[-3]  # and the oldest went each time
    assert len(kept(store, "data")) == 1  # one data stream serves every name
    assert len(list(store.iterdir())) == 8  # those four streams, each a .frag and a .json: nothing else
    # The newest names still hit: rebuilding app-6 copies every stream and stores nothing.
    before = {p.name: p.stat().st_ino for p in store.iterdir()}
    again = fragments.write(root, tmp_path / "6-again.tar.zst", "tar.zst", level=None, threads=1, mtime=EPOCH, arcname="app-6",
                            fragments=[fragments.Fragment(frozenset({"lib/a/one.py", "lib/a/link", "lib/a/big.bin"}), store)])
    assert {p.name: p.stat().st_ino for p in store.iterdir()} == before
    assert again.path.read_bytes() == (tmp_path / "6.tar.zst").read_bytes()


def test_streams_used_in_the_last_minutes_stay_and_copying_one_is_a_use(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    store = tmp_path / "store"
    stems: list[str] = []
    for version in range(1, 6):  # five names within minutes: a build may be copying any of them
        pack(root, tmp_path / f"{version}.tar.zst", store, f"app-{version}")
        (stem,) = kept(store, "mixed") - set(stems)
        stems.append(stem)
    assert kept(store, "mixed") == set(stems)
    age(store, fragstore.IN_USE + 60)
    first = pack(root, tmp_path / "1-again.tar.zst", store, "app-1")  # copied, not stored: its use, and no trim
    assert first == archive_digest(tmp_path / "1.tar.zst") and kept(store, "mixed") == set(stems)
    pack(root, tmp_path / "6.tar.zst", store, "app-6")
    (newest,) = kept(store, "mixed") - set(stems)
    assert kept(store, "mixed") == {newest, stems[0], stems[4]}  # app-6, app-1 (just used), app-5 (the last other)


def archive_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_streams_of_an_older_layout_and_orphaned_frags_go_when_the_next_is_stored(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    store = tmp_path / "store"
    store.mkdir()
    legacy = "ab" * 32  # the names of format 2 before they said their kind
    (store / f"{legacy}.frag").write_bytes(b"\x28\xb5\x2f\xfd old")
    (store / f"{legacy}.json").write_text(json.dumps({"frames": [[9]]}))
    (store / "mixed-orphan.frag").write_bytes(b"\x28\xb5\x2f\xfd cut short")  # its .json was never written
    (store / ".mixed-tmp.x").write_bytes(b"a build writing now")
    age(store, fragstore.IN_USE + 60, "*")
    fresh_orphan = store / "mixed-new.frag"
    fresh_orphan.write_bytes(b"\x28\xb5\x2f\xfd being saved")  # a build between its .frag and its .json: left alone
    first = pack(root, tmp_path / "one.tar.zst", store, "app-1.0")
    names = {p.name for p in store.iterdir()}
    assert not {f"{legacy}.frag", f"{legacy}.json", "mixed-orphan.frag"} & names
    assert {".mixed-tmp.x", "mixed-new.frag"} <= names and len(kept(store, "mixed")) == 1
    assert pack(root, tmp_path / "two.tar.zst", store, "app-1.0") == first


def test_a_store_that_cannot_be_listed_costs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tree(tmp_path / "tree")
    store = tmp_path / "store"
    first = pack(root, tmp_path / "one.tar.zst", store, "app-1.0")

    scandir = os.scandir

    def refuse(path: str | Path = ".") -> object:
        if Path(path) == store:
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    assert pack(root, tmp_path / "two.tar.zst", store, "app-2.0") != first  # stored, the trim given up quietly
    monkeypatch.undo()
    assert len(kept(store, "mixed")) == 2


# -- checks and failures of the store --


def test_a_stored_fragment_that_changed_is_compressed_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_tree(tmp_path / "tree")
    store = tmp_path / "store"
    first = pack_one(root, tmp_path / "one.tar.zst", store)
    frag = next((store / "a").glob("*.frag"))
    frag.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    with caplog.at_level(logging.WARNING, logger="shipenv.bundle.fragstore"):
        again = pack_one(root, tmp_path / "two.tar.zst", store)
    assert "dropping stored fragment" in caplog.text
    assert again.sha256 == first.sha256
    assert pack_one(root, tmp_path / "three.tar.zst", store).sha256 == first.sha256  # and it was stored afresh


def test_the_key_covers_names_modes_and_the_level(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    store = tmp_path / "store"
    pack_one(root, tmp_path / "one.tar.zst", store)
    (root / "lib" / "a" / "one.py").chmod(0o755)  # another mode: another fragment
    parts = [fragments.Fragment(frozenset({"lib/a/one.py", "lib/a/link"}), store / "a")]
    fragments.write(root, tmp_path / "two.tar.zst", "tar.zst", level=5, threads=1, mtime=EPOCH, arcname="app-2.0", fragments=parts)
    assert len(list((store / "a").glob("*.frag"))) == 2
    assert [m.mode for m in members(tmp_path / "two.tar.zst") if m.name == "app-2.0/lib/a/one.py"] == [0o755]


def test_a_store_that_cannot_be_written_costs_the_store_not_the_archive(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, bare, kept = big_tree(tmp_path)
    expected = fragments.write(root, tmp_path / "a.tar.zst", "tar.zst", level=None, threads=2, mtime=EPOCH, arcname="app-1.0", fragments=bare)
    (tmp_path / "a-file").write_text("not a directory")
    with small_tmpfs(tmp_path / "tiny", "256k") as tiny, caplog.at_level(logging.WARNING, logger="shipenv.bundle.fragstore"):
        # a's data frames fill the tiny store in the middle of big.bin (its mixed frames fit); b's store cannot even be made
        parts = [fragments.Fragment(kept[0].paths, tiny / "a"), fragments.Fragment(kept[1].paths, tmp_path / "a-file" / "b")]
        packed = fragments.write(root, tmp_path / "b.tar.zst", "tar.zst", level=None, threads=2, mtime=EPOCH, arcname="app-1.0", fragments=parts)
        kept_files = [p.name for p in tiny.rglob("*") if p.is_file()]
        assert sorted(Path(n).suffix for n in kept_files) == [".frag", ".json"], kept_files  # the mixed stream: nothing half-kept
        assert not [n for n in kept_files if n.startswith(".")]
    assert packed.sha256 == expected.sha256
    assert caplog.text.count("cannot keep a fragment") == 3  # a's data frames; b's mixed and data frames


def test_a_tampered_stored_data_stream_is_dropped_and_compressed_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, _large = large_tree(tmp_path)
    store = tmp_path / "store"
    first = pack_large(root, tmp_path / "one.tar.zst", store)
    data_stream = max(store.rglob("*.frag"), key=lambda p: p.stat().st_size)
    with data_stream.open("r+b") as f:
        f.truncate(data_stream.stat().st_size - 100)
    with caplog.at_level(logging.WARNING, logger="shipenv.bundle.fragstore"):
        again = pack_large(root, tmp_path / "two.tar.zst", store, arcname="app-2.0")
    assert f"dropping stored fragment {data_stream}" in caplog.text
    assert again.sha256 == pack_large(root, tmp_path / "three.tar.zst", None, arcname="app-2.0").sha256
    assert pack_large(root, tmp_path / "four.tar.zst", store).sha256 == first.sha256  # stored afresh, and used
    caplog.clear()
    meta = data_stream.with_suffix(".json")  # a json whose frames do not add up to the file: dropped too
    meta.write_text(meta.read_text().replace('"frames":[[', '"frames":[[1,'))
    with caplog.at_level(logging.WARNING, logger="shipenv.bundle.fragstore"):
        assert pack_large(root, tmp_path / "five.tar.zst", store).sha256 == first.sha256
    assert "its frames do not fit its members" in caplog.text
