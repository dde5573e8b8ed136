"""The groups of figures: setup of the peers, then build, pack, deploy, start and big.

Each group measures into measure.FIG and measure.VAL; report.py turns them into tables.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hostile import hostile_archive
from measure import (
    ADDED,
    BENCH,
    BIG_EXTRA,
    COLD_CODE,
    ENV,
    FIG,
    HOSTILE_MIB,
    NAME,
    PEER_PINS,
    PY,
    REQUIREMENTS,
    RUN,
    SHIP_PY,
    SNAPSHOT,
    V1,
    V2,
    VAL,
    WRITE_CODE,
    Cmd,
    Failure,
    Spec,
    count_files,
    discard,
    du,
    empty_trash,
    measure,
    measure_many,
    sh,
    shipenv_cmd,
    skip,
    tail,
)

# -- setup: peers and the pip cache --------------------------------------------------------


def ensure_venv(name: str, packages: list[str], extra_req: Path | None = None) -> Path:
    """A peer's own venv under BENCH/tools, reused when its marker says the same packages."""
    venv = BENCH / "tools" / name
    want = json.dumps({"python": str(PY), "packages": packages, "req": extra_req.read_text() if extra_req else None})
    marker = venv / ".shipenv-bench-ok"
    if marker.is_file() and marker.read_text() == want:
        return venv
    log = RUN / "logs" / f"setup-{name}.log"
    if venv.exists():
        shutil.rmtree(venv)
    sh(f"{shlex.quote(str(PY))} -m venv {shlex.quote(str(venv))}", log)
    if extra_req is not None:
        sh(f"{shlex.quote(str(venv / 'bin/pip'))} install -q -r {shlex.quote(str(extra_req))}", log)
    sh(f"{shlex.quote(str(venv / 'bin/pip'))} install -q {' '.join(map(shlex.quote, packages))}", log)
    marker.write_text(want)
    return venv


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Peer venvs (reused), the requirements files of this run, a local wheelhouse, a warm pip cache."""
    req_dir = RUN / "req"
    req_dir.mkdir(parents=True)
    req1 = req_dir / "requirements.txt"
    shutil.copy(REQUIREMENTS, req1)
    req2 = req_dir / "requirements-v2.txt"
    req2.write_text(REQUIREMENTS.read_text().rstrip("\n") + f"\n# v2: one requirement added\n{ADDED}\n")
    big = req_dir / "requirements-big.txt"
    big.write_text(REQUIREMENTS.read_text().rstrip("\n") + f"\n# > 1 GB bundle\n{BIG_EXTRA}\n")
    ctx: dict[str, Any] = {"req1": req1, "req2": req2, "req_big": big, "tools": {}, "offline": args.offline}
    log = RUN / "logs" / "setup.log"

    for name in ("venv-pack", "pex"):
        try:
            ctx["tools"][name] = ensure_venv(name, [PEER_PINS[name]])
        except Failure as exc:
            ctx["tools"][name] = exc
    try:
        # PyInstaller analyses the environment it runs in: its venv holds the workload too.
        ctx["tools"]["pyinstaller"] = ensure_venv("pyinstaller", [PEER_PINS["pyinstaller"]], REQUIREMENTS)
    except Failure as exc:
        ctx["tools"]["pyinstaller"] = exc

    # The local wheelhouse every timed build resolves from (workload + v2's addition). On this
    # machine pip's HTTP cache never keeps the wheels that come from PyPI (its proxy sends no
    # cache headers: `pip download -vv` says "Updating cache" and the next run downloads again),
    # so "a warm pip cache" would still measure the network. Offline from one wheelhouse:
    # shipenv `--wheels DIR`, pip `--no-index -f DIR`, pex `--no-pypi -f DIR`.
    wheels = BENCH / "wheels"
    stamp = wheels / ".requirements"
    if not (stamp.is_file() and stamp.read_text() == req2.read_text()):
        shutil.rmtree(wheels, ignore_errors=True)
        try:
            sh(f"{shlex.quote(str(PY))} -m pip download -q --only-binary=:all: -r {shlex.quote(str(req2))} -d {shlex.quote(str(wheels))}", log)
            stamp.write_text(req2.read_text())
        except Failure as exc:
            ctx["wheels_error"] = exc
    ctx["wheels"] = wheels

    # Warm-up install: pip's caches (index pages, locally built wheels) and the page cache are as
    # warm as they get before anything is timed; the index-based figures are marked as such.
    print("  warm-up: pip install of the workload (+ v2's addition) into a throwaway venv; pip download of the >1 GB variant")
    warmv = RUN / "warm-venv"
    try:
        sh(f"{shlex.quote(str(PY))} -m venv {warmv}", log)
        sh(f"{warmv}/bin/pip install -q -r {shlex.quote(str(req2))}", log)
        if "big" in args.groups:
            sh(f"{warmv}/bin/pip download -q -r {shlex.quote(str(big))} -d {RUN / 'warm-dl'}", log)
            discard(RUN / "warm-dl")
        VAL["setup.warm_install"] = "ok"
    except Failure as exc:
        VAL["setup.warm_install"] = f"failed: {exc.message}: {exc.tail}"
        print(f"  warm-up install failed: {exc.message}\n{exc.tail}")
    discard(warmv)
    return ctx


# -- groups ----------------------------------------------------------------------------------


def shipenv_build(req: Path, version: str, out: Path, *extra: str, wheels: Path | None = None) -> list[str]:
    """``shipenv build -v``; with ``wheels``, resolving from that wheelhouse only (``--wheels``)."""
    offline = ["--wheels", str(wheels)] if wheels is not None else []
    return shipenv_cmd("build", "-v", "-r", str(req), *offline, "--python", str(PY), "--name", NAME, "--version", version,
                       "-o", str(out), *extra)


def group_build(ctx: dict[str, Any], runs: int, warm: int) -> None:
    """Every build of a round back to back, so the machine's load falls on all of them alike."""
    art = RUN / "art"
    art.mkdir(exist_ok=True)
    b = RUN / "build"
    b.mkdir(exist_ok=True)
    req1, req2 = ctx["req1"], ctx["req2"]
    # Offline from the local wheelhouse (see setup); from the configured indexes if it is missing.
    w: Path | None = None if "wheels_error" in ctx else ctx["wheels"]
    src = "wheelhouse" if w is not None else "indexes"
    pip_src = ["--no-index", "-f", str(w)] if w is not None else []
    cache = {i: b / f"cache-{i}" for i in range(warm + runs)}
    specs: list[Spec] = []

    # shipenv, clean: an empty --cache-dir of its own each run -> v1 .tar.zst. Its rebuilds use
    # the cache this run filled: v2 adds one requirement; "same" changes nothing.
    specs.append(Spec("build.shipenv", f"shipenv build -> .tar.zst (empty --cache-dir, {src})",
                      lambda i: [shipenv_build(req1, V1, b / f"clean-{i}", "--cache-dir", str(cache[i]), wheels=w)],
                      setup=lambda i: discard(b / f"clean-{i - 1}", cache.get(i - 1, b / "none")), steps_log=True))
    specs.append(Spec("build.rebuild", f"shipenv rebuild, {ADDED} added, warm --cache-dir",
                      lambda i: [shipenv_build(req2, V2, b / f"rebuild-{i}", "--cache-dir", str(cache[i]), wheels=w)],
                      setup=lambda i: discard(b / f"rebuild-{i - 1}"), needs="build.shipenv", steps_log=True))
    specs.append(Spec("build.rebuild_same", "shipenv rebuild, nothing changed, warm --cache-dir",
                      lambda i: [shipenv_build(req1, V1, b / f"same-{i}", "--cache-dir", str(cache[i]), wheels=w)],
                      setup=lambda i: discard(b / f"same-{i - 1}"), needs="build.shipenv", steps_log=True))

    # What users do today: fresh venv + pip install -r + venv-pack (gzip level 4, its default).
    vp = ctx["tools"].get("venv-pack")
    if isinstance(vp, Path):
        def pip_steps(tag: str, extra: list[str]) -> Callable[[int], list[Cmd]]:
            return lambda i: [[str(PY), "-m", "venv", str(b / f"{tag}venv-{i}")],
                              [str(b / f"{tag}venv-{i}/bin/pip"), "install", "-q", *extra, "-r", str(req1)],
                              [str(vp / "bin/venv-pack"), "--quiet", "-p", str(b / f"{tag}venv-{i}"), "-o", str(b / f"{tag}venvpack-{i}.tar.gz")]]

        specs.append(Spec("build.pip_venvpack", f"python -m venv + pip install -r ({src}) + venv-pack -> .tar.gz", pip_steps("", pip_src),
                          setup=lambda i: discard(b / f"venv-{i - 1}", b / f"venvpack-{i - 1}.tar.gz")))
    else:
        skip("build.pip_venvpack", "pip install -r + venv-pack", f"venv-pack not installed: {getattr(vp, 'message', vp)}")

    # pex from the local wheelhouse: a fresh PEX_ROOT, then the same PEX_ROOT again (warm).
    pex = ctx["tools"].get("pex")
    if isinstance(pex, Path) and "wheels_error" not in ctx:
        def pex_cmd(i: int) -> list[str]:
            return [f"PEX_ROOT={shlex.quote(str(b / f'pexroot-{i}'))} {shlex.quote(str(pex / 'bin/pex'))} --python {shlex.quote(str(PY))} "
                    f"--python-shebang {shlex.quote(str(PY))} --no-pypi -f {shlex.quote(str(ctx['wheels']))} "
                    f"-r {shlex.quote(str(req1))} -o {shlex.quote(str(b / f'app-{i}.pex'))}"]

        specs.append(Spec("build.pex", "pex -r (fresh PEX_ROOT, local wheelhouse) -> .pex", pex_cmd,
                          setup=lambda i: discard(b / f"pexroot-{i - 1}", b / f"app-{i - 1}.pex")))
        specs.append(Spec("build.pex_warm", "pex -r (warm PEX_ROOT)", pex_cmd, setup=lambda i: discard(b / f"app-{i}.pex"),
                          needs="build.pex"))
    else:
        why = getattr(pex, "message", None) or getattr(ctx.get("wheels_error"), "message", "?")
        skip("build.pex", "pex", f"pex or the wheelhouse is missing: {why}")

    # PyInstaller --onedir, in a venv that already holds the workload: its pip install is not
    # counted, which makes the comparison stricter for shipenv than "requirements -> artifact".
    pyi = ctx["tools"].get("pyinstaller")
    pi = b / "pyi"
    if isinstance(pyi, Path):
        pi.mkdir(exist_ok=True)
        # The 3 cold-start imports run; the rest is only collected (PyInstaller follows every import).
        (pi / "app.py").write_text(
            "import sys\n"
            "import django, numpy, pandas\n"
            "if '--all' in sys.argv:\n"
            "    import gunicorn, requests, cryptography, lxml.etree, PIL.Image, yaml, sqlalchemy, psycopg\n"
        )
        specs.append(Spec("build.pyinstaller", "PyInstaller --onedir (workload preinstalled) -> dir",
                          [f"cd {shlex.quote(str(pi))} && {shlex.quote(str(pyi / 'bin/pyinstaller'))} --onedir --noconfirm "
                           "--log-level WARN --distpath dist --workpath build --specpath spec --name app app.py"],
                          setup=lambda i: discard(pi / "dist", pi / "build", pi / "spec")))
    else:
        skip("build.pyinstaller", "PyInstaller --onedir", f"PyInstaller not installed: {getattr(pyi, 'message', pyi)}")

    measure_many(specs, runs=runs, warm=warm)

    if not ctx.get("offline"):
        # The same through the machine's configured indexes (pypi.org + two file:// indexes), once:
        # shipenv's resolver path as users meet it, network included.
        index_specs = [
            Spec("build.shipenv_index", "shipenv build -> .tar.zst, configured indexes (network), empty --cache-dir",
                 [shipenv_build(req1, V1, b / "clean-index", "--cache-dir", str(b / "cache-index"))], steps_log=True),
            Spec("build.rebuild_index", f"shipenv rebuild, {ADDED} added, configured indexes, warm --cache-dir",
                 [shipenv_build(req2, V2, b / "rebuild-index", "--cache-dir", str(b / "cache-index"))], needs="build.shipenv_index",
                 steps_log=True),
        ]
        if isinstance(vp, Path):
            index_specs.append(Spec("build.pip_venvpack_index", "python -m venv + pip install -r (configured indexes) + venv-pack",
                                    pip_steps("index-", [])))
        measure_many(index_specs, runs=1, warm=0)
        discard(b / "clean-index", b / "cache-index", b / "rebuild-index", b / "index-venv-0", b / "index-venvpack-0.tar.gz")

    last = warm + runs - 1
    if FIG["build.shipenv"].ok:
        shutil.copy(b / f"clean-{last}" / f"{NAME}-{V1}.tar.zst", art / "v1.tar.zst")
    if FIG["build.rebuild"].ok:
        shutil.copy(b / f"rebuild-{last}" / f"{NAME}-{V2}.tar.zst", art / "v2.tar.zst")
    if FIG.get("build.pip_venvpack") and FIG["build.pip_venvpack"].ok:
        ctx["src_venv"], ctx["venvpack"] = b / f"venv-{last}", b / f"venvpack-{last}.tar.gz"
    if FIG.get("build.pex") and FIG["build.pex"].ok:
        ctx["pex"] = b / f"app-{last}.pex"
    if FIG.get("build.pyinstaller") and FIG["build.pyinstaller"].ok:
        ctx["pyinstaller"] = pi / "dist" / "app"
    discard(*cache.values())
    empty_trash()

    # The tree every baseline works on: a --format dir build of the same workload, once.
    fig = measure("build.shipenv_dir", "shipenv build --format dir --no-cache (the tree the baselines use)",
                  [shipenv_build(req1, V1, b / "dir", "--format", "dir", "--no-cache", wheels=w)], runs=1, warm=0, steps_log=True)
    if fig.ok:
        ctx["tree"] = b / "dir" / f"{NAME}-{V1}"


def remover(path: Path) -> Callable[[int], None]:
    """A setup step that deletes ``path`` (an earlier run's output)."""
    return lambda _i: path.unlink(missing_ok=True)


def group_pack(ctx: dict[str, Any], runs: int, warm: int) -> None:
    tree: Path | None = ctx.get("tree")
    labels = {"pack.shipenv_zst": "shipenv archive.write tar.zst (default level 3, all cores)",
              "pack.tar_zstd": "tar -cf - | zstd -T0 -3",
              "pack.shipenv_gz": "shipenv archive.write tar.gz (default level, all cores)",
              "pack.tar_gz": "tar -czf (gzip -6, 1 thread)",
              "pack.tar_pigz": "tar -cf - | pigz -6 (reference, all cores)"}
    if tree is None:
        for k, label in labels.items():
            skip(k, label, "no --format dir tree (its build failed)")
        return
    p = RUN / "pack"
    p.mkdir(exist_ok=True)
    VAL["tree.bytes"] = du(tree, apparent=True)
    VAL["tree.disk"] = du(tree)
    VAL["tree.files"] = count_files(tree)
    VAL["tree.tar_stream_bytes"] = int(sh(f"tar -C {shlex.quote(str(tree.parent))} -cf - {tree.name} | wc -c").stdout.split()[0])
    parent, name = shlex.quote(str(tree.parent)), shlex.quote(tree.name)

    def writer(fmt: str, out: Path) -> list[Cmd]:
        return [[str(SHIP_PY), "-c", WRITE_CODE, str(SNAPSHOT), str(tree), str(out), fmt, tree.name]]

    outs = {"pack.shipenv_zst": p / "shipenv.tar.zst", "pack.tar_zstd": p / "tar.tar.zst", "pack.shipenv_gz": p / "shipenv.tar.gz",
            "pack.tar_gz": p / "tar.tar.gz", "pack.tar_pigz": p / "pigz.tar.gz"}
    cmds: dict[str, Sequence[Cmd]] = {
        "pack.shipenv_zst": writer("tar.zst", outs["pack.shipenv_zst"]),
        "pack.tar_zstd": [f"tar -C {parent} -cf - {name} | zstd -q -T0 -3 -o {outs['pack.tar_zstd']}"],
        "pack.shipenv_gz": writer("tar.gz", outs["pack.shipenv_gz"]),
        "pack.tar_gz": [f"tar -C {parent} -czf {outs['pack.tar_gz']} {name}"],
        "pack.tar_pigz": [f"tar -C {parent} -cf - {name} | pigz -6 > {outs['pack.tar_pigz']}"],
    }
    measure_many([Spec(k, labels[k], cmds[k], setup=remover(outs[k])) for k in cmds], runs=runs, warm=warm)
    for k, out in outs.items():
        fig = FIG[k]
        if fig.ok:
            fig.extra["size"] = out.stat().st_size
            fig.extra["mb_per_s"] = round(VAL["tree.tar_stream_bytes"] / 1e6 / fig.median, 1)
    # GNU tar must read what shipenv wrote.
    for k in ("pack.shipenv_zst", "pack.shipenv_gz"):
        if FIG[k].ok:
            flag = "--zstd" if k.endswith("zst") else "-z"
            r = sh(f"tar {flag} -tf {outs[k]} | wc -l", check=False)
            FIG[k].extra["gnu_tar_lists_entries"] = r.stdout.strip() if r.returncode == 0 else f"FAILED: {tail(r.stderr)}"


def group_deploy(ctx: dict[str, Any], runs: int, warm: int) -> None:
    art = RUN / "art"
    v1, v2 = art / "v1.tar.zst", art / "v2.tar.zst"
    d = RUN / "deploy"
    d.mkdir(exist_ok=True)
    keys = ("deploy.first", "deploy.tar_v1", "deploy.tar_v1_sync", "deploy.v2", "deploy.tar_v2")
    if not v1.is_file():
        for k in keys:
            skip(k, k, "no v1 archive (the shipenv build failed)")
        return

    def deploy_cmd(archive: Path, root: Path) -> list[str]:
        return shipenv_cmd("deploy", "-v", str(archive), "--root", str(root))

    def fresh(name: str, make: bool = False) -> Callable[[int], None]:
        def f(i: int) -> None:
            discard(d / f"{name}-{i - 1}")
            if make:
                (d / f"{name}-{i}").mkdir(parents=True)
        return f

    def v2_setup(i: int) -> None:
        discard(d / f"r2-{i - 1}")
        sh(shlex.join(deploy_cmd(v1, d / f"r2-{i}")), RUN / "logs" / "deploy.v2-setup.log")

    specs = [
        Spec("deploy.first", "shipenv deploy v1 into an empty root", lambda i: [deploy_cmd(v1, d / f"r1-{i}")],
             setup=fresh("r1"), steps_log=True),
        Spec("deploy.tar_v1", "tar --zstd -xf v1 (empty dir)", lambda i: [f"tar -C {d}/x1-{i} --zstd -xf {v1}"],
             setup=fresh("x1", make=True)),
        Spec("deploy.tar_v1_sync", "tar --zstd -xf v1 && sync (reference: deploy makes its files durable)",
             lambda i: [f"tar -C {d}/xs-{i} --zstd -xf {v1} && sync"], setup=fresh("xs", make=True)),
    ]
    if v2.is_file():
        specs += [
            Spec("deploy.v2", "shipenv deploy v2 beside v1", lambda i: [deploy_cmd(v2, d / f"r2-{i}")], setup=v2_setup, steps_log=True),
            Spec("deploy.tar_v2", "tar --zstd -xf v2 (empty dir)", lambda i: [f"tar -C {d}/x2-{i} --zstd -xf {v2}"],
                 setup=fresh("x2", make=True)),
        ]
    else:
        skip("deploy.v2", "shipenv deploy v2 beside v1", "no v2 archive (the rebuild failed)")
        skip("deploy.tar_v2", "tar --zstd -xf v2", "no v2 archive")
    measure_many(specs, runs=runs, warm=warm)

    last = warm + runs - 1
    if FIG["deploy.first"].ok:
        ctx["bundle_python"] = d / f"r1-{last}" / "current" / "bin" / "python"
    if FIG.get("deploy.v2") and FIG["deploy.v2"].ok:
        rel = d / f"r2-{last}" / "releases"
        VAL["disk.releases_v1_v2"] = du(rel)
        VAL["disk.release_v1"] = du(rel / f"{NAME}-{V1}")
        VAL["disk.added_by_v2"] = VAL["disk.releases_v1_v2"] - VAL["disk.release_v1"]
        # Two plain extractions of the same archives, as a tar-based rollout would keep them.
        sh(f"mkdir -p {d}/plain/a {d}/plain/b && tar -C {d}/plain/a --zstd -xf {v1} && tar -C {d}/plain/b --zstd -xf {v2}")
        VAL["disk.plain_v1_v2"] = du(d / "plain" / "a", d / "plain" / "b")
        VAL["disk.plain_v2"] = du(d / "plain" / "b")
        discard(d / "plain")
    empty_trash()


def group_start(ctx: dict[str, Any], runs: int, warm: int) -> None:
    """Cold start, median of 5 after 1 warm-up, every interpreter of a round back to back."""
    specs = []
    if ctx.get("src_venv") is not None:
        specs.append(Spec("start.venv", "source venv (the pip run's)", [[str(ctx["src_venv"] / "bin" / "python"), "-c", COLD_CODE]]))
    else:
        skip("start.venv", "source venv", "no source venv (pip install + venv-pack failed)")
    if ctx.get("bundle_python") is not None:
        specs.append(Spec("start.bundle", "shipenv bundle, deployed v1: current/bin/python", [[str(ctx["bundle_python"]), "-c", COLD_CODE]]))
    else:
        skip("start.bundle", "shipenv bundle", "no deployed bundle")
    if ctx.get("tree") is not None:
        specs.append(Spec("start.bundle_dir", "shipenv bundle, --format dir tree: bin/python",
                          [[str(ctx["tree"] / "bin" / "python"), "-c", COLD_CODE]]))
    if ctx.get("pex") is not None:
        specs.append(Spec("start.pex", "pex (warm PEX_ROOT): app.pex -c", [[str(ctx["pex"]), "-c", COLD_CODE]],
                          env=dict(ENV, PEX_ROOT=str(RUN / "start-pexroot"))))
    if ctx.get("pyinstaller") is not None:
        specs.append(Spec("start.pyinstaller", "PyInstaller onedir app (the same 3 imports)", [[str(ctx["pyinstaller"] / "app")]]))
    measure_many(specs, runs=5, warm=1)


MISSING_RE = re.compile(r"(\S+\.so[.\d]*) \(needed by")


def group_big(ctx: dict[str, Any], runs: int, warm: int) -> None:
    """Peak RSS of packing and deploying a bundle over 1 GB: the workload + torch."""
    g = RUN / "big"
    g.mkdir(exist_ok=True)
    tree = g / "dir" / f"{NAME}-{V1}"
    system_libs: list[str] = []
    fig = None
    for _attempt in range(3):
        # torch ships test programs (torch/bin/test_*) whose RUNPATH ($ORIGIN) does not reach torch/lib:
        # shipenv refuses them; the libraries it names are declared provided and the build retried.
        extra = [a for lib in system_libs for a in ("--system-lib", lib)]
        discard(g / "dir")
        fig = measure("big.build", f"shipenv build --format dir --no-cache, workload + {BIG_EXTRA}"
                      + (f" (--system-lib {' '.join(system_libs)})" if system_libs else ""),
                      [shipenv_build(ctx["req_big"], V1, g / "dir", "--format", "dir", "--no-cache", *extra)],
                      runs=1, warm=0, steps_log=True)
        missing = [m for m in MISSING_RE.findall(fig.error_tail) if m not in system_libs] if not fig.ok else []
        if fig.ok or not missing:
            break
        VAL.setdefault("big.retries", []).append({"error": fig.error_tail, "added_system_libs": missing})
        system_libs += missing
    assert fig is not None
    if not fig.ok:
        for k in ("big.pack_zst", "big.pack_gz", "big.deploy"):
            skip(k, k, "the >1 GB build failed")
        return
    VAL["big.system_libs"] = system_libs
    VAL["big.tree_bytes"] = du(tree, apparent=True)
    VAL["big.tree_files"] = count_files(tree)
    zst, gz = g / "big.tar.zst", g / "big.tar.gz"
    gb = VAL["big.tree_bytes"] / 1e9
    measure_many([Spec(key, f"shipenv archive.write {fmt} of the {gb:.2f} GB tree",
                       [[str(SHIP_PY), "-c", WRITE_CODE, str(SNAPSHOT), str(tree), str(out), fmt, tree.name]],
                       setup=remover(out))
                  for key, fmt, out in (("big.pack_zst", "tar.zst", zst), ("big.pack_gz", "tar.gz", gz))], runs=1, warm=0)
    for key, out in (("big.pack_zst", zst), ("big.pack_gz", gz)):
        if FIG[key].ok:
            FIG[key].extra["size"] = out.stat().st_size
            FIG[key].extra["mb_per_s"] = round(VAL["big.tree_bytes"] / 1e6 / FIG[key].median, 1)
    if FIG["big.pack_zst"].ok:
        measure("big.deploy", "shipenv deploy of the >1 GB .tar.zst (empty root)",
                [shipenv_cmd("deploy", "-v", str(zst), "--root", str(g / "root"))], runs=1, warm=0,
                setup=lambda i: discard(g / "root"), steps_log=True)
    else:
        skip("big.deploy", "shipenv deploy of the >1 GB bundle", "its packing failed")
    discard(g)
    empty_trash()




def group_hostile(ctx: dict[str, Any], runs: int, warm: int) -> None:
    """Peak RSS of deploying a .tar.gz whose first pax header declares 1 GiB (``hostile.py``): refused in bounded memory."""
    h = RUN / "hostile"
    h.mkdir(exist_ok=True)
    archive = hostile_archive(h / "app-1.0.tar.gz", HOSTILE_MIB << 20)
    VAL["hostile.archive_bytes"] = archive.stat().st_size
    deploy_sh = SNAPSHOT / "shipenv" / "templates" / "deploy.sh"
    measure_many([
        Spec("hostile.deploy", f"shipenv deploy of a .tar.gz whose pax header declares {HOSTILE_MIB} MiB (must refuse)",
             lambda i: [shipenv_cmd("deploy", str(archive), "--root", str(h / f"root-{i}"))], refused=True),
        Spec("hostile.deploy_sh", "deploy.sh deploy of the same archive (system tar; must refuse)",
             lambda i: [["sh", str(deploy_sh), "deploy", str(archive), str(h / f"sh-root-{i}")]], refused=True),
    ], runs=1, warm=0)
    discard(h)
    empty_trash()
