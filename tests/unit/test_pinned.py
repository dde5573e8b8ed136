"""Requirements that are already a resolution (shipenv.build.pinned): answered without uv, exactly as uv answers.

Real wheels (zip files with their metadata) in a wheelhouse, the real uv and a
real pyenv interpreter: every set :func:`pinned.closed` answers is also given
to ``uv pip compile``, and the pins must be the same, in the same order.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from shipenv.build import install, interpreter, pinned, resolver
from shipenv.build.cache import BuildCache
from shipenv.build.runner import Completed
from shipenv.model import BuildOptions, PythonInfo
from tests.unit.test_resolver import clean_pip_config  # noqa: F401  (autouse: no pip configuration of the machine)


def wheel(house: Path, name: str, version: str, requires: Sequence[str] = (), python: str | None = None,
          tag: str = "py3-none-any") -> Path:
    """A wheel uv and pip accept: its METADATA, WHEEL and RECORD, and one module."""
    dist = name.replace("-", "_")
    path = house / f"{dist}-{version}-{tag}.whl"
    house.mkdir(parents=True, exist_ok=True)
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Python: {python}"] if python else []
    meta += [f"Requires-Dist: {r}" for r in requires]
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}.py", "")
        z.writestr(f"{info}/METADATA", "\n".join(meta) + "\n")
        z.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{info}/RECORD", f"{dist}.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


@pytest.fixture(scope="module")
def py() -> PythonInfo:
    return interpreter.inspect("3.11")


@pytest.fixture
def house(tmp_path: Path) -> Path:
    h = tmp_path / "wheels"
    wheel(h, "alpha", "1.0", ["beta>=1.1", "gamma; extra == 'fast'", "delta; python_version < '3'", "Eps-Ilon[x]"])
    wheel(h, "beta", "1.2", ["alpha"])  # a cycle is fine
    wheel(h, "beta", "0.9")
    wheel(h, "gamma", "2.0", python=">=3.8")
    wheel(h, "eps-ilon", "3.0", ["zeta==1.0; extra == 'x'"])
    wheel(h, "zeta", "1.0")
    wheel(h, "old", "1.0", python="<3")
    wheel(h, "kernel", "1.0", ["zeta; platform_release >= '5'"])
    return h


def opts(tmp_path: Path, house: Path, text: str) -> BuildOptions:
    req = tmp_path / "requirements.txt"
    req.write_text(text)
    return BuildOptions(output=tmp_path / "out", requirements=(req,), wheels=house)


def uv_pins(options: BuildOptions, py: PythonInfo) -> list[str] | None:
    uv = resolver.find_uv()
    assert uv is not None, "uv is missing: ci/setup.sh installs it into the project's venv"
    found = resolver.uv_resolve(uv, py.executable, options)
    return found.pins if found is not None else None


CLOSED = {
    "a lock file": "# pinned by pip-compile\nalpha==1.0\nbeta==1.2   # via alpha\neps-ilon==3.0\nzeta==1.0\n",
    "names as written": "Alpha==1.0\nBETA==1.2\nEps_Ilon==3.0\nzeta==1.0\n",
    "an extra asked for": "alpha[fast]==1.0\nbeta==1.2\ngamma==2.0\neps-ilon==3.0\nzeta==1.0\n",
    "a marker that leaves a pin out": "alpha==1.0\nbeta==1.2\neps-ilon==3.0\nzeta==1.0\nold==1.0; python_version < '3'\n",
}


@pytest.mark.parametrize("case", CLOSED)
def test_a_closed_set_is_its_own_resolution_exactly_as_uv_gives_it(tmp_path: Path, house: Path, py: PythonInfo, case: str) -> None:
    options = opts(tmp_path, house, CLOSED[case])
    found = pinned.closed(options, py, install.target_tags(py))
    assert found is not None, case
    assert found.pins == uv_pins(options, py)


OPEN = {
    "a range": "alpha>=1.0\nbeta==1.2\neps-ilon==3.0\nzeta==1.0\n",
    "a dependency left out": "alpha==1.0\nbeta==1.2\neps-ilon==3.0\n",  # zeta, through eps-ilon[x]
    "an extra's dependency left out": "alpha[fast]==1.0\nbeta==1.2\neps-ilon==3.0\nzeta==1.0\n",
    "a pin the dependency does not allow": "alpha==1.0\nbeta==0.9\neps-ilon==3.0\nzeta==1.0\n",
    "a wheel the interpreter cannot run": "old==1.0\n",
    "not in the wheelhouse": "zeta==1.0\nmissing==1.0\n",
    "an option line": "-r other.txt\nzeta==1.0\n",
    "hashes": "zeta==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n",
    "a marker on the host's kernel": "kernel==1.0\nzeta==1.0\n",
    "a wildcard": "zeta==1.*\n",
    "a URL": "zeta @ file:///nowhere/zeta-1.0-py3-none-any.whl\n",
    "pip itself": "pip==24.0\nzeta==1.0\n",
}


@pytest.mark.parametrize("case", OPEN)
def test_anything_else_is_left_to_uv(tmp_path: Path, house: Path, py: PythonInfo, case: str) -> None:
    assert pinned.closed(opts(tmp_path, house, OPEN[case]), py, install.target_tags(py)) is None


@pytest.mark.parametrize("limit, closed", [("zeta<=1.0\nunrelated<2\n", True), ("zeta<1.0\n", False),
                                          ("zeta<1.0; python_version < '3'\n", True), ("-r more.txt\n", False)])
def test_constraints_must_admit_every_pin_as_uv_checks_them(tmp_path: Path, house: Path, py: PythonInfo, limit: str, closed: bool) -> None:
    """Constraints from -c or pip's configuration (a site-wide cap): each pin must lie within them, or uv decides."""
    options = opts(tmp_path, house, CLOSED["a lock file"])
    cap = tmp_path / "constraints.txt"
    cap.write_text(limit)
    found = pinned.closed(options, py, install.target_tags(py), constraints=[str(cap)])
    assert (found is not None) is closed
    if found is not None:
        assert found.pins == uv_pins(dataclasses.replace(options, constraints=(cap,)), py)


class NoProcess:
    """A runner that fails the test if anything is run."""

    def run(self, argv: Sequence[str], **_kw: object) -> Completed:
        raise AssertionError(f"nothing runs for a closed set: {argv}")


def test_uv_does_not_start_for_a_closed_set_and_the_cache_keeps_each_wheels_requirements(tmp_path: Path, house: Path, py: PythonInfo) -> None:
    options = opts(tmp_path, house, CLOSED["a lock file"])
    store = BuildCache(tmp_path / "cache")
    first = install.resolve_pins(options, py, py.executable, NoProcess(), store)
    kept = sorted((store.root / "requires").glob("*.json"))
    again = install.resolve_pins(options, py, py.executable, NoProcess(), store)
    assert first is not None and again is not None and first.pins == again.pins == ["alpha==1.0", "beta==1.2", "eps-ilon==3.0", "zeta==1.0"]
    assert len(kept) == 4 and sorted((store.root / "requires").glob("*.json")) == kept
    # A wheel replaced under the same name is read again, not taken from the cache.
    wheel(house, "zeta", "1.0", ["nothing-pins-this"])
    assert pinned.closed(options, py, install.target_tags(py), store=store) is None
