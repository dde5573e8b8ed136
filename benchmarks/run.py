"""shipenv against its peers and the physical limits, on the reference workload, in one run.

    /work/main/.venv/bin/python benchmarks/run.py [--runs N] [--quick] [--groups build,pack,...]

What runs (see benchmarks/README.md for the method and the targets):

- build    requirements -> artifact, warm pip cache: shipenv (.tar.zst, empty --cache-dir),
           fresh venv + pip install -r + venv-pack, pex, PyInstaller --onedir; shipenv rebuilds
           with its cache warm (one requirement added; nothing changed); a `--format dir` build
           whose tree every baseline below works on
- pack     shipenv's archive writer on that tree vs `tar | zstd -T0 -3`, `tar -czf`, `tar | pigz`
- deploy   `shipenv deploy` (first release; v2 beside v1) vs `tar --zstd -xf` of the same archive;
           disk used by the releases
- start    `bin/python -c "import django, numpy, pandas"` through the bundle vs the source venv
- big      peak RSS of packing and deploying a bundle over 1 GB (workload + torch)

Peers live in their own venvs under $SHIPENV_BENCH_DIR (default /tmp/shipenv-bench) and are
reused by later runs; everything a run produces goes to $SHIPENV_BENCH_DIR/run (wiped at start).
The table is printed and written to benchmarks/results/latest.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = Path("/work/shared/bench/peers")
REQUIREMENTS = PEERS / "requirements.txt"
BENCH = Path(os.environ.get("SHIPENV_BENCH_DIR") or "/tmp/shipenv-bench")
RUN = BENCH / "run"
RESULTS = HERE / "results"

PYVER = "3.11.7"
NAME, V1, V2 = "app", "2.0.0", "2.0.1"
ADDED = "six==1.17.0"  #: the one requirement v2 adds (small, pure Python)
BIG_EXTRA = "torch==2.13.0"  #: resolves to /opt/wheels on this machine; makes the bundle > 1 GB
COLD_CODE = "import django, numpy, pandas"
PEER_PINS = {"venv-pack": "venv-pack==0.2.0", "pex": "pex==2.105.2", "pyinstaller": "pyinstaller==6.22.3"}
TIMEOUT = 1800  # seconds for any single command
EPOCH = 1577836800

# The table's targets (from the brief); a figure that failed makes its target "unknown".
T_PACK_ZST = 0.9  # shipenv .tar.zst throughput >= 0.9x tar | zstd -T0 -3
T_GZ_SPEED, T_GZ_SIZE = 3.0, 1.1  # .tar.gz >= 3x faster than tar -czf, size <= 1.1x
T_BUILD_PIP, T_BUILD_PYI = 0.6, 0.5
T_REBUILD = 0.3
T_DEPLOY = 1.5
T_DEPLOY_DISK = 0.1  # v2 beside v1 adds at most 10 % of a full tree when one small package changed
T_COLD = 1.05
T_RSS_MB = 200


# -- environment ---------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """What every measured command sees: no pyenv shims, no Python variables of this sandbox.

    PYTHONDONTWRITEBYTECODE is exported on these machines; a deployment host does not set it,
    and with it set cold starts of anything not byte-compiled at build time would be measured
    recompiling (DESIGN.md). So it is unset for every command, cold starts included.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PEX_", "PIP_REQUIRE"))}
    for k in ("VIRTUAL_ENV", "PYENV_VERSION", "SOURCE_DATE_EPOCH", "CI"):
        env.pop(k, None)
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["LC_ALL"] = env.get("LC_ALL", "C.UTF-8")
    return env


ENV = base_env()


def pyenv_python() -> Path:
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        root = str(Path.home() / ".pyenv")
    return Path(root) / "versions" / PYVER / "bin" / "python3.11"


PY = pyenv_python()
SHIP_PY = Path(sys.executable)
#: shipenv as it was when the run started: src/shipenv and templates/ copied (mtimes kept) into the
#: scratch dir and run by the dev venv's interpreter. Other engineers edit the working tree while a
#: run takes half an hour; without the snapshot, builds would mix versions, and an edit to a
#: template (part of the cache keys) would turn every warm-cache rebuild into a miss.
SNAPSHOT = RUN / "shipenv-snapshot"
SHIPENV_MAIN = "import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'shipenv'; from shipenv.cli import main; sys.exit(main())"


def shipenv_cmd(*args: str) -> list[str]:
    return [str(SHIP_PY), "-c", SHIPENV_MAIN, str(SNAPSHOT), *args]


def take_snapshot() -> str:
    """Copy the package and its templates; return a digest of what was copied."""
    import hashlib

    src = REPO / "src" / "shipenv"
    shutil.copytree(src, SNAPSHOT / "shipenv", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "templates", SNAPSHOT / "shipenv" / "templates", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted((SNAPSHOT / "shipenv").rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(SNAPSHOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def sh(cmd: str, log: Path | None = None, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """An untimed helper command (setup, sizes); output to the log."""
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env or ENV)
    if log is not None:
        with log.open("a") as f:
            f.write(f"\n$ {cmd}\n{proc.stdout}{proc.stderr}")
    if check and proc.returncode != 0:
        raise Failure(f"`{cmd}` exited {proc.returncode}", tail(proc.stdout + proc.stderr))
    return proc


class Failure(Exception):
    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.tail = tail


def tail(text: str, n: int = 8) -> str:
    lines = [line.rstrip() for line in text.splitlines() if line.strip() and not line.startswith("DEBUG")]
    return "\n".join(lines[-n:])


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


TRASH = RUN / "trash"


def discard(*paths: Path) -> None:
    """Move old outputs aside; they are deleted between groups (deleting 600 MB trees on this
    discard-mounted disk slows the next run, see the peers README)."""
    TRASH.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if os.path.lexists(p):
            os.rename(p, Path(tempfile.mkdtemp(dir=TRASH)) / "x")


def empty_trash() -> None:
    if TRASH.exists():
        shutil.rmtree(TRASH, ignore_errors=True)
    subprocess.run(["sync"])


def du(*paths: Path, apparent: bool = False) -> int:
    """Bytes used by ``paths`` together (one du: hard links are counted once)."""
    args = ["du", "-s", "-c", "-b" if apparent else "--block-size=1", *map(str, paths)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()
    return int(out[-1].split()[0])


def count_files(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


# -- timing --------------------------------------------------------------------------------

Cmd = str | list[str]  # a str runs under bash -c; a list is exec'd directly


@dataclass
class Figure:
    """One measured thing: its counted runs, or why it failed."""

    key: str
    label: str
    walls: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    warm: int = 0
    error: str | None = None
    error_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.walls)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    @property
    def rss_mb(self) -> float:
        return max(self.rss_kb) / 1024 if self.rss_kb else float("nan")

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "label": self.label, "ok": self.ok, "runs": self.walls,
                             "peak_rss_kb": self.rss_kb, "warmup_runs": self.warm, "extra": self.extra}
        if self.ok:
            d.update(median_s=self.median, min_s=min(self.walls), max_s=max(self.walls), peak_rss_mb=round(self.rss_mb, 1))
        if self.error:
            d.update(error=self.error, error_tail=self.error_tail)
        return d


FIG: dict[str, Figure] = {}
VAL: dict[str, Any] = {}


def run_timed(cmd: Cmd, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS KB of the largest process, exit code, output) of one command.

    Peak RSS is GNU time's %M: the largest single process among the command and everything it
    waited for (not a sum over a pipeline); a bash wrapper puts a ~3 MB floor under it.
    """
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    with tempfile.NamedTemporaryFile(prefix="rss.", dir=RUN, delete=False) as tf:
        rss_file = Path(tf.name)
    with tempfile.TemporaryFile(mode="w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env or ENV, cwd=cwd, start_new_session=True)
        try:
            rc = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = -9
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read()
    try:
        rss = int([line for line in rss_file.read_text().splitlines() if line.strip()][-1])
    except (OSError, ValueError, IndexError):
        rss = -1
    rss_file.unlink(missing_ok=True)
    with log.open("a") as f:
        f.write(f"\n$ {cmd if isinstance(cmd, str) else shlex.join(cmd)}\n{text}\n[wall {wall:.3f}s, peak RSS {rss} KB, rc {rc}]\n")
    if rc == -9:
        text += f"\n(killed after {TIMEOUT}s)"
    return wall, rss, rc, text


StepsFn = Callable[[int], Sequence[Cmd]]


def measure(
    key: str,
    label: str,
    steps: StepsFn | Sequence[Cmd],
    *,
    runs: int,
    warm: int,
    setup: Callable[[int], None] | None = None,
    after: Callable[[int, str], None] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Figure:
    """Time ``warm`` warm-up runs then ``runs`` counted runs of ``steps`` (summed), with ``sync`` before each.

    ``setup(i)`` runs untimed before run ``i`` (0-based, warm-ups first); ``after(i, output)``
    runs untimed after it. A failing step or setup ends the figure as failed, with its tail.
    """
    fig = Figure(key, label, warm=warm)
    FIG[key] = fig
    log = RUN / "logs" / f"{key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  {label} ...", end="", flush=True)
    per_step: list[list[float]] = []
    for i in range(warm + runs):
        try:
            if setup is not None:
                setup(i)
        except Failure as exc:
            fig.error, fig.error_tail = f"setup failed: {exc.message}", exc.tail
            break
        except Exception as exc:  # noqa: BLE001 - a broken setup is reported, not raised
            fig.error, fig.error_tail = f"setup failed: {type(exc).__name__}: {exc}", ""
            break
        subprocess.run(["sync"])
        cmds = steps(i) if callable(steps) else steps
        wall_sum, rss_max, outputs, walls = 0.0, 0, [], []
        for cmd in cmds:
            wall, rss, rc, text = run_timed(cmd, log, env, cwd)
            wall_sum += wall
            rss_max = max(rss_max, rss)
            walls.append(round(wall, 3))
            outputs.append(text)
            if rc != 0:
                shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
                fig.error = f"exit {rc}: {shown[:200]}"
                fig.error_tail = tail(text)
                break
        if fig.error:
            break
        if after is not None:
            try:
                after(i, "\n".join(outputs))
            except Exception as exc:  # noqa: BLE001
                fig.extra.setdefault("after_errors", []).append(f"{type(exc).__name__}: {exc}")
        if i >= warm:
            fig.walls.append(round(wall_sum, 3))
            fig.rss_kb.append(rss_max)
            per_step.append(walls)
        print(f" {wall_sum:.2f}s{'(w)' if i < warm else ''}", end="", flush=True)
    if len(per_step) and len(per_step[0]) > 1:
        fig.extra["step_walls"] = per_step
    print(f"  -> {'median %.2fs, peak RSS %.0f MB' % (fig.median, fig.rss_mb) if fig.ok else 'FAILED: ' + str(fig.error)}")
    if not fig.ok and fig.error_tail:
        print("     " + fig.error_tail.replace("\n", "\n     "))
    return fig


def skip(key: str, label: str, why: str) -> Figure:
    fig = Figure(key, label, error=f"skipped: {why}")
    FIG[key] = fig
    print(f"  {label}: skipped ({why})")
    return fig


#: shipenv's archive writer alone, in a fresh process: argv = SNAPSHOT ROOT DEST FMT ARCNAME.
WRITE_CODE = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from pathlib import Path; from shipenv import archive; "
              "archive.write(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], level=None, threads=0, "
              f"mtime={EPOCH}, arcname=sys.argv[4])")

STEP_RE = re.compile(r"^• (.*) \[(\d+(?:\.\d+)?)s\]\s*$")


def output_steps(output: str) -> list[tuple[str, float]]:
    """The steps ``shipenv -v`` printed, each with the elapsed time it started at."""
    return [(m.group(1), float(m.group(2))) for m in map(STEP_RE.match, output.splitlines()) if m]


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
    ctx: dict[str, Any] = {"req1": req1, "req2": req2, "req_big": big, "tools": {}}
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

    # Local wheelhouse for pex (it resolves with its own pip and its own cache, not ~/.cache/pip).
    wheels = BENCH / "wheels"
    stamp = wheels / ".requirements"
    if not (stamp.is_file() and stamp.read_text() == REQUIREMENTS.read_text()):
        shutil.rmtree(wheels, ignore_errors=True)
        try:
            sh(f"{shlex.quote(str(PY))} -m pip download -q --only-binary=:all: -r {shlex.quote(str(req1))} -d {shlex.quote(str(wheels))}", log)
            stamp.write_text(REQUIREMENTS.read_text())
        except Failure as exc:
            ctx["wheels_error"] = exc
    ctx["wheels"] = wheels

    # Warm-up install: every wheel any build needs is in the pip cache (and the index pages in
    # pip's HTTP cache) before anything is timed, so the network is not what we measure.
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


def shipenv_build(req: Path, version: str, out: Path, *extra: str) -> list[str]:
    return shipenv_cmd("build", "-v", "-r", str(req), "--python", str(PY), "--name", NAME, "--version", version, "-o", str(out), *extra)


def group_build(ctx: dict[str, Any], runs: int, warm: int, quick: bool) -> None:
    art = RUN / "art"
    art.mkdir(exist_ok=True)
    b = RUN / "build"
    b.mkdir(exist_ok=True)
    req1, req2 = ctx["req1"], ctx["req2"]
    caches = {i: b / f"cache-{i}" for i in range(warm + runs)}

    # 1. shipenv clean build: empty --cache-dir of its own (pip's cache is warm), v1 .tar.zst.
    def clean_setup(i: int) -> None:
        discard(b / f"clean-{i}", caches[i])

    def clean_after(i: int, output: str) -> None:
        FIG["build.shipenv"].extra.setdefault("steps", []).append(output_steps(output))

    fig = measure("build.shipenv", "shipenv build -> .tar.zst (empty --cache-dir)",
                  lambda i: [shipenv_build(req1, V1, b / f"clean-{i}", "--cache-dir", str(caches[i]))],
                  runs=runs, warm=warm, setup=clean_setup, after=clean_after)
    if fig.ok:
        last = warm + runs - 1
        shutil.copy(b / f"clean-{last}" / f"{NAME}-{V1}.tar.zst", art / "v1.tar.zst")

    # 2. rebuild with one requirement added, on the cache the clean build of the same index filled.
    if fig.ok:
        def re_setup(i: int) -> None:
            discard(b / f"rebuild-{i}")

        def re_after(i: int, output: str) -> None:
            FIG["build.rebuild"].extra.setdefault("steps", []).append(output_steps(output))

        fig2 = measure("build.rebuild", f"shipenv rebuild, {ADDED} added, warm --cache-dir",
                       lambda i: [shipenv_build(req2, V2, b / f"rebuild-{i}", "--cache-dir", str(caches[i]))],
                       runs=runs, warm=warm, setup=re_setup, after=re_after)
        if fig2.ok:
            shutil.copy(b / f"rebuild-{warm + runs - 1}" / f"{NAME}-{V2}.tar.zst", art / "v2.tar.zst")

        def same_setup(i: int) -> None:
            discard(b / f"same-{i}")

        measure("build.rebuild_same", "shipenv rebuild, nothing changed, warm --cache-dir",
                lambda i: [shipenv_build(req1, V1, b / f"same-{i}", "--cache-dir", str(caches[i]))],
                runs=runs, warm=warm, setup=same_setup)
    else:
        skip("build.rebuild", f"shipenv rebuild, {ADDED} added", "the clean build failed")
        skip("build.rebuild_same", "shipenv rebuild, nothing changed", "the clean build failed")
    discard(*caches.values())

    # 3. the tree every baseline works on: a --format dir build of the same workload (no cache).
    def dir_after(i: int, output: str) -> None:
        FIG["build.shipenv_dir"].extra.setdefault("steps", []).append(output_steps(output))

    tree_fig = measure("build.shipenv_dir", "shipenv build --format dir --no-cache (the baselines' tree)",
                       [shipenv_build(req1, V1, b / "dir", "--format", "dir", "--no-cache")], runs=1, warm=0, after=dir_after)
    if tree_fig.ok:
        ctx["tree"] = b / "dir" / f"{NAME}-{V1}"

    # 4. what users do today: fresh venv + pip install -r + venv-pack (gzip level 4, its default).
    vp = ctx["tools"].get("venv-pack")
    if isinstance(vp, Path):
        def pip_setup(i: int) -> None:
            discard(b / f"venv-{i}", b / f"venvpack-{i}.tar.gz")

        fig = measure("build.pip_venvpack", "python -m venv + pip install -r + venv-pack -> .tar.gz",
                      lambda i: [[str(PY), "-m", "venv", str(b / f"venv-{i}")],
                                 [str(b / f"venv-{i}/bin/pip"), "install", "-q", "-r", str(req1)],
                                 [str(vp / "bin/venv-pack"), "--quiet", "-p", str(b / f"venv-{i}"), "-o", str(b / f"venvpack-{i}.tar.gz")]],
                      runs=runs, warm=warm, setup=pip_setup)
        if fig.ok:
            last = warm + runs - 1
            ctx["src_venv"] = b / f"venv-{last}"
            ctx["venvpack"] = b / f"venvpack-{last}.tar.gz"
    else:
        skip("build.pip_venvpack", "pip install -r + venv-pack", f"venv-pack not installed: {getattr(vp, 'message', vp)}")

    # 5. pex from the local wheelhouse: fresh PEX_ROOT each run, then with the last one warm.
    pex = ctx["tools"].get("pex")
    if isinstance(pex, Path) and "wheels_error" not in ctx:
        def pex_cmd(root: Path, out: Path) -> str:
            return (f"PEX_ROOT={shlex.quote(str(root))} {shlex.quote(str(pex / 'bin/pex'))} --python {shlex.quote(str(PY))} "
                    f"--python-shebang {shlex.quote(str(PY))} --no-pypi -f {shlex.quote(str(ctx['wheels']))} "
                    f"-r {shlex.quote(str(req1))} -o {shlex.quote(str(out))}")

        def pex_setup(i: int) -> None:
            discard(b / "pexroot", b / "app.pex")

        fig = measure("build.pex", "pex -r (fresh PEX_ROOT, local wheelhouse) -> .pex",
                      lambda i: [pex_cmd(b / "pexroot", b / "app.pex")], runs=runs, warm=warm, setup=pex_setup)
        if fig.ok:
            measure("build.pex_warm", "pex -r (warm PEX_ROOT)", lambda i: [pex_cmd(b / "pexroot", b / "app.pex")],
                    runs=runs, warm=0, setup=lambda i: discard(b / "app.pex"))
            ctx["pex"] = b / "app.pex"
    else:
        why = getattr(pex, "message", None) or getattr(ctx.get("wheels_error"), "message", "?")
        skip("build.pex", "pex", f"pex or the wheelhouse is missing: {why}")

    # 6. PyInstaller --onedir, in a venv that already holds the workload (its pip install is not
    #    counted: the comparison is stricter for shipenv than "requirements -> artifact").
    pyi = ctx["tools"].get("pyinstaller")
    if isinstance(pyi, Path):
        pi = b / "pyi"
        pi.mkdir(exist_ok=True)
        (pi / "app.py").write_text(
            "import sys\n"
            "import django, numpy, pandas\n"
            "if '--all' in sys.argv:\n"
            "    import gunicorn, requests, cryptography, lxml.etree, PIL.Image, yaml, sqlalchemy, psycopg\n"
        )
        # Imported only under --all, yet collected: PyInstaller follows every import statement.

        def pyi_setup(i: int) -> None:
            discard(pi / "dist", pi / "build", pi / "spec")

        fig = measure("build.pyinstaller", "PyInstaller --onedir (workload preinstalled) -> dir",
                      [f"cd {shlex.quote(str(pi))} && {shlex.quote(str(pyi / 'bin/pyinstaller'))} --onedir --noconfirm --log-level WARN "
                       f"--distpath dist --workpath build --specpath spec --name app app.py"],
                      runs=runs, warm=0 if quick else warm, setup=pyi_setup)
        if fig.ok:
            ctx["pyinstaller"] = pi / "dist" / "app"
    else:
        skip("build.pyinstaller", "PyInstaller --onedir", f"PyInstaller not installed: {getattr(pyi, 'message', pyi)}")


def group_pack(ctx: dict[str, Any], runs: int, warm: int) -> None:
    tree: Path | None = ctx.get("tree")
    labels = {"pack.shipenv_zst": "shipenv archive.write tar.zst (level 3, all threads)",
              "pack.tar_zstd": "tar -cf - | zstd -T0 -3",
              "pack.shipenv_gz": "shipenv archive.write tar.gz (level 6, all threads)",
              "pack.tar_gz": "tar -czf (gzip -6, 1 thread)",
              "pack.tar_pigz": "tar -cf - | pigz -6 (reference, 2 threads)"}
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

    def writer(fmt: str, out: Path) -> list[str]:
        return [str(SHIP_PY), "-c", WRITE_CODE, str(SNAPSHOT), str(tree), str(out), fmt, tree.name]

    outs = {"pack.shipenv_zst": p / "shipenv.tar.zst", "pack.tar_zstd": p / "tar.tar.zst", "pack.shipenv_gz": p / "shipenv.tar.gz",
            "pack.tar_gz": p / "tar.tar.gz", "pack.tar_pigz": p / "pigz.tar.gz"}
    cmds: dict[str, Cmd] = {
        "pack.shipenv_zst": writer("tar.zst", outs["pack.shipenv_zst"]),
        "pack.tar_zstd": f"tar -C {parent} -cf - {name} | zstd -q -T0 -3 -o {outs['pack.tar_zstd']}",
        "pack.shipenv_gz": writer("tar.gz", outs["pack.shipenv_gz"]),
        "pack.tar_gz": f"tar -C {parent} -czf {outs['pack.tar_gz']} {name}",
        "pack.tar_pigz": f"tar -C {parent} -cf - {name} | pigz -6 > {outs['pack.tar_pigz']}",
    }
    for k, cmd in cmds.items():
        fig = measure(k, labels[k], [cmd], runs=runs, warm=warm, setup=lambda i, o=outs[k]: o.unlink(missing_ok=True))
        if fig.ok:
            fig.extra["size"] = outs[k].stat().st_size
            fig.extra["mb_per_s"] = round(VAL["tree.tar_stream_bytes"] / 1e6 / fig.median, 1)
    # A quick round-trip check: GNU tar reads what shipenv wrote.
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
    if not v1.is_file():
        for k in ("deploy.first", "deploy.tar_v1", "deploy.tar_v1_sync", "deploy.v2", "deploy.tar_v2"):
            skip(k, k, "no v1 archive (the shipenv build failed)")
        return

    def deploy_cmd(archive: Path, root: Path) -> list[str]:
        return shipenv_cmd("deploy", "-v", str(archive), "--root", str(root))

    def steps_into(key: str) -> Callable[[int, str], None]:
        return lambda i, out: FIG[key].extra.setdefault("steps", []).append(output_steps(out))

    def fresh(path: Path, make: bool = False) -> Callable[[int], None]:
        def f(i: int) -> None:
            discard(path)
            if make:
                path.mkdir(parents=True)
        return f

    measure("deploy.first", "shipenv deploy v1 into an empty root", [deploy_cmd(v1, d / "r1")],
            runs=runs, warm=warm, setup=fresh(d / "r1"), after=steps_into("deploy.first"))
    measure("deploy.tar_v1", "tar --zstd -xf v1 (fresh dir)", [f"tar -C {d / 'x1'} --zstd -xf {v1}"],
            runs=runs, warm=warm, setup=fresh(d / "x1", make=True))
    measure("deploy.tar_v1_sync", "tar --zstd -xf v1 && sync (reference: deploy makes its files durable)",
            [f"tar -C {d / 'x1s'} --zstd -xf {v1} && sync"], runs=runs, warm=warm, setup=fresh(d / "x1s", make=True))
    if FIG["deploy.first"].ok:
        ctx["bundle_python"] = d / "r1" / "current" / "bin" / "python"
    empty_trash()
    if not v2.is_file():
        skip("deploy.v2", "shipenv deploy v2 beside v1", "no v2 archive (the rebuild failed)")
        skip("deploy.tar_v2", "tar --zstd -xf v2", "no v2 archive")
        return

    def v2_setup(i: int) -> None:
        discard(d / "r2")
        sh(shlex.join(deploy_cmd(v1, d / "r2")), RUN / "logs" / "deploy.v2-setup.log")

    fig = measure("deploy.v2", "shipenv deploy v2 beside v1", [deploy_cmd(v2, d / "r2")],
                  runs=runs, warm=warm, setup=v2_setup, after=steps_into("deploy.v2"))
    measure("deploy.tar_v2", "tar --zstd -xf v2 (fresh dir)", [f"tar -C {d / 'x2'} --zstd -xf {v2}"],
            runs=runs, warm=warm, setup=fresh(d / "x2", make=True))
    if fig.ok:
        rel = d / "r2" / "releases"
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
    n = 5
    code = COLD_CODE
    venv_py = ctx.get("src_venv")
    bundle_py = ctx.get("bundle_python")
    if venv_py is not None:
        measure("start.venv", "source venv: bin/python -c 'import django, numpy, pandas'",
                [[str(venv_py / "bin" / "python"), "-c", code]], runs=n, warm=1)
    else:
        skip("start.venv", "source venv", "no source venv (pip install + venv-pack failed)")
    if bundle_py is not None:
        measure("start.bundle", "shipenv bundle (deployed v1): bin/python -c '...'", [[str(bundle_py), "-c", code]], runs=n, warm=1)
    else:
        skip("start.bundle", "shipenv bundle", "no deployed bundle")
    tree = ctx.get("tree")
    if tree is not None:
        measure("start.bundle_dir", "shipenv bundle (--format dir tree): bin/python -c '...'", [[str(tree / "bin" / "python"), "-c", code]],
                runs=n, warm=1)
    if ctx.get("pex") is not None:
        env = dict(ENV, PEX_ROOT=str(RUN / "start-pexroot"))
        measure("start.pex", "pex (warm PEX_ROOT): app.pex -c '...'", [[str(ctx["pex"]), "-c", code]], runs=n, warm=1, env=env)
    if ctx.get("pyinstaller") is not None:
        measure("start.pyinstaller", "PyInstaller onedir: the same 3 imports", [[str(ctx["pyinstaller"] / "app")]], runs=n, warm=1)


def group_big(ctx: dict[str, Any], runs: int, warm: int) -> None:
    """Peak RSS of packing and deploying a bundle over 1 GB: the workload + torch."""
    g = RUN / "big"
    g.mkdir(exist_ok=True)
    fig = measure("big.build", f"shipenv build --format dir --no-cache, workload + {BIG_EXTRA}",
                  [shipenv_build(ctx["req_big"], V1, g / "dir", "--format", "dir", "--no-cache")], runs=1, warm=0,
                  after=lambda i, out: FIG["big.build"].extra.setdefault("steps", []).append(output_steps(out)))
    tree = g / "dir" / f"{NAME}-{V1}"
    if not fig.ok:
        for k in ("big.pack_zst", "big.pack_gz", "big.deploy"):
            skip(k, k, "the >1 GB build failed")
        return
    VAL["big.tree_bytes"] = du(tree, apparent=True)
    VAL["big.tree_files"] = count_files(tree)
    zst, gz = g / "big.tar.zst", g / "big.tar.gz"
    for key, fmt, out in (("big.pack_zst", "tar.zst", zst), ("big.pack_gz", "tar.gz", gz)):
        f = measure(key, f"shipenv archive.write {fmt} of the {VAL['big.tree_bytes'] / 1e9:.2f} GB tree",
                    [[str(SHIP_PY), "-c", WRITE_CODE, str(SNAPSHOT), str(tree), str(out), fmt, tree.name]], runs=1, warm=0,
                    setup=lambda i, o=out: o.unlink(missing_ok=True))
        if f.ok:
            f.extra["size"] = out.stat().st_size
            f.extra["mb_per_s"] = round(VAL["big.tree_bytes"] / 1e6 / f.median, 1)
    if FIG["big.pack_zst"].ok:
        measure("big.deploy", "shipenv deploy of the >1 GB .tar.zst (empty root)",
                [shipenv_cmd("deploy", "-v", str(zst), "--root", str(g / "root"))], runs=1, warm=0,
                setup=lambda i: discard(g / "root"))
    else:
        skip("big.deploy", "shipenv deploy of the >1 GB bundle", "its packing failed")
    discard(g)
    empty_trash()


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
    f = FIG.get(key)
    if f is None or not f.ok or not f.extra.get("steps"):
        return []
    runs = f.extra["steps"][-len(f.walls):] if len(f.extra["steps"]) >= len(f.walls) else f.extra["steps"]
    # the counted run whose wall time is the median
    idx = sorted(range(len(f.walls)), key=lambda j: f.walls[j])[len(f.walls) // 2]
    marks, total = runs[min(idx, len(runs) - 1)], f.walls[idx]
    if not marks:
        return []
    lines = [f"`{f.label}`, run with wall {total:.1f} s (steps as `-v` stamps them; the first starts at {marks[0][1]:.1f} s, "
             "the last runs to process exit):", "", "| step | s | share |", "|---|---:|---:|"]
    if marks[0][1] > 0.05:
        lines.append(f"| (start-up, interpreter inspection) | {marks[0][1]:.1f} | {marks[0][1] / total:.0%} |")
    for j, (msg, t) in enumerate(marks):
        end = marks[j + 1][1] if j + 1 < len(marks) else total
        lines.append(f"| {msg} | {end - t:.1f} | {(end - t) / total:.0%} |")
    return lines + [""]


def report(ctx: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    L: list[str] = []
    L.append(f"# shipenv benchmark — {meta['date']}")
    L.append("")
    L.append(f"{meta['machine']}; workload `{REQUIREMENTS}` on CPython {PYVER}; {meta['runs']} counted run(s) after "
             f"{meta['warm']} warm-up (medians; [min–max] where the spread exceeds 15 %); peak RSS = largest single process (GNU time %M). "
             f"shipenv {meta['shipenv']}, git {meta['git']}. Load average at start {meta['load_start']}, at end {meta['load_end']}"
             + (" — **other jobs were running on this machine: timings are noisy**." if meta["noisy"] else "."))
    L.append("")

    # Build
    L += ["## Build: requirements → artifact (warm pip cache)", "",
          "| what | wall | peak RSS | artifact | shipenv clean build ÷ this |", "|---|---:|---:|---|---:|"]
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
    ]
    for key, art, other in rows:
        f = FIG.get(key)
        if f is None:
            continue
        r = "—" if other is None else xr(ratio("build.shipenv", other))
        if key.startswith("build.rebuild") or key == "build.shipenv_dir":
            r = f"this ÷ clean: {xr(ratio(key, 'build.shipenv'))}"
        n = f" (n={len(f.walls)})" if f.ok and len(f.walls) == 1 and key == "build.shipenv_dir" else ""
        L.append(f"| {f.label}{n} | {fmt_s(key)} | {fmt_rss(key)} | {art} | {r} |")
    pv = FIG.get("build.pip_venvpack")
    if pv is not None and pv.ok and pv.extra.get("step_walls"):
        parts = [statistics.median(col) for col in zip(*pv.extra["step_walls"])]
        L.append(f"| … of which venv / pip install / venv-pack | {' / '.join(f'{x:.2f}' for x in parts)} s | | | |")
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
            vs = f"throughput {xr(ratio(base, key))} of `{FIG[base].label}`"
            if kind == "gz":
                s, sb = size_of(key), size_of(base)
                vs = f"{xr(ratio(base, key))} faster than `tar -czf`; size {xr(s / sb if s and sb else None)}"
        L.append(f"| {f.label} | {fmt_s(key)} | {f.extra.get('mb_per_s', '—')} | {fmt_rss(key)} | {mb(size_of(key))} | {vs} |")
    L.append("")

    # Deploy
    L += ["## Deploy (`.tar.zst` of the same build)", "", "| what | wall | peak RSS | vs `tar --zstd -xf` of the same archive |",
          "|---|---:|---:|---|"]
    for key, base in (("deploy.first", "deploy.tar_v1"), ("deploy.tar_v1", None), ("deploy.tar_v1_sync", None),
                      ("deploy.v2", "deploy.tar_v2"), ("deploy.tar_v2", None)):
        f = FIG.get(key)
        if f is None:
            continue
        L.append(f"| {f.label} | {fmt_s(key)} | {fmt_rss(key)} | {xr(ratio(key, base)) if base else ''} |")
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
          "| through | wall | peak RSS | vs source venv |", "|---|---:|---:|---|"]
    for key in ("start.venv", "start.bundle", "start.bundle_dir", "start.pex", "start.pyinstaller"):
        f = FIG.get(key)
        if f is None:
            continue
        L.append(f"| {f.label} | {f'{f.median * 1000:.0f} ms' if f.ok else fmt_s(key)} | {fmt_rss(key)} | "
                 f"{'' if key == 'start.venv' else xr(ratio(key, 'start.venv'))} |")
    L.append("")

    # Big
    L += [f"## Memory on a bundle over 1 GB (workload + {BIG_EXTRA}: {mb(VAL.get('big.tree_bytes'))}, "
          f"{VAL.get('big.tree_files', '?')} files; 1 run each)", "", "| what | wall | peak RSS | output |", "|---|---:|---:|---:|"]
    for key in ("big.build", "big.pack_zst", "big.pack_gz", "big.deploy"):
        f = FIG.get(key)
        if f is None:
            continue
        L.append(f"| {f.label} | {fmt_s(key)} | {fmt_rss(key)} | {mb(size_of(key)) if size_of(key) else ''} |")
    L.append("")

    # Targets
    targets: list[dict[str, Any]] = []

    def target(name: str, ok: bool | None, figures: str) -> None:
        targets.append({"target": name, "verdict": verdict(ok), "figures": figures})

    r = ratio("pack.tar_zstd", "pack.shipenv_zst")
    target(f"Packing .tar.zst ≥ {T_PACK_ZST}x the throughput of `tar | zstd -T0 -3`", None if r is None else r >= T_PACK_ZST,
           f"{xr(r)} ({fmt_s('pack.shipenv_zst')} vs {fmt_s('pack.tar_zstd')})")
    r = ratio("pack.tar_gz", "pack.shipenv_gz")
    s = gz / tg if gz and tg else None
    target(f".tar.gz ≥ {T_GZ_SPEED:.0f}x faster than `tar -czf`, size ≤ {T_GZ_SIZE}x", None if r is None or s is None else (r >= T_GZ_SPEED and s <= T_GZ_SIZE),
           f"{xr(r)} faster ({fmt_s('pack.shipenv_gz')} vs {fmt_s('pack.tar_gz')}), size {xr(s, 3)}")
    r1, r2 = ratio("build.shipenv", "build.pip_venvpack"), ratio("build.shipenv", "build.pyinstaller")
    target(f"Full build ≤ {T_BUILD_PIP}x pip install -r + venv-pack", None if r1 is None else r1 <= T_BUILD_PIP,
           f"{xr(r1)} ({fmt_s('build.shipenv')} vs {fmt_s('build.pip_venvpack')})")
    target(f"Full build ≤ {T_BUILD_PYI}x PyInstaller onedir", None if r2 is None else r2 <= T_BUILD_PYI,
           f"{xr(r2)} ({fmt_s('build.shipenv')} vs {fmt_s('build.pyinstaller')})")
    r = ratio("build.rebuild", "build.shipenv")
    target(f"Rebuild after one changed requirement ≤ {T_REBUILD}x the clean build", None if r is None else r <= T_REBUILD,
           f"{xr(r)} ({fmt_s('build.rebuild')} vs {fmt_s('build.shipenv')})")
    r = ratio("deploy.v2", "deploy.tar_v2")
    added = VAL["disk.added_by_v2"] / VAL["disk.plain_v2"] if "disk.added_by_v2" in VAL else None
    target(f"Deploy v2 beside v1 ≤ {T_DEPLOY}x `tar -xf` of the same archive", None if r is None else r <= T_DEPLOY,
           f"{xr(r)} ({fmt_s('deploy.v2')} vs {fmt_s('deploy.tar_v2')})")
    target(f"… and far less disk when little changed (v2 adds ≤ {T_DEPLOY_DISK:.0%} of a full tree)",
           None if added is None else added <= T_DEPLOY_DISK,
           "—" if added is None else f"v2 added {mb(VAL['disk.added_by_v2'])} = {added:.1%} of a full tree; releases "
           f"{mb(VAL['disk.releases_v1_v2'])} vs {mb(VAL['disk.plain_v1_v2'])} for two plain extractions")
    r = ratio("start.bundle", "start.venv")
    target("Cold start through the bundle within 5 % of the source venv", None if r is None else r <= T_COLD,
           f"{xr(r, 3)} ({fmt_s('start.bundle')} vs {fmt_s('start.venv')})")
    big = [k for k in ("big.pack_zst", "big.pack_gz", "big.deploy") if k in FIG]
    big_ok: bool | None = None
    if big and all(FIG[k].ok for k in big) and VAL.get("big.tree_bytes", 0) > 1e9:
        big_ok = all(FIG[k].rss_mb < T_RSS_MB for k in big)
    target(f"Peak memory < {T_RSS_MB} MB packing / deploying a bundle over 1 GB", big_ok,
           ", ".join(f"{k.split('.')[1]} {fmt_rss(k)}" for k in big) + f" (tree {mb(VAL.get('big.tree_bytes'))})")
    L += ["## Targets", "", "| target | verdict | figures |", "|---|---|---|"]
    L += [f"| {t['target']} | **{t['verdict']}** | {t['figures']} |" for t in targets]
    L.append("")

    # Where shipenv's time goes
    steps = []
    for key in ("build.shipenv", "build.rebuild", "build.shipenv_dir", "deploy.v2", "big.build"):
        steps += step_table(key)
    if steps:
        L += ["## Where shipenv's time goes", ""] + steps

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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="counted runs per figure (default 3; 1 with --quick)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up runs per figure (default 1; builds get 0 with --quick)")
    ap.add_argument("--quick", action="store_true", help="1 counted run; no warm-up for the expensive builds")
    ap.add_argument("--groups", default="build,pack,deploy,start,big", help="comma-separated subset of build,pack,deploy,start,big")
    args = ap.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    warm = args.warmup
    build_warm = 0 if args.quick else warm
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]

    try:
        import shipenv  # noqa: F401 - its dependencies (zstandard, lief, ...) must import here
    except ImportError as exc:
        print(f"error: {exc}; run this with the dev venv's python (/work/main/.venv/bin/python).", file=sys.stderr)
        return 2
    if not PY.exists():
        print(f"error: CPython {PYVER} not found at {PY}.", file=sys.stderr)
        return 2
    if RUN.exists():
        print(f"wiping the previous run's scratch {RUN} ...")
        shutil.rmtree(RUN, ignore_errors=True)
    (RUN / "logs").mkdir(parents=True)
    RESULTS.mkdir(exist_ok=True)
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src", "templates"], capture_output=True, text=True).stdout
    snap = take_snapshot()
    shipenv_v = subprocess.run(shipenv_cmd("--version"), capture_output=True, text=True, env=ENV).stdout.strip()
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}",
        "git": git + (f" + {len(dirty.splitlines())} uncommitted change(s) in src/templates" if dirty.strip() else "") + f", snapshot {snap}",
        "shipenv": shipenv_v, "runs": runs, "warm": warm, "build_warm": build_warm, "quick": args.quick, "groups": groups,
        "load_start": loadavg(), "bench_dir": str(BENCH),
    }
    t0 = time.monotonic()
    print(f"shipenv benchmark: {runs} run(s), warm-up {warm} (builds {build_warm}); scratch {RUN}; load {meta['load_start']}")
    ctx: dict[str, Any] = {}
    try:
        print("\n== setup (peer venvs are reused from earlier runs)")
        ctx = setup(args)
        for name, g in (("build", lambda: group_build(ctx, runs, build_warm, args.quick)),
                        ("pack", lambda: group_pack(ctx, runs, warm)),
                        ("deploy", lambda: group_deploy(ctx, runs, warm)),
                        ("start", lambda: group_start(ctx, runs, warm)),
                        ("big", lambda: group_big(ctx, runs, warm))):
            if name not in groups:
                continue
            print(f"\n== {name}  [{time.strftime('%H:%M:%S')}, load {loadavg()}]")
            try:
                g()
            except Failure as exc:
                print(f"  group {name} failed: {exc.message}\n{exc.tail}")
                VAL[f"group_error.{name}"] = f"{exc.message}: {exc.tail}"
            except Exception as exc:  # noqa: BLE001 - a broken group is reported, the rest still runs
                import traceback

                print(f"  group {name} crashed: {type(exc).__name__}: {exc}")
                VAL[f"group_error.{name}"] = traceback.format_exc()
            empty_trash()
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what was measured")
    meta["load_end"] = loadavg()
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
