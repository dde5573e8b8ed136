"""Peak memory of deploying an archive whose pax header declares 1 GiB (issue 11, item 3).

Usage::

    python benchmarks/hostile.py               # 1 GiB header, shipenv deploy and (where present) deploy.sh
    python benchmarks/hostile.py --mib 256

The archive is about 1 MB of gzip: one pax extended header block that declares
the size, then that many zero bytes. Before the header was bounded, Python's
tarfile read all of it into memory (3.2 GB of RSS for 1 GiB). Each deploy runs
in its own process; the peak RSS printed is that process's ``ru_maxrss`` from
``wait4`` (for deploy.sh, the largest of the processes it waited for: tar). The
refusal is checked by the test suite; here the figures are printed, never
asserted (the goal is well under 100 MB).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEPLOY_SH = REPO / "templates" / "deploy.sh"


def hostile_archive(path: Path, size: int) -> Path:
    """A gzip tar whose first entry is a pax header declaring ``size`` bytes (all zeros)."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = size
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    with path.open("wb") as f:
        f.write(z.compress(info.tobuf(tarfile.USTAR_FORMAT)))
        for _ in range(size >> 20):
            f.write(z.compress(block))
        f.write(z.compress(bytes(2 * tarfile.BLOCKSIZE)))
        f.write(z.flush())
    return path


def measure(argv: list[str], log: Path) -> tuple[int, float, int, str]:
    """(exit status, wall seconds, peak RSS in kB of this child and its children, last line of stderr)."""
    start = time.monotonic()
    with log.open("w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = [line for line in err.read().splitlines() if line.startswith("error:")]
    return proc.returncode, time.monotonic() - start, usage.ru_maxrss, (lines or [""])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="declared header size in MiB (default 1024)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shipenv-hostile-") as tmp:
        base = Path(tmp)
        archive = hostile_archive(base / "app-1.0.tar.gz", args.mib << 20)
        print(f"archive: {archive.stat().st_size / 1e6:.1f} MB on disk, pax header declaring {args.mib} MiB")
        rows = [("shipenv deploy", [sys.executable, "-m", "shipenv", "deploy", str(archive), "--root", str(base / "root1")])]
        rows.append(("deploy.sh (system tar)", ["sh", str(DEPLOY_SH), "deploy", str(archive), str(base / "root2")]))
        for label, argv in rows:
            code, wall, peak, last = measure(argv, base / "stderr")
            print(f"{label:24} exit {code}  {wall:6.2f} s  peak RSS {peak / 1024:8.1f} MB  {last}")


if __name__ == "__main__":
    main()
