"""How fast shipenv packs a tree, against the usual command-line pipelines on the same tree.

Usage::

    python benchmarks/pack.py out/hello-1.0            # every format and every reference found
    python benchmarks/pack.py TREE --runs 3 --only zst gz

Each candidate runs in its own process under GNU ``time``, which reports the
wall time, the CPU time of all its processes (a fairer figure on a busy
machine) and the peak RSS of the largest process of the run (for a pipeline
such as ``tar | zstd``, the bigger of the two). MB/s is the tree's apparent
size (sum of file sizes) over the wall time; "x tar -czf" is how many times
faster than ``tar -czf`` (gzip -6, single-threaded); "size x gzip" is the
archive size over that of ``tar -czf``. Shipenv's figures include starting
Python (about 0.1 s). The page cache is warmed first, so this measures
compression, not the disk. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHIPENV = """
import sys
from pathlib import Path
from shipenv.bundle import archive
archive.write(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], level=None, threads=0, mtime=1577836800, arcname=Path(sys.argv[1]).name)
"""

# `--format oci` on the same tree: its three gzip layers, config, manifest and index, on an
# empty base (a layout with no layers, made beside the output), so only shipenv's own work counts.
OCI = """
import json, sys
from pathlib import Path
from shipenv.bundle import oci, ocibase
from shipenv.model import ImageOptions
tree, out = Path(sys.argv[1]), Path(sys.argv[2])
base = out.with_name("empty-base")
if not base.exists():
    (base / "blobs" / "sha256").mkdir(parents=True)
    (base / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    import hashlib
    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        (base / "blobs" / "sha256" / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}
    manifest = {"schemaVersion": 2, "config": dict(put(config), mediaType=ocibase.MEDIA_CONFIG), "layers": []}
    index = {"schemaVersion": 2, "manifests": [dict(put(json.dumps(manifest).encode()), mediaType=ocibase.MEDIA_MANIFEST)]}
    (base / "index.json").write_text(json.dumps(index))
image = ImageOptions(base=f"oci:{base}")
oci.write(tree, out, sys.argv[3], image=image, base=oci.prepare(image, json.loads((tree / ".shipenv/manifest.json").read_text())["platform"]["arch"]), entry=None, mtime=1577836800)
""".replace("{", "{{").replace("}", "}}")  # every argv goes through str.format


@dataclass(frozen=True)
class Candidate:
    key: str  #: for --only
    label: str
    suffix: str
    argv: tuple[str, ...]  #: {tree} {parent} {name} {out} are filled in


@dataclass(frozen=True)
class Result:
    label: str
    seconds: float
    cpu: float  #: user + system seconds of every process of the run
    size: int
    peak_kib: int


def candidates(tree: Path) -> list[Candidate]:
    found = [
        Candidate("zst", "shipenv tar.zst (level 3, all cores)", ".tar.zst", (sys.executable, "-c", SHIPENV, "{tree}", "{out}", "tar.zst")),
        Candidate("gz", "shipenv tar.gz (level 5, all cores)", ".tar.gz", (sys.executable, "-c", SHIPENV, "{tree}", "{out}", "tar.gz")),
        Candidate("xz", "shipenv tar.xz (preset 6, 1 thread)", ".tar.xz", (sys.executable, "-c", SHIPENV, "{tree}", "{out}", "tar.xz")),
    ]
    if (tree / ".shipenv" / "manifest.json").is_file():  # a bundle tree: images need its manifest
        found.append(Candidate("oci", "shipenv --format oci (3 gzip layers)", ".oci", (sys.executable, "-c", OCI, "{tree}", "{out}", "oci")))
    if shutil.which("zstd"):
        found.append(Candidate("ref-zst", "tar -cf - | zstd -T0 -3", ".tar.zst", ("sh", "-c", "tar -cf - -C {parent} {name} | zstd -q -T0 -3 -o {out}")))
    found.append(Candidate("ref-gz", "tar -czf (gzip -6)", ".tar.gz", ("tar", "-czf", "{out}", "-C", "{parent}", "{name}")))
    if shutil.which("pigz"):
        found.append(Candidate("ref-pigz", "tar -cf - | pigz -6", ".tar.gz", ("sh", "-c", "tar -cf - -C {parent} {name} | pigz -6 > {out}")))
    if shutil.which("xz"):
        found.append(Candidate("ref-xz", "tar -cf - | xz -T0 -6", ".tar.xz", ("sh", "-c", "tar -cf - -C {parent} {name} | xz -T0 -6 > {out}")))
    return found


def apparent_size(tree: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(tree):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size if not os.path.islink(os.path.join(dirpath, name)) else 0
    return files, size


def run_once(candidate: Candidate, tree: Path, out: Path) -> Result:
    values = {"tree": str(tree), "parent": str(tree.parent), "name": tree.name, "out": str(out)}
    quoted = {k: shlex.quote(v) for k, v in values.items()}
    argv = [a.format(**(quoted if candidate.argv[0] == "sh" else values)) for a in candidate.argv]
    timing = out.with_suffix(".time")
    subprocess.run(["/usr/bin/time", "-o", str(timing), "-f", "%e %U %S %M", *argv], check=True, cwd=tree.parent)
    seconds, user, system, peak = timing.read_text().split()[-4:]
    if out.is_dir():  # an OCI layout: its blobs are what a registry stores
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        shutil.rmtree(out)
    else:
        size = out.stat().st_size
        out.unlink()
    timing.unlink()
    return Result(candidate.label, float(seconds), float(user) + float(system), size, int(peak))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree", type=Path, help="a bundle directory (or any tree) to pack")
    parser.add_argument("--runs", type=int, default=1, help="runs per candidate; the fastest counts (default 1)")
    parser.add_argument("--only", nargs="*", metavar="KEY", help="zst gz xz oci ref-zst ref-gz ref-pigz ref-xz")
    parser.add_argument("--tmp", type=Path, default=None, help="where archives are written (default: beside the tree)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    if not tree.is_dir():
        parser.error(f"{tree} is not a directory")
    if not Path("/usr/bin/time").exists():
        parser.error("GNU time (/usr/bin/time) is needed: apt-get install time")

    files, size = apparent_size(tree)
    subprocess.run(f"tar -cf - -C {shlex.quote(str(tree.parent))} {shlex.quote(tree.name)} | cat > /dev/null", shell=True, check=True)
    print(f"tree: {tree} ({files:,} files, {size / 1e6:,.1f} MB)")
    print(f"host: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start, Python {platform.python_version()}")
    print()

    results = []
    with tempfile.TemporaryDirectory(prefix="shipenv-bench-", dir=args.tmp or tree.parent) as tmp:
        for candidate in candidates(tree):
            if args.only and candidate.key not in args.only:
                continue
            runs = [run_once(candidate, tree, Path(tmp) / f"{tree.name}{candidate.suffix}") for _ in range(args.runs)]
            best = min(runs, key=lambda r: r.seconds)
            results.append(best)
            print(f"  {best.label}: {best.seconds:.2f} s", file=sys.stderr)

    gzip_ref = next((r for r in results if r.label.startswith("tar -czf")), None)
    header = f"{'':40} {'wall s':>7} {'cpu s':>7} {'MB/s':>7} {'size MB':>9} {'size x gzip':>11} {'x tar -czf':>10} {'peak RSS MB':>11}"
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = f"{r.size / gzip_ref.size:.3f}" if gzip_ref else "-"
        speed = f"{gzip_ref.seconds / r.seconds:.1f}" if gzip_ref else "-"
        print(f"{r.label:40} {r.seconds:7.2f} {r.cpu:7.2f} {size / 1e6 / r.seconds:7.1f} {r.size / 1e6:9.2f} {ratio:>11} {speed:>10} {r.peak_kib / 1024:11.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
