"""``shipenv cache --prune`` on a real build cache: nothing a later build needs is lost.

A pruned cache gives the next build nothing to reuse, and that build must give
the very bytes the first one did (and fill the cache again).
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import pyenv_python, run_shipenv


def _build(tmp_path: Path, out: str, cache: Path) -> tuple[str, str]:
    proc = run_shipenv(
        "build", "-v", "-r", tmp_path / "req.txt", "--python", pyenv_python("3.12"), "--name", "c", "--version", "1",
        "-o", tmp_path / out, "--cache-dir", cache,
    )
    return proc.stderr, (tmp_path / out / "c-1.tar.zst.sha256").read_text().split()[0]


def test_a_build_after_pruning_everything_rebuilds_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "req.txt").write_text("pyyaml\n")
    cache = tmp_path / "cache"
    _log1, sha1 = _build(tmp_path, "a", cache)

    shown = run_shipenv("cache", "--cache-dir", cache).stdout
    assert f"The build cache at {cache} holds" in shown
    assert "interpreter" in shown and "wheel" in shown

    dry = run_shipenv("cache", "--cache-dir", cache, "--prune", "--max-size", "0", "--dry-run").stdout
    assert dry.startswith("Would remove ") and dry.rstrip().endswith("0.0 kB would be left.")
    assert (cache / "interpreter").exists() and any((cache / "interpreter").rglob("facts.json"))

    done = run_shipenv("cache", "--cache-dir", cache, "--prune", "--max-size", "0").stdout
    assert done.startswith("Removed ") and done.rstrip().endswith("0.0 kB left.")
    assert not any((cache / "interpreter").rglob("facts.json"))

    log2, sha2 = _build(tmp_path, "b", cache)
    assert "Copying Python" in log2  # nothing was left to reuse
    assert sha2 == sha1
    assert any((cache / "interpreter").rglob("facts.json"))  # and the cache is filled again
