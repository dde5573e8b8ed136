"""Rebuilds reuse cached layers, and a damaged cache entry is rebuilt, never used.

An archive of a cached build is assembled from the layers' stored fragments:
it must be the very bytes a clean build gives, and every reader must take it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.chroots import run_in_root
from tests.helpers import PACKAGES_DIR, index_of, pyenv_python, run_shipenv


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


def _archive(out: Path, cache: Path, fmt: str, *extra: str) -> tuple[str, Path]:
    (out.parent / "req.txt").write_text("pyyaml\n")
    proc = run_shipenv(
        "build", "-v", "-r", out.parent / "req.txt", "--python", pyenv_python("3.12"), "--name", "c", "--version", "1",
        "--format", fmt, "-o", out, "--cache-dir", cache, *extra,
    )
    path = out / f"c-1.{fmt}"
    return proc.stderr, path


def _forget_outputs(cache: Path) -> None:
    """Drop the whole builds kept (build/outputs.py), so the next build assembles its archive from the layers again."""
    shutil.rmtree(cache / "outputs")


def test_a_cached_build_gives_the_clean_builds_bytes_and_every_reader_takes_them(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    log1, clean = _archive(tmp_path / "clean", cache, "tar.gz")
    _forget_outputs(cache)
    log2, cached = _archive(tmp_path / "cached", cache, "tar.gz")
    assert "Copying Python" in log1 and "Reusing Python" in log2
    assert clean.read_bytes() == cached.read_bytes()
    assert len(list(cache.rglob("fragments/*.frag"))) >= 2  # the interpreter's and pyyaml's, kept for the next build
    _, uncached = _archive(tmp_path / "uncached", tmp_path / "unused", "tar.gz", "--no-cache")
    assert uncached.read_bytes() == clean.read_bytes() and not (tmp_path / "unused").exists()
    _, zst1 = _archive(tmp_path / "zst1", cache, "tar.zst")  # the layers cached, their zstd fragments made now
    _forget_outputs(cache)
    _, zst2 = _archive(tmp_path / "zst2", cache, "tar.zst")  # ... and copied
    assert zst1.read_bytes() == zst2.read_bytes()
    # head, the interpreter, pyyaml, the rest, the directories: a row of the frame index each (in the skippable
    # frame at the end), one zstd frame each but for the interpreter's, whose large files (libpython) have their own
    listing = subprocess.run(["zstd", "-lv", str(zst2)], capture_output=True, text=True, check=True).stdout
    rows = index_of(zst2).frames
    assert len(rows) == 5 and "# Skippable Frames: 1\n" in listing
    found = re.search(r"# Zstandard Frames: (\d+)\n", listing)
    assert found is not None and int(found[1]) > len(rows)
    subprocess.run(["zstd", "-tq", str(zst2)], check=True)
    gnu = tmp_path / "gnu-out"
    gnu.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(zst2), "-C", str(gnu)], check=True)  # GNU tar passes over the index
    assert run_shipenv("verify", gnu / "c-1").stdout.startswith("OK: ")
    assert run_shipenv("verify", zst2).stdout.startswith("OK: ")  # python-zstandard's reader, every member

    # busybox tar (the static busybox root: no glibc) unpacks the gzip members with every mode right.
    out = tmp_path / "busybox-out"
    out.mkdir()
    done = run_in_root("busybox", ["busybox", "tar", "-xzf", "/in/c-1.tar.gz", "-C", "/out"], binds={cached.parent: "/in", out: "/out"})
    assert done.returncode == 0, done.stderr
    assert (out / "c-1" / "bin" / "python3.12").stat().st_mode & 0o777 == 0o755
    assert (out / "c-1" / "lib").stat().st_mode & 0o777 == 0o755
    assert run_shipenv("verify", out / "c-1").stdout.startswith("OK: ")

    # shipenv deploy, and deploy.sh on the same archive; both check every file against RECORD.
    run_shipenv("deploy", cached, "--root", tmp_path / "srv", "--check", "bin/python -c 'import yaml'")
    script = out / "c-1" / ".shipenv" / "deploy.sh"
    sh = subprocess.run(["sh", str(script), "deploy", str(zst2), str(tmp_path / "srv-sh")], capture_output=True, text=True, check=False)
    assert sh.returncode == 0, sh.stderr
    for root in (tmp_path / "srv", tmp_path / "srv-sh"):
        ran = subprocess.run([str(root / "current" / "bin" / "python"), "-c", "import yaml; print(yaml.__name__)"], capture_output=True, text=True, check=False)
        assert ran.stdout == "yaml\n", ran.stderr


def test_a_rebuild_in_the_last_builds_tree_gives_a_clean_builds_bytes(tmp_path: Path) -> None:
    """The tree a build keeps in the cache (build/warm.py), left messy, gives the next build exactly what an empty start gives."""
    cache = tmp_path / "cache"

    def build(name: str, version: str, reqs: str, *extra: str) -> tuple[str, Path]:
        (tmp_path / f"{name}.txt").write_text(reqs)
        proc = run_shipenv("build", "-v", "-r", tmp_path / f"{name}.txt", "--python", pyenv_python("3.12"), "--name", "c",
                           "--version", version, "-o", tmp_path / name, *extra)
        return proc.stderr, tmp_path / name / f"c-{version}.tar.zst"

    build("v1", "1", "pyyaml\n", "--cache-dir", str(cache))
    kept = [p for p in (cache / "trees").glob("*/*")]
    assert len(kept) == 1 and (kept[0] / "bin" / "python3.12").is_file() and not (tmp_path / "v1" / "c-1").exists()
    tree = kept[0]
    site = tree / "lib" / "python3.12" / "site-packages"
    (site / "zz-stale.pth").write_text("import os; os._exit(3)\n")  # pip and the byte-compiler must not see it
    victim = next((site / "yaml").glob("*.py"))
    victim.unlink()
    victim.write_text("raise SystemExit('stale')\n")  # a new inode: not the layer's file any more
    (tree / "bin" / "stray").write_text("left by hand\n")
    (tree / "empty" / "dir").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(site / "_yaml")
    (site / "_yaml").symlink_to(outside)  # a symlink where the layer has a directory

    log, reused = build("v2", "2", "pyyaml\nsix\n", "--cache-dir", str(cache))
    assert "reusing the last build's tree" in log and "Reusing Python" in log
    _, clean = build("clean", "2", "pyyaml\nsix\n", "--no-cache")
    assert reused.read_bytes() == clean.read_bytes()
    assert list(outside.iterdir()) == []  # nothing written through the symlink
    assert len(list((cache / "trees").glob("*/*"))) == 1  # kept again for the next build
