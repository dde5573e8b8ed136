"""Rebuilds reuse cached layers, and a damaged cache entry is rebuilt, never used."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import PACKAGES_DIR, pyenv_python, run_shipenv


def _build(out: Path, cache: Path, *extra: str | Path) -> tuple[str, bytes]:
    req = out.parent / "req.txt"
    proc = run_shipenv(
        "build", "-v", "-r", req, "--python", pyenv_python("3.12"), "--name", "c", "--version", "1",
        "--format", "dir", "-o", out, "--cache-dir", cache, *extra,
    )
    return proc.stderr, (out / "c-1" / ".shipenv" / "RECORD").read_bytes()


def test_second_build_reuses_layers_and_gives_the_same_tree(tmp_path: Path) -> None:
    (tmp_path / "req.txt").write_text(f"pyyaml\n{PACKAGES_DIR / 'srcapp'}\n")
    cache = tmp_path / "cache"
    log1, record1 = _build(tmp_path / "a", cache)
    assert "Copying Python" in log1
    log2, record2 = _build(tmp_path / "b", cache)
    assert "Reusing Python" in log2 and "Copying Python" not in log2
    assert "Byte-compiling" not in log2.replace("Byte-compiling the standard library", "")
    assert record1 == record2

    # Damage one cached file: the entry is dropped and rebuilt, and the tree is still right.
    victim = next(p for p in (cache / "wheel").rglob("*.py") if p.stat().st_size > 100)
    victim.write_text("raise SystemExit('corrupt cache entry was used')\n")
    log3, record3 = _build(tmp_path / "c", cache)
    assert "dropping damaged entry" in log3
    assert record3 == record1


def test_no_cache_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "req.txt").write_text("pyyaml\n")
    cache = tmp_path / "cache"
    _build(tmp_path / "a", cache, "--no-cache")
    assert not cache.exists()
