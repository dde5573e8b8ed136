"""Build the native launcher (``launcher.c``) into static binaries for every arch shipenv ships.

    python src/launcher/build.py             # rewrites src/shipenv/data/launcher/{x86_64,aarch64}
    python src/launcher/build.py -o DIR      # writes DIR/x86_64, DIR/aarch64 (the test compares them)

The compiler is ``zig cc`` from the ``ziglang`` wheel pinned in pyproject.toml's
test extra: it cross-compiles against the musl it carries, so the binaries need
no libc and no dynamic loader on the target, and the same source, flags and zig
version give the same bytes on any machine (stripped, no build id, no paths).
The binaries are committed as package data, so ``pip install shipenv`` needs no
compiler.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "launcher.c"
PACKAGED = HERE.parent / "shipenv" / "data" / "launcher"
#: Machine names as ``platform.machine()`` and the manifest spell them → zig's target.
TARGETS = {"x86_64": "x86_64-linux-musl", "aarch64": "aarch64-linux-musl"}
FLAGS = ("-static", "-Os", "-s", "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wl,--build-id=none")


def build(out_dir: Path) -> list[Path]:
    """Compile every target into ``out_dir/MACHINE``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="shipenv-launcher-") as tmp:
        # zig's global cache (~/.cache/zig) only saves time: its musl and the
        # output are the same from a cold cache (the rebuild test passes either way).
        env = {**os.environ, "ZIG_LOCAL_CACHE_DIR": f"{tmp}/cache"}
        for machine, target in TARGETS.items():
            dest = out_dir / machine
            # The source is compiled by its name relative to here, so no path of this machine reaches the binary.
            cmd = [sys.executable, "-m", "ziglang", "cc", "-target", target, *FLAGS, "-o", str(dest), SOURCE.name]
            subprocess.run(cmd, cwd=HERE, env=env, check=True)
            os.chmod(dest, 0o755)
            written.append(dest)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=PACKAGED, help="directory for the binaries")
    for path in build(parser.parse_args().output):
        print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
