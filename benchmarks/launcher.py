"""Start-up through the native launcher vs the sh launcher vs the bare interpreter.

    python benchmarks/launcher.py                  # builds an interpreter-only 3.12 bundle in a temp dir
    python benchmarks/launcher.py --tree DIR -n 200

Each round runs ``-c pass`` once per way in, in turn (so background load hits
all three alike); the figures are medians and the launchers' overhead over
the bare ``bin/python3.X -E -s``. The goal (issue 14): the native launcher
no slower than the bare interpreter plus 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shipenv.build import launchers
from shipenv.model import PythonInfo


def _time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(tree: Path, rounds: int) -> dict[str, float]:
    meta = json.loads((tree / ".shipenv" / "manifest.json").read_text())
    version = tuple(int(x) for x in meta["python"]["version"].split(".")[:3])
    xy = f"{version[0]}.{version[1]}"
    py = PythonInfo(tree / "bin" / f"python{xy}", version, "cpython", "", "", "", meta["platform"]["arch"], tree, tree, None, None, True, None, None)  # type: ignore[arg-type]
    sh = tree / "bin" / "python-sh"
    launchers.write_launcher(sh, launchers.python_launcher(py))
    ways = {
        "bare bin/python3.X -E -s": [str(tree / "bin" / f"python{xy}"), "-E", "-s", "-c", "pass"],
        "sh launcher": [str(sh), "-c", "pass"],
        "native launcher": [str(tree / "bin" / "python"), "-c", "pass"],
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for argv in ways.values():
        _time(argv, env)  # warm the page cache
    for _ in range(rounds):
        for name, argv in ways.items():
            samples[name].append(_time(argv, env))
    sh.unlink()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="a bundle directory with native launchers (default: build one)")
    parser.add_argument("--python", default="3.12", help="base Python for the bundle built when --tree is not given")
    parser.add_argument("-n", "--rounds", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shipenv-bench-launcher-") as tmp:
        tree = args.tree
        if tree is None:
            cmd = [sys.executable, "-m", "shipenv", "build", "--python", args.python, "--name", "bench", "--version", "1", "--format", "dir", "-o", tmp]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            tree = Path(tmp) / "bench-1"
        medians = measure(tree, args.rounds)
    bare = medians["bare bin/python3.X -E -s"]
    print(f"start-up of `-c pass`, median of {args.rounds} rounds")
    print("| way in | median | over bare |")
    print("|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value * 1e3:.2f} ms | {(value - bare) * 1e3:+.2f} ms |")


if __name__ == "__main__":
    main()
