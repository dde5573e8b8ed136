"""What ``--libc bundled`` costs: cold start through the bundled loader, and bytes.

    python benchmarks/libc.py                 # CPython 3.12 from pyenv, interpreter-only bundles
    python benchmarks/libc.py --python 3.11 --runs 30

Builds the same interpreter-only bundle twice (``--libc host`` and
``--libc bundled``, ``--format dir``) in a scratch directory, then prints a
markdown table: the median wall time of ``bin/python -c pass`` and of
``bin/python -c "import ssl, json, sqlite3"`` for each (after two warm-up
runs, ``PYTHONDONTWRITEBYTECODE`` unset, interleaved so both see the same
machine load), their ratio against the 5 % goal, and the size the mode adds
(the loader and glibc's files in ``lib/``). Figures only: never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CODES = {"python -c pass": "pass", "import ssl, json, sqlite3": "import ssl, json, sqlite3"}


def build(python: str, mode: str, out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "shipenv", "build", "--python", python, "--name", f"bench-{mode}", "--version", "1",
         "--libc", mode, "--format", "dir", "-o", str(out), "-q"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return out / f"bench-{mode}-1"


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def cold_start(tree: Path, code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(tree / "bin" / "python"), "-c", code], check=True, env=env)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="3.12", help="base interpreter for both bundles (default 3.12)")
    parser.add_argument("--runs", type=int, default=20, help="counted runs per figure (default 20)")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="shipenv-bench-libc-"))
    try:
        trees = {mode: build(args.python, mode, scratch / mode) for mode in ("host", "bundled")}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        rows = []
        for label, code in CODES.items():
            times: dict[str, list[float]] = {"host": [], "bundled": []}
            for _ in range(2):
                for tree in trees.values():
                    cold_start(tree, code, env)
            for _ in range(args.runs):
                for mode, tree in trees.items():
                    times[mode].append(cold_start(tree, code, env))
            host, bundled = (statistics.median(times[m]) for m in ("host", "bundled"))
            rows.append((label, host, bundled))
        sizes = {mode: tree_size(tree) for mode, tree in trees.items()}
        meta = json.loads((trees["bundled"] / ".shipenv/manifest.json").read_text())
        print(f"## --libc bundled vs host, CPython {meta['python']['version']}, medians of {args.runs} runs\n")
        print("| measure | host libc | bundled libc | ratio | goal |")
        print("|---|---:|---:|---:|---|")
        for label, host, bundled in rows:
            verdict = "met" if bundled <= host * 1.05 else "not met"
            print(f"| cold start, `{label}` | {host * 1000:.1f} ms | {bundled * 1000:.1f} ms | {bundled / host:.3f}x | ≤ 1.05x: {verdict} |")
        added = sizes["bundled"] - sizes["host"]
        print(f"| tree size | {sizes['host'] / 1e6:.1f} MB | {sizes['bundled'] / 1e6:.1f} MB | +{added / 1e6:.1f} MB | - |")
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
