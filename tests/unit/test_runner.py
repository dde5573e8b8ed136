"""The process runner: one scrubbed environment, and a seam that lets stages be tested with a fake."""

from __future__ import annotations

import os
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


class PinRunner:
    """Answers uv with the given pins and pip wheel by building ``sdist_wheel`` (if any), recording every argv."""

    def __init__(self, pins: list[str], sdist_wheel: str | None = None) -> None:
        self.pins = pins
        self.sdist_wheel = sdist_wheel
        self.calls: list[list[str]] = []

    def run(
        self, argv: Sequence[str], *, env_extra: Mapping[str, str | None] | None = None, cwd: Path | None = None, timeout: float | None = None
    ) -> Completed:
        self.calls.append(list(argv))
        if argv[0].endswith("/uv"):
            return Completed(0, "".join(f"{pin}\n    # via -r requirements.txt\n" for pin in self.pins), "")
        assert self.sdist_wheel is not None, f"pip started: {argv}"
        wheel_dir = Path(argv[argv.index("--wheel-dir") + 1])
        (wheel_dir / self.sdist_wheel).write_bytes(b"PK")
        return Completed(0, f"Saved ./{self.sdist_wheel}\n", "")


def _wheelhouse(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True)
    for name in names:
        (directory / name).write_bytes(b"PK")
    return directory


def _py311() -> PythonInfo:
    return PythonInfo(Path("/x/bin/python3.11"), (3, 11, 7), "cpython", "", "", "", "x86_64", Path("/x"), Path("/x/lib"), None, None, True, None, None)


def test_a_wheelhouse_build_never_starts_pip_when_uv_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver, "find_uv", lambda: Path("/fake/bin/uv"))
    house = _wheelhouse(tmp_path / "house", "six-1.16.0-py2.py3-none-any.whl", "six-1.15.0-py2.py3-none-any.whl",
                        "PyYAML-6.0.2-cp311-cp311-manylinux_2_17_x86_64.whl", "PyYAML-6.0.2-py3-none-any.whl",
                        "PyYAML-6.0.2-cp312-cp312-manylinux_2_17_x86_64.whl")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\nPyYAML\n")
    fake = PinRunner(["pyyaml==6.0.2", "six==1.16.0"])
    store = tmp_path / "cache" / "wheels"
    options = BuildOptions(output=tmp_path / "out", requirements=(requirements,), wheels=house)
    wheels = install.collect_wheels(install.Sources(), options, _py311(), Path("/tree/bin/python3.11"), tmp_path / "wd", lambda _m: None,
                                    store=store, runner=fake)
    # Straight from the wheelhouse, the best tag of each pinned version, in uv's order.
    assert wheels == [(house / "PyYAML-6.0.2-cp311-cp311-manylinux_2_17_x86_64.whl", "index"),
                      (house / "six-1.16.0-py2.py3-none-any.whl", "index")]
    assert [call[0] for call in fake.calls] == ["/fake/bin/uv"]  # no pip process
    assert not (tmp_path / "cache" / "pip").exists()  # and no copy of pip for the interpreter
    assert not store.exists()  # nothing copied into the wheel store either


def test_only_what_the_wheelhouse_has_as_an_sdist_goes_to_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver, "find_uv", lambda: Path("/fake/bin/uv"))
    house = _wheelhouse(tmp_path / "house", "six-1.16.0-py2.py3-none-any.whl", "srcpkg-1.0.tar.gz")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\nsrcpkg\n")
    fake = PinRunner(["six==1.16.0", "srcpkg==1.0"], sdist_wheel="srcpkg-1.0-py3-none-any.whl")
    options = BuildOptions(output=tmp_path / "out", requirements=(requirements,), wheels=house)
    wd = tmp_path / "wd"
    wheels = install.collect_wheels(install.Sources(), options, _py311(), Path("/tree/bin/python3.11"), wd, lambda _m: None,
                                    store=tmp_path / "cache" / "wheels", runner=fake)
    assert wheels == [(house / "six-1.16.0-py2.py3-none-any.whl", "index"), (wd / "srcpkg-1.0-py3-none-any.whl", "index")]
    _uv, pip = fake.calls
    assert pip[0] == "/tree/bin/python3.11" and "--no-deps" in pip and "--no-index" in pip
    assert Path(pip[pip.index("-r") + 1]).name == "pins.txt"
    # The wheel pip built is kept: the next build finds it without pip.
    assert (tmp_path / "cache" / "wheels" / "srcpkg" / "srcpkg-1.0-py3-none-any.whl").is_file()
    again = PinRunner(["six==1.16.0", "srcpkg==1.0"])
    install.collect_wheels(install.Sources(), options, _py311(), Path("/tree/bin/python3.11"), tmp_path / "wd2", lambda _m: None,
                           store=tmp_path / "cache" / "wheels", runner=again)
    assert [call[0] for call in again.calls] == ["/fake/bin/uv"]


def test_pips_no_index_with_local_find_links_is_a_wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    house = _wheelhouse(tmp_path / "house", "six-1.16.0-py2.py3-none-any.whl")
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "pip.conf"))
    (tmp_path / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = file://{house} {tmp_path / 'empty'}\n")
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(resolver, "find_uv", lambda: Path("/fake/bin/uv"))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    fake = PinRunner(["six==1.16.0"])
    options = BuildOptions(output=tmp_path / "out", requirements=(requirements,))
    wheels = install.collect_wheels(install.Sources(), options, _py311(), Path("/tree/bin/python3.11"), tmp_path / "wd", lambda _m: None,
                                    runner=fake)
    assert wheels == [(house / "six-1.16.0-py2.py3-none-any.whl", "index")]
    (uv,) = fake.calls
    assert "--no-index" in uv and "--index-url" not in uv
    assert [uv[i + 1] for i, a in enumerate(uv) if a == "--find-links"] == [f"file://{house}", str(tmp_path / "empty")]
    # A remote find-links page may offer a better wheel of that version: then pip decides.
    (tmp_path / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {house} https://wheels.example/links\n")
    remote = PinRunner(["six==1.16.0"], sdist_wheel="six-1.16.0-py2.py3-none-any.whl")
    install.collect_wheels(install.Sources(), options, _py311(), Path("/tree/bin/python3.11"), tmp_path / "wd2", lambda _m: None,
                           runner=remote)
    assert [call[0] for call in remote.calls] == ["/fake/bin/uv", "/tree/bin/python3.11"]
