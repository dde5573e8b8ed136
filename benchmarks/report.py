"""The report: markdown tables of medians, ratios and targets from measure.FIG and measure.VAL."""

from __future__ import annotations

import platform
import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from measure import BENCH, BIG_EXTRA, COLD_CODE, ENV, FIG, PY, PYVER, REPO, REQUIREMENTS, RUN, VAL, abbreviate, aliases, du

# The table's targets (issue 16's; the first brief's where it set none); a figure that failed makes its target "unknown".
T_PACK_ZST = 1.0  # shipenv .tar.zst throughput >= 1.0x tar | zstd -T0 -3
T_GZ_SPEED, T_GZ_SIZE = 3.0, 1.1  # .tar.gz >= 3x faster than tar -czf, size <= 1.1x
T_BUILD_PIP, T_BUILD_PEX, T_BUILD_PYI = 0.5, 1.0, 0.33
T_REBUILD, T_REBUILD_SAME = 0.2, 0.1
T_DEPLOY, T_DEPLOY_FIRST = 1.0, 1.5
T_DEPLOY_DISK = 0.1  # v2 beside v1 adds at most 10 % of a full tree when one small package changed
T_COLD = 1.05
T_RSS_MB = 200


@dataclass(frozen=True)
class RatioTarget:
    """One row of the targets table: shipenv's figure ``ours`` against the baseline ``theirs``.

    ``throughput``: the ratio is theirs ÷ ours and must reach ``limit``; otherwise ours ÷ theirs
    must stay at or below it. Rows whose figures are not one ratio (``ours`` empty) are judged in
    :func:`report`.
    """

    name: str
    ours: str = ""
    theirs: str = ""
    limit: float = 0.0
    throughput: bool = False
    digits: int = 2


RATIO_TARGETS = (
    RatioTarget(f"Packing .tar.zst ≥ {T_PACK_ZST}x the throughput of `tar | zstd -T0 -3`", "pack.shipenv_zst", "pack.tar_zstd",
                T_PACK_ZST, throughput=True),
    RatioTarget(f".tar.gz ≥ {T_GZ_SPEED:.0f}x faster than `tar -czf`, size ≤ {T_GZ_SIZE}x"),
    RatioTarget(f"Full build ≤ {T_BUILD_PIP}x pip install -r + venv-pack", "build.shipenv", "build.pip_venvpack", T_BUILD_PIP),
    RatioTarget(f"Full build ≤ {T_BUILD_PEX}x pex with a fresh PEX_ROOT", "build.shipenv", "build.pex", T_BUILD_PEX),
    RatioTarget(f"Full build ≤ {T_BUILD_PYI}x PyInstaller onedir", "build.shipenv", "build.pyinstaller", T_BUILD_PYI),
    RatioTarget(f"Rebuild after one added requirement ≤ {T_REBUILD}x the clean build", "build.rebuild", "build.shipenv", T_REBUILD),
    RatioTarget(f"Rebuild with nothing changed ≤ {T_REBUILD_SAME}x the clean build", "build.rebuild_same", "build.shipenv",
                T_REBUILD_SAME),
    RatioTarget(f"Deploy v2 beside v1 ≤ {T_DEPLOY}x `tar -xf` of the same archive", "deploy.v2", "deploy.tar_v2", T_DEPLOY),
    RatioTarget(f"First deploy into an empty root ≤ {T_DEPLOY_FIRST}x `tar -xf`", "deploy.first", "deploy.tar_v1", T_DEPLOY_FIRST),
    RatioTarget(f"… and far less disk when little changed (v2 adds ≤ {T_DEPLOY_DISK:.0%} of a full tree)"),
    RatioTarget("Cold start through the bundle within 5 % of the source venv", "start.bundle", "start.venv", T_COLD, digits=3),
    RatioTarget(f"Peak memory < {T_RSS_MB} MB packing / deploying a bundle over 1 GB"),
)


# -- report ------------------------------------------------------------------------------------


def fmt_s(key: str) -> str:
    f = FIG.get(key)
    if f is None:
        return "—"
    if not f.ok:
        return f"**{'skipped' if (f.error or '').startswith('skipped') else 'FAILED'}**"
    spread = ""
    if len(f.walls) > 1 and (max(f.walls) - min(f.walls)) > 0.15 * f.median:
        spread = f" [{min(f.walls):.2f}–{max(f.walls):.2f}]"
    return f"{f.median:.2f} s{spread}"


def esc(text: str) -> str:
    """Text for a markdown table cell: a bare | would end the cell."""
    return re.sub(r"(?<!\\)\|", r"\\|", text)


def fmt_cpu(key: str) -> str:
    f = FIG.get(key)
    return f"{f.cpu:.1f} s" if f is not None and f.ok else "—"


def fmt_rss(key: str) -> str:
    f = FIG.get(key)
    return f"{f.rss_mb:.0f} MB" if f is not None and f.ok else "—"


def mb(n: int | float | None) -> str:
    return "—" if n is None else f"{n / 1e6:,.1f} MB"


def ratio(a: str, b: str) -> float | None:
    fa, fb = FIG.get(a), FIG.get(b)
    if fa is None or fb is None or not fa.ok or not fb.ok or fb.median == 0:
        return None
    return fa.median / fb.median


def xr(r: float | None, digits: int = 2) -> str:
    return "—" if r is None else f"{r:.{digits}f}x"


def size_of(key: str) -> int | None:
    f = FIG.get(key)
    return f.extra.get("size") if f is not None and f.ok else None


def file_size(p: Path | None) -> int | None:
    if p is None:
        return None
    try:
        return du(p, apparent=True) if p.is_dir() else p.stat().st_size
    except (OSError, subprocess.CalledProcessError):
        return None


def verdict(ok: bool | None) -> str:
    return "UNKNOWN" if ok is None else ("MET" if ok else "NOT MET")


def failures_md() -> list[str]:
    out = []
    for f in FIG.values():
        if not f.ok and not (f.error or "").startswith("skipped"):
            out.append(f"- **{f.label}** (`{f.key}`): {f.error}")
            if f.error_tail:
                out.append("  ```\n  " + f.error_tail.replace("\n", "\n  ") + "\n  ```")
        elif not f.ok:
            out.append(f"- {f.label} (`{f.key}`): {f.error}")
    return out


def step_table(key: str) -> list[str]:
    """Step durations of the counted run whose wall time is the median."""
    f = FIG.get(key)
    if f is None or not f.ok or not f.extra.get("steps"):
        return []
    idx = sorted(range(len(f.walls)), key=lambda j: f.walls[j])[len(f.walls) // 2]
    marks, total = f.extra["steps"][min(idx, len(f.extra["steps"]) - 1)], f.walls[idx]
    if not marks:
        return []
    lines = [f"`{f.label}`: run of {total:.1f} s, as `-v` stamps its steps (each lasts until the next; the last until exit):", "",
             "| step | s | share |", "|---|---:|---:|"]
    if marks[0][1] > 0.05:
        lines.append(f"| (start-up, before the first step) | {marks[0][1]:.1f} | {marks[0][1] / total:.0%} |")
    for j, (msg, t) in enumerate(marks):
        end = marks[j + 1][1] if j + 1 < len(marks) else total
        lines.append(f"| {msg} | {end - t:.1f} | {(end - t) / total:.0%} |")
    return lines + [""]


def commands_md() -> list[str]:
    """Every figure's exact command lines, as run (the last run's; other runs differ only in the run number in paths)."""
    figs = [f for f in FIG.values() if f.extra.get("commands")]
    if not figs:
        return []
    L = ["## Commands", "",
         "Each figure times these command lines one after the other (summed when there are several), with the environment "
         "every command gets (`PYTHONDONTWRITEBYTECODE` and the other `PYTHON*` variables unset, PATH without pyenv shims) "
         "and `sync` before each; a string with shell syntax runs under `bash -c`. Shown is the last counted run; the other "
         "runs differ only in the run number in their paths. `shipenv` and `shipenv_write` stand for the snapshot of this "
         "run, as these shell functions:", "", "```"]
    L += [f'{name}() {{ {words} "$@"; }}' for name, words in aliases().items()]
    L += ["```", ""]
    for f in figs:
        L.append(f"- `{f.key}`: {f.label}")
        L += ["  ```"] + [f"  {abbreviate(c)}" for c in f.extra["commands"]] + ["  ```"]
    return L + [""]


def report(ctx: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    L: list[str] = []
    L.append(f"# shipenv benchmark — {meta['date']}")
    L.append("")
    L.append(f"{meta['machine']}; workload `{REQUIREMENTS.relative_to(REPO)}` on CPython {PYVER}; {meta['runs']} counted run(s) after "
             f"{meta['warm']} warm-up (medians; [min–max] where the spread exceeds 15 %); peak RSS = largest single process (GNU time %M). "
             f"shipenv {meta['shipenv']}, git {meta['git']}"
             + (f" (the checkout was at {meta['git_end']} by the end; the snapshot did not move)"
                if meta.get("git_end") and not meta["git"].startswith(meta["git_end"] + ",") else "")
             + f". Load average at start {meta['load_start']}, at end {meta['load_end']}"
             + (" — **other jobs were running on this machine: timings are noisy**." if meta["noisy"] else "."))
    L.append("")

    # Build
    L += ["## Build: requirements → artifact", "",
          "Offline from one local wheelhouse (shipenv `--wheels`, pip `--no-index -f`, pex `--no-pypi -f`): on this machine pip's "
          "HTTP cache keeps no PyPI wheel, so a \"warm pip cache\" would still download them. The rows marked *configured "
          "indexes* go through pypi.org and the machine's file:// indexes instead (1 run each).", "",
          "| what | wall | CPU | peak RSS | artifact | shipenv clean build ÷ this |", "|---|---:|---:|---:|---|---:|"]
    v1 = RUN / "art" / "v1.tar.zst"
    rows = [
        ("build.shipenv", f"`.tar.zst` {mb(file_size(v1))}", None),
        ("build.shipenv_dir", f"dir {mb(file_size(ctx.get('tree')))}", "build.shipenv_dir"),
        ("build.pip_venvpack", f"`.tar.gz` {mb(file_size(ctx.get('venvpack')))} (no interpreter)", "build.pip_venvpack"),
        ("build.pex", f"`.pex` {mb(file_size(ctx.get('pex')))} (no interpreter)", "build.pex"),
        ("build.pex_warm", "same", "build.pex_warm"),
        ("build.pyinstaller", f"dir {mb(file_size(ctx.get('pyinstaller')))}", "build.pyinstaller"),
        ("build.rebuild", f"`.tar.zst` {mb(file_size(RUN / 'art' / 'v2.tar.zst'))}", "build.rebuild"),
        ("build.rebuild_same", "`.tar.zst`", "build.rebuild_same"),
        ("build.shipenv_index", "`.tar.zst`", None),
        ("build.rebuild_index", "`.tar.zst`", None),
        ("build.pip_venvpack_index", "`.tar.gz`", None),
    ]
    for key, art, other in rows:
        f = FIG.get(key)
        if f is None:
            continue
        cmp = "—" if other is None else xr(ratio("build.shipenv", other))
        if key in ("build.rebuild", "build.rebuild_same", "build.shipenv_dir"):
            cmp = f"this ÷ clean: {xr(ratio(key, 'build.shipenv'))}"
        elif key == "build.shipenv_index":
            cmp = f"÷ pip via indexes: {xr(ratio(key, 'build.pip_venvpack_index'))}"
        elif key == "build.rebuild_index":
            cmp = f"this ÷ clean via indexes: {xr(ratio(key, 'build.shipenv_index'))}"
        n = f" (n={len(f.walls)})" if f.ok and len(f.walls) == 1 and len(FIG["build.shipenv"].walls) > 1 else ""
        L.append(f"| {esc(f.label)}{n} | {fmt_s(key)} | {fmt_cpu(key)} | {fmt_rss(key)} | {art} | {cmp} |")
        if key.startswith("build.pip_venvpack") and f.ok and f.extra.get("step_walls"):
            parts = [statistics.median(col) for col in zip(*f.extra["step_walls"])]
            L.append(f"| … of which venv / pip install / venv-pack | {' / '.join(f'{x:.2f}' for x in parts)} s | | | | |")
    L.append("")

    # Pack
    L += [f"## Packing the same tree ({mb(VAL.get('tree.bytes'))} in {VAL.get('tree.files', '?'):,} files, "
          f"tar stream {mb(VAL.get('tree.tar_stream_bytes'))})" if "tree.bytes" in VAL else "## Packing the same tree", "",
          "| what | wall | MB/s (tar stream) | peak RSS | archive | vs baseline |", "|---|---:|---:|---:|---:|---|"]
    for key, base, kind in (("pack.shipenv_zst", "pack.tar_zstd", "zst"), ("pack.tar_zstd", None, ""),
                            ("pack.shipenv_gz", "pack.tar_gz", "gz"), ("pack.tar_gz", None, ""), ("pack.tar_pigz", None, "")):
        f = FIG.get(key)
        if f is None:
            continue
        vs = ""
        if base and ratio(base, key) is not None:
            vs = f"throughput {xr(ratio(base, key))} of `{esc(FIG[base].label)}`"
            if kind == "gz":
                s, sb = size_of(key), size_of(base)
                vs = f"{xr(ratio(base, key))} faster than `tar -czf`; size {xr(s / sb if s and sb else None)}"
        L.append(f"| {esc(f.label)} | {fmt_s(key)} | {f.extra.get('mb_per_s', '—')} | {fmt_rss(key)} | {mb(size_of(key))} | {vs} |")
    L.append("")

    # Deploy
    L += ["## Deploy (`.tar.zst` of the same build)", "", "| what | wall | peak RSS | vs `tar --zstd -xf` of the same archive |",
          "|---|---:|---:|---|"]
    for key, base in (("deploy.first", "deploy.tar_v1"), ("deploy.tar_v1", None), ("deploy.tar_v1_sync", None),
                      ("deploy.v2", "deploy.tar_v2"), ("deploy.tar_v2", None)):
        f = FIG.get(key)
        if f is None:
            continue
        L.append(f"| {esc(f.label)} | {fmt_s(key)} | {fmt_rss(key)} | {xr(ratio(key, base)) if base else ''} |")
    if "disk.releases_v1_v2" in VAL:
        L += ["", f"Disk (du, hard links once): releases v1 + v2 after `shipenv deploy` **{mb(VAL['disk.releases_v1_v2'])}** "
              f"(v2 added {mb(VAL['disk.added_by_v2'])} = {VAL['disk.added_by_v2'] / VAL['disk.plain_v2']:.1%} of a full tree) vs two plain "
              f"extractions {mb(VAL['disk.plain_v1_v2'])} ({VAL['disk.releases_v1_v2'] / VAL['disk.plain_v1_v2']:.2f}x)."]
    L.append("")

    # Sizes
    L += ["## Artifact sizes", "", "| artifact | size | vs |", "|---|---:|---|"]
    zs, tz, gz, tg = size_of("pack.shipenv_zst"), size_of("pack.tar_zstd"), size_of("pack.shipenv_gz"), size_of("pack.tar_gz")
    L.append(f"| shipenv `.tar.zst` (archive.write of the dir tree) | {mb(zs)} | {xr(zs / tz if zs and tz else None)} of `tar \\| zstd -3` ({mb(tz)}) |")
    L.append(f"| shipenv `.tar.gz` | {mb(gz)} | {xr(gz / tg if gz and tg else None)} of `tar -czf` ({mb(tg)}) |")
    L.append(f"| shipenv build `.tar.zst` (v1) | {mb(file_size(v1))} | |")
    L.append(f"| shipenv bundle tree (dir) | {mb(VAL.get('tree.bytes'))} | source venv {mb(file_size(ctx.get('src_venv')))} (+ the host's interpreter) |")
    L.append(f"| venv-pack `.tar.gz` | {mb(file_size(ctx.get('venvpack')))} | no interpreter inside |")
    L.append(f"| pex | {mb(file_size(ctx.get('pex')))} | no interpreter inside |")
    L.append(f"| PyInstaller onedir | {mb(file_size(ctx.get('pyinstaller')))} | uncompressed dir |")
    L.append("")

    # Cold start
    L += [f"## Cold start: `python -c \"{COLD_CODE}\"` (median of 5 after 1 warm-up, PYTHONDONTWRITEBYTECODE unset)", "",
          "| through | wall | CPU | peak RSS | vs source venv (wall) |", "|---|---:|---:|---:|---|"]
    for key in ("start.venv", "start.bundle", "start.bundle_dir", "start.pex", "start.pyinstaller"):
        f = FIG.get(key)
        if f is None:
            continue
        spread = f" [{min(f.walls) * 1000:.0f}–{max(f.walls) * 1000:.0f}]" if f.ok else ""
        L.append(f"| {esc(f.label)} | {f'{f.median * 1000:.0f} ms{spread}' if f.ok else fmt_s(key)} | "
                 f"{f'{f.cpu * 1000:.0f} ms' if f.ok else '—'} | {fmt_rss(key)} | "
                 f"{'' if key == 'start.venv' else xr(ratio(key, 'start.venv'))} |")
    L.append("")

    # Big
    L += [f"## Memory on a bundle over 1 GB (workload + {BIG_EXTRA}: {mb(VAL.get('big.tree_bytes'))}, "
          f"{VAL.get('big.tree_files', '?')} files; 1 run each)", "", "| what | wall | peak RSS | output |", "|---|---:|---:|---:|"]
    for key in ("big.build", "big.pack_zst", "big.pack_gz", "big.deploy"):
        f = FIG.get(key)
        if f is None:
            continue
        L.append(f"| {esc(f.label)} | {fmt_s(key)} | {fmt_rss(key)} | {mb(size_of(key)) if size_of(key) else ''} |")
    if VAL.get("big.retries"):
        first = VAL["big.retries"][0]
        L += ["", "The first attempt failed: `" + " ".join(first["error"].splitlines()[-2:-1] or ["?"])[:400] + "`; "
              f"retried with `--system-lib` for {', '.join(VAL.get('big.system_libs', []))} (torch's test programs in `torch/bin` "
              "have RUNPATH `$ORIGIN`, which does not reach `torch/lib`)."]
    L.append("")

    # Hostile
    if any(k in FIG for k in ("hostile.deploy", "hostile.deploy_sh")):
        L += [f"## Memory on a hostile archive ({mb(VAL.get('hostile.archive_bytes'))} of gzip whose first pax header declares "
              "1 GiB; 1 run each)", "", "| what | wall | peak RSS | refusal |", "|---|---:|---:|---|"]
        for key in ("hostile.deploy", "hostile.deploy_sh"):
            f = FIG.get(key)
            if f is not None:
                L.append(f"| {esc(f.label)} | {fmt_s(key)} | {fmt_rss(key)} | {esc(f.extra.get('refusal', '—'))} |")
        L.append("")

    # Targets: the ratio targets come from RATIO_TARGETS; the three with more than one figure are judged here.
    targets: list[dict[str, Any]] = []

    def target(name: str, ok: bool | None, figures: str) -> None:
        targets.append({"target": name, "verdict": verdict(ok), "figures": figures})

    for rt in RATIO_TARGETS:
        if rt.name.startswith(".tar.gz"):
            r = ratio("pack.tar_gz", "pack.shipenv_gz")
            gz_size = gz / tg if gz and tg else None
            target(rt.name, None if r is None or gz_size is None else (r >= T_GZ_SPEED and gz_size <= T_GZ_SIZE),
                   f"{xr(r)} faster ({fmt_s('pack.shipenv_gz')} vs {fmt_s('pack.tar_gz')}), size {xr(gz_size, 3)}")
        elif rt.name.startswith("… and far less disk"):
            added = VAL["disk.added_by_v2"] / VAL["disk.plain_v2"] if "disk.added_by_v2" in VAL else None
            target(rt.name, None if added is None else added <= T_DEPLOY_DISK,
                   "—" if added is None else f"v2 added {mb(VAL['disk.added_by_v2'])} = {added:.1%} of a full tree; releases "
                   f"{mb(VAL['disk.releases_v1_v2'])} vs {mb(VAL['disk.plain_v1_v2'])} for two plain extractions")
        elif rt.name.startswith("Peak memory"):
            big = [k for k in ("big.pack_zst", "big.pack_gz", "big.deploy") if k in FIG]
            big_ok: bool | None = None
            if big and all(FIG[k].ok for k in big) and VAL.get("big.tree_bytes", 0) > 1e9:
                big_ok = all(FIG[k].rss_mb < T_RSS_MB for k in big)
            target(rt.name, big_ok,
                   ", ".join(f"{k.split('.')[1]} {fmt_rss(k)}" for k in big) + f" (tree {mb(VAL.get('big.tree_bytes'))})")
        else:
            r = ratio(rt.theirs, rt.ours) if rt.throughput else ratio(rt.ours, rt.theirs)
            ok = None if r is None else (r >= rt.limit if rt.throughput else r <= rt.limit)
            target(rt.name, ok, f"{xr(r, rt.digits)} ({fmt_s(rt.ours)} vs {fmt_s(rt.theirs)})")
    L += ["## Targets", "", "| target | verdict | figures |", "|---|---|---|"]
    L += [f"| {esc(t['target'])} | **{t['verdict']}** | {esc(t['figures'])} |" for t in targets]
    L.append("")

    # Where shipenv's time goes
    steps = []
    for key in ("build.shipenv", "build.rebuild", "build.rebuild_same", "build.shipenv_index", "build.rebuild_index", "deploy.v2",
                "big.build"):
        steps += step_table(key)
    if steps:
        L += ["## Where shipenv's time goes", ""] + steps

    L += commands_md()

    fails = failures_md()
    if fails:
        L += ["## Failed or skipped", ""] + fails + [""]
    L += ["Raw runs, logs: `benchmarks/results/latest.json`, `" + str(RUN / "logs") + "`."]
    return "\n".join(L) + "\n", targets


def versions() -> dict[str, str]:
    def out(cmd: str) -> str:
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV)
        return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else "?"

    v = {"python": out(f"{PY} -V"), "tar": out("tar --version"), "zstd": out("zstd --version"), "gzip": out("gzip --version"),
         "pigz": out("pigz --version 2>&1"), "kernel": platform.release()}
    for name in ("venv-pack", "pex", "pyinstaller"):
        pip = BENCH / "tools" / name / "bin" / "pip"
        v[name] = out(f"{pip} freeze 2>/dev/null | grep -i '^{name}=='") if pip.exists() else "not installed"
    return v


