"""The process runner: one scrubbed environment, and a seam that lets stages be tested with a fake."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from shipenv.build import install, resolver
from shipenv.build.runner import REAL, Completed
from shipenv.model import BuildOptions, PythonInfo


class FakeRunner:
    """Answers uv with a failure and pip wheel with one wheel, recording every argv."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(
        self, argv: Sequence[str], *, env_extra: Mapping[str, str | None] | None = None, cwd: Path | None = None, timeout: float | None = None
    ) -> Completed:
        self.calls.append(list(argv))
        if argv[0].endswith("/uv"):
            return Completed(1, "", "error: No solution found when resolving dependencies")
        wheel_dir = Path(argv[argv.index("--wheel-dir") + 1])
        (wheel_dir / "six-1.16.0-py2.py3-none-any.whl").write_bytes(b"")
        return Completed(0, "Saved ./six-1.16.0-py2.py3-none-any.whl\n", "")


def _py() -> PythonInfo:
    return PythonInfo(Path("/x/bin/python3.12"), (3, 12, 1), "cpython", "", "", "", "x86_64", Path("/x"), Path("/x/lib"), None, None, True, None, None)


def test_pip_resolves_when_uv_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver, "find_uv", lambda: Path("/fake/bin/uv"))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    fake = FakeRunner()
    wheel_dir = tmp_path / "wheels"
    options = BuildOptions(output=tmp_path / "out", requirements=(requirements,))
    wheels = install.collect_wheels(install.Sources(), options, _py(), Path("/tree/bin/python3.12"), wheel_dir, lambda _m: None, runner=fake)
    assert wheels == [(wheel_dir / "six-1.16.0-py2.py3-none-any.whl", "index")]
    uv_call, pip_call = fake.calls
    assert uv_call[:3] == ["/fake/bin/uv", "pip", "compile"]
    assert pip_call[0] == "/tree/bin/python3.12" and "wheel" in pip_call
    assert pip_call[pip_call.index("-r") + 1] == str(requirements) and "--no-deps" not in pip_call  # pip resolves it all


def test_real_runner_scrubs_python_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setenv("SHIPENV_TEST_KEEP", "kept")
    monkeypatch.setenv("SHIPENV_TEST_DROP", "dropped")
    code = "import os; print(os.environ.get('PYTHONPATH'), os.environ.get('SHIPENV_TEST_KEEP'), os.environ.get('SHIPENV_TEST_DROP'), os.environ.get('SHIPENV_TEST_ADD'))"
    done = REAL.run([sys.executable, "-c", code], env_extra={"SHIPENV_TEST_DROP": None, "SHIPENV_TEST_ADD": "added"}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "kept", "None", "added"]
