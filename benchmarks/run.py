"""shipenv against its peers and the physical limits, on the reference workload, in one run.

    .venv/bin/python benchmarks/run.py [--runs N] [--quick] [--groups build,pack,...]

What runs (see benchmarks/README.md for the method and the targets):

- build    requirements -> artifact, offline from one local wheelhouse: shipenv (.tar.zst, empty
           --cache-dir), fresh venv + pip install -r + venv-pack, pex, PyInstaller --onedir; shipenv
           rebuilds with its cache warm (one requirement added; nothing changed); once more through
           the configured indexes; a `--format dir` build whose tree every baseline below works on
- pack     shipenv's archive writer on that tree vs `tar | zstd -T0 -3`, `tar -czf`, `tar | pigz`
- deploy   `shipenv deploy` (first release; v2 beside v1) vs `tar --zstd -xf` of the same archive;
           disk used by the releases
- start    `bin/python -c "import django, numpy, pandas"` through the bundle vs the source venv
- big      peak RSS of packing and deploying a bundle over 1 GB (workload + torch)
- hostile  peak RSS of deploying a .tar.gz whose pax header declares 1 GiB (refused; hostile.py)

Every figure's exact command, the git revision and the load average at start and end are part
of the report.

Peers live in their own venvs under $SHIPENV_BENCH_DIR (default /tmp/shipenv-bench) and are
reused by later runs; everything a run produces goes to $SHIPENV_BENCH_DIR/run (wiped at start).
The table is printed and written to benchmarks/results/latest.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from groups import group_big, group_build, group_deploy, group_hostile, group_pack, group_start, setup
from measure import BENCH, ENV, FIG, PY, PYVER, REPO, RESULTS, RUN, VAL, Failure, empty_trash, loadavg, shipenv_cmd, take_snapshot
from report import report, versions


def git_revision() -> str:
    """The checkout's short revision, and how many files of src/ and templates/ differ from it."""
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src", "templates"], capture_output=True, text=True).stdout
    return (git or "?") + (f" + {len(dirty.splitlines())} uncommitted change(s) in src/templates" if dirty.strip() else "")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="counted runs per figure (default 3; 1 with --quick)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up runs per figure (default 1; builds get 0 with --quick)")
    ap.add_argument("--quick", action="store_true", help="1 counted run; no warm-up for the expensive builds")
    ap.add_argument("--offline", action="store_true",
                    help="leave out the builds through the configured indexes (the network: ~5 min of a --quick run)")
    ap.add_argument("--groups", default="build,pack,deploy,start,big,hostile",
                    help="comma-separated subset of build,pack,deploy,start,big,hostile")
    args = ap.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    warm = args.warmup
    build_warm = 0 if args.quick else warm
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]

    try:
        import shipenv  # noqa: F401 - its dependencies (zstandard, lief, ...) must import here
    except ImportError as exc:
        print(f"error: {exc}; run this with the dev venv's python (.venv/bin/python benchmarks/run.py).", file=sys.stderr)
        return 2
    if not PY.exists():
        print(f"error: CPython {PYVER} not found at {PY}.", file=sys.stderr)
        return 2
    if RUN.exists():
        print(f"wiping the previous run's scratch {RUN} ...")
        shutil.rmtree(RUN, ignore_errors=True)
    (RUN / "logs").mkdir(parents=True)
    RESULTS.mkdir(exist_ok=True)
    git = git_revision()
    snap = take_snapshot()
    shipenv_v = subprocess.run(shipenv_cmd("--version"), capture_output=True, text=True, env=ENV).stdout.strip()
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}",
        "git": f"{git}, snapshot {snap}",
        "shipenv": shipenv_v, "runs": runs, "warm": warm, "build_warm": build_warm, "quick": args.quick, "groups": groups,
        "load_start": loadavg(), "bench_dir": str(BENCH),
    }
    t0 = time.monotonic()
    print(f"shipenv benchmark: {runs} run(s), warm-up {warm} (builds {build_warm}); scratch {RUN}; git {meta['git']}; "
          f"load {meta['load_start']}")
    ctx: dict[str, Any] = {}
    try:
        if set(groups) - {"hostile"}:  # the hostile archive needs no peers, wheels or warm caches
            print("\n== setup (peer venvs are reused from earlier runs)")
            ctx = setup(args)
        order: tuple[tuple[str, Callable[[], None]], ...] = (
            ("build", lambda: group_build(ctx, runs, build_warm)),
            ("pack", lambda: group_pack(ctx, runs, warm)),
            ("deploy", lambda: group_deploy(ctx, runs, warm)),
            ("start", lambda: group_start(ctx, runs, warm)),
            ("big", lambda: group_big(ctx, runs, warm)),
            ("hostile", lambda: group_hostile(ctx, runs, warm)),
        )
        for name, g in order:
            if name not in groups:
                continue
            print(f"\n== {name}  [{time.strftime('%H:%M:%S')}, load {loadavg()}]")
            try:
                g()
            except Failure as exc:
                print(f"  group {name} failed: {exc.message}\n{exc.tail}")
                VAL[f"group_error.{name}"] = f"{exc.message}: {exc.tail}"
            except Exception as exc:
                import traceback

                print(f"  group {name} crashed: {type(exc).__name__}: {exc}")
                VAL[f"group_error.{name}"] = traceback.format_exc()
            empty_trash()
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what was measured")
    meta["load_end"] = loadavg()
    meta["git_end"] = git_revision()  # the working tree may have moved on; the snapshot did not
    meta["noisy"] = max(float(x) for x in (meta["load_start"].split()[0], meta["load_end"].split()[0]) if x != "?") > 1.5
    meta["duration_s"] = round(time.monotonic() - t0, 1)
    meta["versions"] = versions()
    md, targets = report(ctx, meta)
    md += f"\nTotal benchmark time {meta['duration_s'] / 60:.1f} min. Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()) + "\n"
    for k, v in VAL.items():
        if k.startswith("group_error."):
            md += f"\n**{k}**:\n```\n{v}\n```\n"
    (RESULTS / "latest.md").write_text(md)
    (RESULTS / "latest.json").write_text(json.dumps(
        {"meta": meta, "targets": targets, "values": VAL, "figures": {k: f.as_dict() for k, f in FIG.items()}}, indent=2, default=str))
    print("\n" + md)
    print(f"written: {RESULTS / 'latest.md'}, {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
