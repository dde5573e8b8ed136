"""``--libc bundled`` without building anything: policy, plans from fake ELF facts, launchers, host checks."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from shipenv import config
from shipenv.build import launchers, libc, relocate
from shipenv.build.policy import load
from shipenv.bundle.manifest import Manifest
from shipenv.deploy import releases as deploy
from shipenv.errors import HostError, UsageError
from shipenv.model import ElfInfo, PythonInfo


def info(needed: tuple[str, ...] = (), runpath: tuple[str, ...] = ()) -> ElfInfo:
    return ElfInfo("x86_64", 64, None, needed, (), runpath, ((2, 17),), True)


HOST_LIBS = {
    "libc.so.6": info(("ld-linux-x86-64.so.2",)),
    "ld-linux-x86-64.so.2": info(),
    "libm.so.6": info(("libc.so.6",)),
    "libpthread.so.0": info(("libc.so.6",)),
    "libdl.so.2": info(("libc.so.6",)),
    "librt.so.1": info(("libc.so.6",)),
    "libutil.so.1": info(("libc.so.6",)),
    "libresolv.so.2": info(("libc.so.6",)),
    "libanl.so.1": info(("libc.so.6",)),
    "libgcc_s.so.1": info(("libc.so.6",)),
    "libpython3.12.so.1.0": info(("libm.so.6", "libc.so.6")),
}


def plan_tree(root: Path, facts: dict[str, ElfInfo], *, mode: str = "bundled", provided: Path | None = None) -> relocate.RelocationPlan:
    for rel in facts:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\x7fELF")
    host_dir = root.parent / "hostlib"
    host_dir.mkdir(exist_ok=True)
    for name in HOST_LIBS:
        (host_dir / name).write_bytes(b"\x7fELF")

    def read(path: Path) -> ElfInfo | None:
        return HOST_LIBS[path.name] if path.parent == host_dir else facts[path.relative_to(root).as_posix()]

    host = relocate.HostLibraries({n: host_dir / n for n in HOST_LIBS}, ())
    policy = load(libc=mode)  # type: ignore[arg-type]
    return relocate.plan(root, policy, machine="x86_64", files=[PurePosixPath(p) for p in facts], read=read, host=host, provided=provided)


def test_bundled_mode_vendors_the_loader_and_glibc_without_editing_them(tmp_path: Path) -> None:
    plan = plan_tree(tmp_path / "t", {"bin/python3.12": info(("libpython3.12.so.1.0", "libc.so.6"), runpath=("/opt/py/lib",))})
    vendored = {v.soname for v in plan.vendor}
    assert {"ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libutil.so.1", "libresolv.so.2", "libgcc_s.so.1"} <= vendored
    assert "libanl.so.1" not in vendored, "glibc libraries nothing needs stay out"
    # Only files outside the glibc family get a search path; the family is reached through --library-path.
    edited = {e.path.as_posix(): e.new for e in plan.rpaths}
    assert edited == {"bin/python3.12": ("$ORIGIN/../lib",)}


def test_host_mode_still_trusts_the_targets_glibc(tmp_path: Path) -> None:
    plan = plan_tree(tmp_path / "t", {"bin/python3.12": info(("libpython3.12.so.1.0", "libc.so.6"))}, mode="host")
    assert [v.soname for v in plan.vendor] == ["libpython3.12.so.1.0"]


def test_a_wheel_layer_needing_glibc_is_not_edited_for_it(tmp_path: Path) -> None:
    final_lib = tmp_path / "final" / "lib"
    final_lib.mkdir(parents=True)
    for name in ("libc.so.6", "ld-linux-x86-64.so.2", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libutil.so.1", "libresolv.so.2", "libgcc_s.so.1"):
        (final_lib / name).write_bytes(b"\x7fELF")
    plan = plan_tree(tmp_path / "stage", {"site/numpy/_core.so": info(("libm.so.6", "libc.so.6", "libanl.so.1"))}, provided=final_lib)
    # Already in the final lib/: nothing; a family member it lacks comes verbatim; no RPATH edit at all.
    assert [v.soname for v in plan.vendor] == ["libanl.so.1"]
    assert plan.rpaths == ()


def test_system_lib_cannot_take_glibc_out_of_a_bundled_tree() -> None:
    policy = load(frozenset({"libc.so.6", "libstdc++.so.6"}), "bundled")
    assert not policy.provided("libc.so.6") and policy.provided("libstdc++.so.6")
    assert policy.required("x86_64")[0] == "ld-linux-x86-64.so.2"
    assert load().required("x86_64") == ()


def py(version: tuple[int, int, int]) -> PythonInfo:
    return PythonInfo(Path("/x/bin/python3"), version, "cpython", "", "", "", "x86_64", Path("/x"), Path("/x/lib"), None, None, True, None, None)


def _fake_tree(tmp_path: Path, *, with_loader: bool) -> Path:
    """bin/python, and a 'loader' and 'interpreter' that print how they were called."""
    root = tmp_path / ("bundled tree" if with_loader else "host tree")
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "bin" / "python").write_text(launchers.python_launcher(py((3, 12, 1))))
    (root / "bin" / "python-env").write_text(launchers._render("python-env.sh", py((3, 12, 1))))
    (root / "bin" / "python3.12").write_text('#!/bin/sh\necho "python3.12 $*"\n')
    if with_loader:
        (root / "lib" / "ld-linux-x86-64.so.2").write_text('#!/bin/sh\necho "loader $*"\n')
    for path in [*(root / "bin").iterdir(), *(root / "lib").iterdir()]:
        path.chmod(0o755)
    return root


def test_launcher_goes_through_the_loader_only_when_the_tree_has_one(tmp_path: Path) -> None:
    bundled = _fake_tree(tmp_path, with_loader=True)
    out = subprocess.run([str(bundled / "bin" / "python"), "-c", "x y"], capture_output=True, text=True, check=True).stdout
    lib = f"{bundled}/bin/../lib"
    assert out == f"loader --inhibit-cache --library-path {lib} --argv0 {bundled}/bin/python {bundled}/bin/python3.12 -E -s -c x y\n"
    out = subprocess.run([str(bundled / "bin" / "python-env"), "-c", "1"], capture_output=True, text=True, check=True).stdout
    assert out == f"loader --inhibit-cache --library-path {lib} --argv0 {bundled}/bin/python-env {bundled}/bin/python3.12 -c 1\n"
    host = _fake_tree(tmp_path, with_loader=False)
    out = subprocess.run([str(host / "bin" / "python"), "-V"], capture_output=True, text=True, check=True).stdout
    assert out == "python3.12 -E -s -V\n"
    done = subprocess.run([str(host / "bin" / "python-env")], capture_output=True, text=True, check=False)
    assert done.returncode == 127 and "built with --libc host" in done.stderr


def test_kernel_floor_and_summary() -> None:
    facts = libc.BundledLibc((2, 36), (3, 2, 0), PurePosixPath("lib/ld-linux-x86-64.so.2"))
    assert facts.summary("x86_64") == "glibc 2.36 (bundled), needs Linux >= 3.2 on x86_64"
    assert facts.as_platform()["kernel_floor"] == "3.2.0"
    this = Path("/lib/x86_64-linux-gnu/libc.so.6")
    assert libc.kernel_floor(this) == (3, 2, 0)  # readelf -n: "ABI: 3.2.0" on Debian 12
    assert libc.glibc_release(this) == (2, 36)


BUNDLED = {"arch": "x86_64", "glibc_floor": None, "libc": "bundled", "glibc": "2.36", "kernel_floor": "3.2.0"}


def _manifest(platform: dict[str, str | None]) -> Manifest:
    return Manifest.from_dict({"name": "app", "version": "2.0", "python": {"version": "3.12.1"}, "platform": platform})


def test_deploy_checks_the_kernel_not_glibc_for_a_bundled_libc_bundle() -> None:
    deploy.check_host(_manifest(BUNDLED), deploy.HostFacts("x86_64", None, (4, 19, 0)), "app-2.0")  # musl host: fine
    deploy.check_host(_manifest(BUNDLED), deploy.HostFacts("x86_64", (2, 17), (3, 10, 0)), "app-2.0")
    with pytest.raises(HostError) as err:
        deploy.check_host(_manifest(BUNDLED), deploy.HostFacts("x86_64", (2, 36), (2, 6, 32)), "app-2.0")
    assert err.value.message == "This host runs Linux 2.6.32 but app-2.0 carries glibc 2.36, which needs Linux 3.2.0 or newer; deploy it on a newer kernel."
    with pytest.raises(HostError, match="built for x86_64"):
        deploy.check_host(_manifest(BUNDLED), deploy.HostFacts("aarch64", None, (6, 1, 0)), "app-2.0")


def test_old_glibc_refusal_hints_at_bundled_mode() -> None:
    with pytest.raises(HostError) as err:
        deploy.check_host(_manifest({"arch": "x86_64", "glibc_floor": "2.36"}), deploy.HostFacts("x86_64", (2, 31)), "app-2.0")
    assert err.value.hint is not None and "--libc bundled" in err.value.hint


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = dict(
        project=None, fmt=None, entries=[], max_glibc=None, requirements=[], constraints=[], wheels=None, venv=None,
        output=Path("dist"), python=None, name=None, bundle_version=None, keep_stdlib=[], system_libs=[], report=False,
        level=None, threads=0, cache_dir=None, no_cache=False, libc=None,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_libc_from_flag_or_pyproject(tmp_path: Path) -> None:
    assert config.build_options(_args()).libc == "host"
    assert config.build_options(_args(libc="bundled")).libc == "bundled"
    (tmp_path / "pyproject.toml").write_text('[tool.shipenv]\nlibc = "bundled"\n')
    assert config.build_options(_args(project=tmp_path)).libc == "bundled"
    assert config.build_options(_args(project=tmp_path, libc="host")).libc == "host"
    (tmp_path / "pyproject.toml").write_text('[tool.shipenv]\nlibc = "static"\n')
    with pytest.raises(UsageError, match="libc 'static' is not one of host, bundled"):
        config.build_options(_args(project=tmp_path))
