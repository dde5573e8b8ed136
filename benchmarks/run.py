"""shipenv against its peers and the physical limits, on the reference workload, in one run.

    /work/main/.venv/bin/python benchmarks/run.py [--runs N] [--quick] [--groups build,pack,...]

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
    cpus: list[float] = field(default_factory=list)
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
    def cpu(self) -> float:
        return statistics.median(self.cpus) if self.cpus else float("nan")

    @property
    def rss_mb(self) -> float:
        return max(self.rss_kb) / 1024 if self.rss_kb else float("nan")

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "label": self.label, "ok": self.ok, "runs_s": self.walls, "cpu_s": self.cpus,
                             "peak_rss_kb": self.rss_kb, "warmup_runs": self.warm, "extra": self.extra}
        if self.ok:
            d.update(median_s=self.median, min_s=min(self.walls), max_s=max(self.walls), median_cpu_s=self.cpu,
                     peak_rss_mb=round(self.rss_mb, 1))
        if self.error:
            d.update(error=self.error, error_tail=self.error_tail)
        return d


FIG: dict[str, Figure] = {}
VAL: dict[str, Any] = {}


@dataclass
class Timed:
    wall: float
    cpu: float  #: user + system of the command and everything it waited for
    rss_kb: int  #: GNU time %M: the largest single process
    rc: int
    output: str


def run_timed(cmd: Cmd, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Timed:
    """Run one command under GNU time; wall time from perf_counter around fork and wait.

    Peak RSS is GNU time's %M: the largest single process among the command and everything it
    waited for (not a sum over a pipeline); a bash wrapper puts a ~3 MB floor under it.
    """
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    with tempfile.NamedTemporaryFile(prefix="rss.", dir=RUN, delete=False) as tf:
        time_file = Path(tf.name)
    with tempfile.TemporaryFile(mode="w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", str(time_file), *argv], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env or ENV, cwd=cwd, start_new_session=True)
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
        last = [line for line in time_file.read_text().splitlines() if line.strip()][-1].split()
        rss, cpu = int(last[0]), float(last[1]) + float(last[2])
    except (OSError, ValueError, IndexError):
        rss, cpu = -1, float("nan")
    time_file.unlink(missing_ok=True)
    with log.open("a") as f:
        f.write(f"\n$ {cmd if isinstance(cmd, str) else shlex.join(cmd)}\n{text}\n[wall {wall:.3f}s, cpu {cpu:.2f}s, peak RSS {rss} KB, rc {rc}]\n")
    if rc == -9:
        text += f"\n(killed after {TIMEOUT}s)"
    return Timed(wall, cpu, rss, rc, text)


@dataclass
class Spec:
    """What to time: ``steps(i)`` (summed) for run ``i``, with untimed ``setup(i)`` before and ``after(i, output)`` after."""

    key: str
    label: str
    steps: Callable[[int], Sequence[Cmd]] | Sequence[Cmd]
    setup: Callable[[int], None] | None = None
    after: Callable[[int, str], None] | None = None
    env: dict[str, str] | None = None
    cwd: Path | None = None
    needs: str | None = None  #: another spec of the same batch that must have succeeded in the same round
    steps_log: bool = False  #: keep the `-v` step stamps of every run (shipenv commands)


def measure_many(specs: Sequence[Spec], *, runs: int, warm: int) -> list[Figure]:
    """Interleave ``specs``: round ``i`` runs each once, in order; ``warm`` rounds are not counted.

    Interleaving spreads the load other jobs put on this machine over every figure of a
    comparison instead of over whichever ran during a busy minute. ``sync`` runs before each
    timed command. A spec whose setup or step fails is reported as failed with its output tail,
    and leaves later rounds; the others go on.
    """
    figs = []
    for spec in specs:
        fig = Figure(spec.key, spec.label, warm=warm)
        FIG[spec.key] = fig
        figs.append(fig)
    logs = {spec.key: RUN / "logs" / f"{spec.key}.log" for spec in specs}
    per_step: dict[str, list[list[float]]] = {spec.key: [] for spec in specs}
    for i in range(warm + runs):
        for spec, fig in zip(specs, figs):
            if fig.error:
                continue
            if spec.needs and FIG[spec.needs].error:
                fig.error = f"skipped: needs {FIG[spec.needs].label}, which failed"
                continue
            tag = f"  [{'warm-up' if i < warm else f'run {i - warm + 1}/{runs}'}] {spec.label}"
            print(tag + " ...", end="", flush=True)
            try:
                if spec.setup is not None:
                    spec.setup(i)
            except Failure as exc:
                fig.error, fig.error_tail = f"setup failed: {exc.message}", exc.tail
            except Exception as exc:
                fig.error, fig.error_tail = f"setup failed: {type(exc).__name__}: {exc}", ""
            if fig.error:
                print(" " + fig.error + ("\n     " + fig.error_tail.replace("\n", "\n     ") if fig.error_tail else ""))
                continue
            cmds = spec.steps(i) if callable(spec.steps) else spec.steps
            wall = cpu = 0.0
            rss = 0
            outputs, walls = [], []
            for cmd in cmds:
                subprocess.run(["sync"])
                t = run_timed(cmd, logs[spec.key], spec.env, spec.cwd)
                wall, cpu, rss = wall + t.wall, cpu + t.cpu, max(rss, t.rss_kb)
                walls.append(round(t.wall, 3))
                outputs.append(t.output)
                if t.rc != 0:
                    shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
                    fig.error, fig.error_tail = f"exit {t.rc}: {shown[:240]}", tail(t.output)
                    break
            if fig.error:
                print(" FAILED: " + fig.error + ("\n     " + fig.error_tail.replace("\n", "\n     ") if fig.error_tail else ""))
                continue
            output = "\n".join(outputs)
            if spec.after is not None:
                try:
                    spec.after(i, output)
                except Exception as exc:
                    fig.extra.setdefault("after_errors", []).append(f"{type(exc).__name__}: {exc}")
            print(f" {wall:.2f}s (cpu {cpu:.1f}s, peak RSS {rss / 1024:.0f} MB)")
            if i >= warm:
                fig.walls.append(round(wall, 3))
                fig.cpus.append(round(cpu, 2))
                fig.rss_kb.append(rss)
                per_step[spec.key].append(walls)
                if spec.steps_log:
                    fig.extra.setdefault("steps", []).append(output_steps(output))
    for spec, fig in zip(specs, figs):
        if per_step[spec.key] and len(per_step[spec.key][0]) > 1:
            fig.extra["step_walls"] = per_step[spec.key]
        if fig.ok:
            print(f"  = {spec.label}: median {fig.median:.2f}s of {fig.walls}, peak RSS {fig.rss_mb:.0f} MB")
    return figs


def measure(key: str, label: str, steps: Callable[[int], Sequence[Cmd]] | Sequence[Cmd], *, runs: int, warm: int,
            **kw: Any) -> Figure:
    return measure_many([Spec(key, label, steps, **kw)], runs=runs, warm=warm)[0]


def skip(key: str, label: str, why: str) -> Figure:
    fig = Figure(key, label, error=f"skipped: {why}")
    FIG[key] = fig
    print(f"  {label}: skipped ({why})")
    return fig


#: shipenv's archive writer alone, in a fresh process: argv = SNAPSHOT ROOT DEST FMT ARCNAME.
WRITE_CODE = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from pathlib import Path; from shipenv.bundle import archive; "
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
    measure_many([Spec(k, labels[k], cmds[k], setup=lambda i, o=outs[k]: o.unlink(missing_ok=True)) for k in cmds],
                 runs=runs, warm=warm)
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
                       setup=lambda i, o=out: o.unlink(missing_ok=True))
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

    # Targets
    targets: list[dict[str, Any]] = []

    def target(name: str, ok: bool | None, figures: str) -> None:
        targets.append({"target": name, "verdict": verdict(ok), "figures": figures})

    r = ratio("pack.tar_zstd", "pack.shipenv_zst")
    target(f"Packing .tar.zst ≥ {T_PACK_ZST}x the throughput of `tar | zstd -T0 -3`", None if r is None else r >= T_PACK_ZST,
           f"{xr(r)} ({fmt_s('pack.shipenv_zst')} vs {fmt_s('pack.tar_zstd')})")
    r = ratio("pack.tar_gz", "pack.shipenv_gz")
    gz_size = gz / tg if gz and tg else None
    target(f".tar.gz ≥ {T_GZ_SPEED:.0f}x faster than `tar -czf`, size ≤ {T_GZ_SIZE}x",
           None if r is None or gz_size is None else (r >= T_GZ_SPEED and gz_size <= T_GZ_SIZE),
           f"{xr(r)} faster ({fmt_s('pack.shipenv_gz')} vs {fmt_s('pack.tar_gz')}), size {xr(gz_size, 3)}")
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
    L += [f"| {esc(t['target'])} | **{t['verdict']}** | {esc(t['figures'])} |" for t in targets]
    L.append("")

    # Where shipenv's time goes
    steps = []
    for key in ("build.shipenv", "build.rebuild", "build.rebuild_same", "build.shipenv_index", "build.rebuild_index", "deploy.v2",
                "big.build"):
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
        for name, g in (("build", lambda: group_build(ctx, runs, build_warm)),
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
            except Exception as exc:
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
