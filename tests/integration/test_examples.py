"""The worked examples, run as their READMEs say.

- ``ci/example.sh``: the README's quick start, end to end.
- ``examples/systemd``: the unit is valid and hardened, and the README's
  deploy / restart / rollback commands, run line by line against a real root
  with real bundles, switch what the service serves. systemd itself cannot run
  here, so ``systemctl restart app`` is done as systemd would do it: SIGTERM to
  the running service, then the unit's ``ExecStart`` with the unit's
  ``Environment=`` and a ``NOTIFY_SOCKET`` that must receive ``READY=1``
  (``Type=notify``).

Only ``/srv/app`` (a temporary root) and the port (a free one) are changed in
what the files say.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import REPO, BuildFn

WEBAPP = REPO / "examples" / "webapp"
SYSTEMD = REPO / "examples" / "systemd"
UNIT = SYSTEMD / "app.service"
README = SYSTEMD / "README.md"

#: What systemd gives a service besides the unit's Environment= lines.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get_json(url: str, timeout: float = 10.0) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        data: dict[str, object] = json.loads(response.read())
        return data


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    return found


# --------------------------------------------------------------------------- quick start


def test_quick_start_script_serves_from_an_unpacked_bundle(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        "CI": "true",
        "SHIPENV_VENV": sys.prefix,  # the venv running these tests
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(REPO / "ci" / "example.sh")], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 1, done.stdout
    answer = answers[0]
    assert answer["app"] == "webapp"
    assert str(answer["python"]).startswith("3.12.")
    assert "/my apps/webapp-0.1.0" in str(answer["prefix"])  # unpacked where the script put it
    assert str(answer["prefix"]).startswith(str(tmp_path))
    assert "stopped cleanly" in done.stdout
    assert not list(tmp_path.glob("shipenv-example.*")), "the script must clean up after itself"


# --------------------------------------------------------------------------- the unit file


def read_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists: keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"{line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(key: str, section: str = "Service") -> list[str]:
    return [v for k, v in read_unit(UNIT.read_text())[section] if k == key]


def test_unit_runs_the_current_release_as_a_dedicated_user() -> None:
    (exec_start,) = unit_values("ExecStart")
    assert shlex.split(exec_start)[0] == "/srv/app/current/bin/app"
    assert unit_values("Restart") == ["on-failure"]
    (user,) = unit_values("User")
    assert user not in ("root", "0", "")
    assert unit_values("Type") == ["notify"]
    assert unit_values("NoNewPrivileges") == ["yes"]
    assert unit_values("ProtectSystem") == ["strict"]
    assert unit_values("WantedBy", "Install") == ["multi-user.target"]


def test_unit_hardening_rates_ok_with_systemd() -> None:
    # The offline review scores every sandboxing option; 0 is perfect, 10 is
    # none at all. The README quotes 1.3: keep it under 2.
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", "--threshold=20", str(UNIT)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"Overall exposure level for app.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout[-2000:]
    assert float(match.group(1)) < 2.0, done.stdout[-2000:]
    assert f"rates it {match.group(1)}" in README.read_text()


# --------------------------------------------------------------------------- README, line by line


@pytest.fixture(scope="module")
def archives(built_bundle: BuildFn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/webapp built as app 1.0.0 and app 2.0.0, copied (with .sha256) where a server would get them."""
    incoming = tmp_path_factory.mktemp("incoming")
    for version in ("1.0.0", "2.0.0"):
        archive = built_bundle(f"app-{version}", WEBAPP, "--name", "app", "--version", version)
        assert archive.name == f"app-{version}.tar.zst"
        shutil.copy2(archive, incoming)
        shutil.copy2(archive.with_name(archive.name + ".sha256"), incoming)
    return incoming


def readme_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)


def block_with(needle: str) -> str:
    (block,) = [b for b in readme_blocks() if needle in b]
    return block


@dataclass
class Service:
    """``app.service`` as systemd runs it, with /srv/app moved to `root`."""

    root: Path
    port: int
    tmp: Path
    proc: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        (exec_start,) = unit_values("ExecStart")
        text = exec_start.replace("/srv/app", str(self.root)).replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        return shlex.split(text)

    def env(self, notify_socket: Path) -> dict[str, str]:
        env = {"PATH": SYSTEMD_PATH, "NOTIFY_SOCKET": str(notify_socket)}
        for assignment in unit_values("Environment"):
            for word in shlex.split(assignment):
                key, _, value = word.partition("=")
                env[key] = value
        return env

    def start(self) -> None:
        notify = self.tmp / f"notify-{time.monotonic_ns()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(notify))
            sock.settimeout(60)
            out = (self.tmp / "service.log").open("ab")
            self.proc = subprocess.Popen(self.argv(), env=self.env(notify), cwd="/", stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            out.close()
            try:
                message = sock.recv(4096).decode()  # Type=notify: systemd waits for this
            except TimeoutError:
                pytest.fail(f"the service never sent READY=1:\n{self.output()}")
        assert "READY=1" in message.splitlines(), message

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)  # KillSignal=SIGTERM
        try:
            code = self.proc.wait(timeout=40)  # TimeoutStopSec
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the service ignored SIGTERM:\n{self.output()}")
        self.proc = None
        # A clean stop is not a failure: Restart=on-failure leaves it stopped.
        assert code == 0, self.output()

    def output(self) -> str:
        path = self.tmp / "service.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def serves(self) -> str:
        """The release answering on the port (its sys.prefix)."""
        assert self.proc is not None and self.proc.poll() is None, self.output()
        return str(get_json(f"http://127.0.0.1:{self.port}/")["prefix"])


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path / "srv" / "app", free_port(), tmp_path)
    yield svc
    if svc.proc is not None and svc.proc.poll() is None:
        svc.proc.kill()
        svc.proc.wait()


def run_block(block: str, service: Service, cwd: Path, *, version: str | None = None) -> list[str]:
    """Run a README block line by line; returns what `shipenv releases` printed.

    ``sudo`` is dropped (the tests run as root); ``useradd`` and installing
    the unit are machine setup that has no effect here; ``systemctl`` is the
    `Service`; every other line runs in bash with this venv's ``shipenv``
    first on PATH. `version` replaces 2.0.0, to deploy an older release first.
    """
    printed = []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.replace("/srv/app", str(service.root)).replace("127.0.0.1:8000", f"127.0.0.1:{service.port}")
        if version is not None:
            line = line.replace("2.0.0", version)
        argv = shlex.split(line)
        if argv[0] == "sudo":
            argv = argv[1:]
            line = line.removeprefix("sudo ")
        if argv[0] in ("useradd", "install") or argv[:2] in (["systemctl", "daemon-reload"], ["systemctl", "enable"]):
            continue
        if argv[:2] == ["systemctl", "restart"]:
            service.stop()
            service.start()
            continue
        if argv[:2] == ["systemctl", "status"]:
            assert service.proc is not None and service.proc.poll() is None, service.output()
            continue
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"README line failed ({done.returncode}): {line}\n{done.stdout}\n{done.stderr}\n{service.output()}"
        if argv[:2] == ["curl", "-s"]:
            assert json.loads(done.stdout) == {"status": "ok"}
        if argv[:2] == ["shipenv", "releases"]:
            printed.append(done.stdout)
    return printed


def release(service: Service, version: str) -> str:
    return str((service.root / "releases" / f"app-{version}").resolve())


def test_readme_setup_deploy_restart_rollback_with_shipenv(archives: Path, service: Service) -> None:
    run_block(block_with("useradd"), service, archives)
    assert service.root.is_dir()
    deploy = block_with("shipenv deploy")
    run_block(deploy, service, archives, version="1.0.0")
    assert service.serves() == release(service, "1.0.0")

    # The unit, pointed at this root, is one systemd accepts without a warning.
    unit = service.tmp / "app.service"
    unit.write_text(UNIT.read_text().replace("/srv/app", str(service.root)))
    done = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")

    run_block(deploy, service, archives)
    assert service.serves() == release(service, "2.0.0")
    assert os.readlink(service.root / "current").endswith("app-2.0.0")

    (listing,) = run_block(block_with("shipenv rollback"), service, archives)
    assert "app-1.0.0" in listing and "app-2.0.0" in listing
    assert service.serves() == release(service, "1.0.0")
    service.stop()
    assert "Traceback" not in service.output()


def test_readme_deploy_and_rollback_without_shipenv(archives: Path, service: Service) -> None:
    # On a server without shipenv: the bundle's own deploy.sh, same root layout.
    block = block_with("deploy.sh")
    assert "shipenv" not in block.replace(".shipenv/", "")
    lines = block.splitlines()
    deploy_only = "\n".join(line for line in lines if "rollback" not in line)
    run_block(deploy_only, service, archives, version="1.0.0")
    assert service.serves() == release(service, "1.0.0")
    run_block(block, service, archives)
    assert service.serves() == release(service, "1.0.0")  # deployed 2.0.0, then rolled back
    assert (service.root / "releases" / "app-2.0.0" / "bin" / "app").is_file()
    service.stop()
