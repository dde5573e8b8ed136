"""Measuring: the environment every command runs in, timed runs, figures (FIG) and values (VAL).

Shared by the groups (groups.py) and the report (report.py); run.py ties them together.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The reference workload: pinned requirements, committed beside this file.
REQUIREMENTS = HERE / "workload" / "requirements.txt"
BENCH = Path(os.environ.get("SHIPENV_BENCH_DIR") or "/tmp/shipenv-bench")
RUN = BENCH / "run"
RESULTS = HERE / "results"

PYVER = "3.11.7"
NAME, V1, V2 = "app", "2.0.0", "2.0.1"
ADDED = "six==1.17.0"  #: the one requirement v2 adds (small, pure Python)
BIG_EXTRA = "torch==2.13.0"  #: found through the configured indexes; makes the bundle > 1 GB
COLD_CODE = "import django, numpy, pandas"
PEER_PINS = {"venv-pack": "venv-pack==0.2.0", "pex": "pex==2.105.2", "pyinstaller": "pyinstaller==6.22.3"}
HOSTILE_MIB = 1024  #: what the hostile archive's pax header declares (hostile.py)
TIMEOUT = 1800  # seconds for any single command
EPOCH = 1577836800



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
    discard-mounted disk slows the next run)."""
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
        # A blocking wait, with the time limit on a timer: Popen.wait(timeout=...) polls, sleeping up to
        # 50 ms between looks, which put every figure over ~0.1 s on a 50 ms grid (cold starts of
        # 365/415/516 ms, whatever they took).
        killer = threading.Timer(TIMEOUT, _kill_group, (proc.pid,))
        killer.start()
        try:
            rc = proc.wait()
        finally:
            killer.cancel()
        wall = time.perf_counter() - t0  # killed at the limit: rc is -9 (SIGKILL), as below
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


def _kill_group(pid: int) -> None:
    """The time limit: the command and everything it started."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
    refused: bool = False  #: the command must fail (a hostile input it refuses); exit 0 is the failure


def aliases() -> dict[str, str]:
    """Shell functions that stand for shipenv's snapshot in the report's commands: name -> the words it replaces.

    ``shipenv() { <words> "$@"; }`` typed into bash makes every command the report prints run as it was timed.
    """
    return {"shipenv": shlex.join([str(SHIP_PY), "-c", SHIPENV_MAIN, str(SNAPSHOT)]),
            "shipenv_write": shlex.join([str(SHIP_PY), "-c", WRITE_CODE, str(SNAPSHOT)])}


def abbreviate(command: str) -> str:
    """``command`` with shipenv's snapshot invocation written as the shell function :func:`aliases` defines."""
    for name, words in aliases().items():
        if command.startswith(words + " "):
            return name + command[len(words):]
    return command


def shown(cmd: Cmd, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """``cmd`` as one line a shell would run the same way: changed variables and the directory in front."""
    text = cmd if isinstance(cmd, str) else shlex.join(cmd)  # a str is a bash command line already
    changed = {k: v for k, v in (env or {}).items() if ENV.get(k) != v}
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(changed.items()))
    if cwd is not None:
        return f"cd {shlex.quote(str(cwd))} && {prefix}{text}"
    return prefix + text


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
            # The exact commands timed (the last run's; other runs differ only in the run number in paths).
            fig.extra["commands"] = [shown(cmd, spec.env, spec.cwd) for cmd in cmds]
            wall = cpu = 0.0
            rss = 0
            outputs, walls = [], []
            for cmd in cmds:
                subprocess.run(["sync"])
                t = run_timed(cmd, logs[spec.key], spec.env, spec.cwd)
                wall, cpu, rss = wall + t.wall, cpu + t.cpu, max(rss, t.rss_kb)
                walls.append(round(t.wall, 3))
                outputs.append(t.output)
                if spec.refused and t.rc > 0:
                    said = [line for line in t.output.splitlines() if line.startswith("error:")] or [tail(t.output, 1)]
                    fig.extra["refusal"] = said[-1]
                elif spec.refused or t.rc != 0:
                    what = "accepted (exit 0) instead of refusing" if spec.refused and t.rc == 0 else f"exit {t.rc}"
                    fig.error, fig.error_tail = f"{what}: {shown(cmd)[:240]}", tail(t.output)
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


