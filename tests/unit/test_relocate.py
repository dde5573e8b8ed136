"""Relocation plans, computed from fake ELF facts: no real binaries, no writes."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from shipenv.build import relocate
from shipenv.build.patch import RecordingPatcher
from shipenv.build.policy import load
from shipenv.errors import RelocateError
from shipenv.model import ElfInfo


def info(needed: tuple[str, ...] = (), rpath: tuple[str, ...] = (), runpath: tuple[str, ...] = ()) -> ElfInfo:
    return ElfInfo("x86_64", 64, None, needed, rpath, runpath, ((2, 17),), True)


def make(root: Path, facts: dict[str, ElfInfo], host: dict[str, ElfInfo]) -> tuple[relocate.RelocationPlan, RecordingPatcher]:
    for rel in facts:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\x7fELF")
    host_dir = root.parent / "hostlib"
    host_dir.mkdir(exist_ok=True)
    for name in host:
        (host_dir / name).write_bytes(b"\x7fELF")

    def read(path: Path) -> ElfInfo | None:
        if path.parent == host_dir:
            return host[path.name]
        return facts[path.relative_to(root).as_posix()]

    libs = relocate.HostLibraries({n: host_dir / n for n in host}, ())
    plan = relocate.plan(root, load(), machine="x86_64", files=[PurePosixPath(p) for p in facts], read=read, host=libs)
    return plan, RecordingPatcher()


def test_absolute_runpath_becomes_origin_relative_and_library_is_vendored(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    plan, _ = make(
        root,
        {"bin/python3.12": info(("libpython3.12.so.1.0", "libc.so.6"), runpath=("/opt/shipenv-nonexistent/versions/3.12.1/lib",))},
        {"libpython3.12.so.1.0": info(("libm.so.6",))},
    )
    assert [v.soname for v in plan.vendor] == ["libpython3.12.so.1.0"]
    assert plan.vendor[0].needed_by == PurePosixPath("bin/python3.12")
    [edit] = plan.rpaths
    assert edit.path == PurePosixPath("bin/python3.12")
    assert edit.new == ("$ORIGIN/../lib",)


def test_baseline_libraries_are_never_vendored(tmp_path: Path) -> None:
    plan, _ = make(tmp_path / "t", {"lib/x.so": info(("libc.so.6", "libm.so.6", "libpthread.so.0", "ld-linux-x86-64.so.2"))}, {})
    assert plan.vendor == () and plan.rpaths == ()


def test_transitive_dependencies_come_along(tmp_path: Path) -> None:
    plan, _ = make(
        tmp_path / "t",
        {"lib/python3.12/lib-dynload/_ssl.so": info(("libssl.so.3",))},
        {"libssl.so.3": info(("libcrypto.so.3",)), "libcrypto.so.3": info(("libz.so.1",)), "libz.so.1": info()},
    )
    assert sorted(v.soname for v in plan.vendor) == ["libcrypto.so.3", "libssl.so.3", "libz.so.1"]
    by_path = {e.path.as_posix(): e.new for e in plan.rpaths}
    assert by_path["lib/python3.12/lib-dynload/_ssl.so"] == ("$ORIGIN/../..",)
    assert by_path["lib/libssl.so.3"] == ("$ORIGIN",)


def test_wheel_libraries_reached_through_origin_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "t"
    facts = {
        "site/numpy/core/_m.so": info(("libopenblas-abc.so",), runpath=("$ORIGIN/../../numpy.libs",)),
        "site/numpy.libs/libopenblas-abc.so": info(("libgfortran-x.so",), runpath=("$ORIGIN",)),
        "site/numpy.libs/libgfortran-x.so": info(),
    }
    plan, _ = make(root, facts, {})
    assert plan.vendor == () and plan.rpaths == ()


def test_missing_library_names_library_and_file(tmp_path: Path) -> None:
    with pytest.raises(RelocateError) as exc:
        make(tmp_path / "t", {"site/a.so": info(("libnothere.so.1",)), "site/b.so": info(("libnothere.so.1",))}, {})
    assert "libnothere.so.1 (needed by site/a.so)" in exc.value.message
    assert "--system-lib" in (exc.value.hint or "")


def test_system_lib_option_trusts_the_target(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "x").mkdir(parents=True)
    (root / "x/a.so").write_bytes(b"")
    policy = load(frozenset({"libnothere.so.1"}))
    plan = relocate.plan(root, policy, machine="x86_64", files=[PurePosixPath("x/a.so")], read=lambda p: info(("libnothere.so.1",)), host=relocate.HostLibraries({}, ()))
    assert plan.vendor == ()


def test_apply_copies_then_patches(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    plan, patcher = make(root, {"bin/p": info(("libq.so",), rpath=("/opt/q/lib",))}, {"libq.so": info()})
    relocate.apply(plan, root, patcher)
    assert (root / "lib" / "libq.so").is_file()
    assert patcher.calls == [(root / "bin/p", ("$ORIGIN/../lib",))]


@pytest.mark.parametrize(
    ("file", "target", "expected"),
    [("bin/python3.12", "lib", "$ORIGIN/../lib"), ("lib/libssl.so.3", "lib", "$ORIGIN"), ("lib/python3.12/lib-dynload/_ssl.so", "lib", "$ORIGIN/../..")],
)
def test_origin_path(file: str, target: str, expected: str) -> None:
    assert relocate.origin_path(PurePosixPath(file), PurePosixPath(target)) == expected


def test_policy_is_data() -> None:
    policy = load()
    assert policy.provided("libc.so.6")
    assert not policy.provided("libstdc++.so.6")  # vendored by default: absent from glibc-only roots
    assert not policy.provided("libssl.so.3")


def test_siblings_in_a_wheels_libs_directory_are_found_as_the_loader_does(tmp_path: Path) -> None:
    # scipy.libs/libgfortran needs libquadmath from the same directory, without an RPATH:
    # the extension that loads libgfortran loads libquadmath first.
    facts = {
        "site/scipy/special/_ufuncs.so": info(("libgfortran-1a.so.5", "libquadmath-2b.so.0"), runpath=("$ORIGIN/../../scipy.libs",)),
        "site/scipy.libs/libgfortran-1a.so.5": info(("libquadmath-2b.so.0",)),
        "site/scipy.libs/libquadmath-2b.so.0": info(),
    }
    plan, _ = make(tmp_path / "t", facts, {})
    assert plan.vendor == () and plan.rpaths == ()


def test_a_library_the_package_ships_elsewhere_is_reached_there(tmp_path: Path) -> None:
    # torch/bin/test_shim needs libtorch.so from torch/lib but only searches $ORIGIN.
    facts = {
        "site/torch/bin/test_shim": info(("libtorch.so", "libc.so.6"), runpath=("$ORIGIN",)),
        "site/torch/lib/libtorch.so": info(),
    }
    plan, _ = make(tmp_path / "t", facts, {})
    assert plan.vendor == ()
    [edit] = plan.rpaths
    assert edit.path.as_posix() == "site/torch/bin/test_shim" and edit.new == ("$ORIGIN", "$ORIGIN/../lib")


def test_huge_library_gets_a_copy_beside_it_instead_of_a_rewrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relocate, "LARGE_FILE", 1)  # every fake file counts as huge
    facts = {"site/torch/lib/libtorch_cpu.so": info(("libstdc++.so.6", "libc.so.6"), runpath=("$ORIGIN",))}
    plan, _ = make(tmp_path / "t", facts, {"libstdc++.so.6": info(("libgcc_s.so.1",)), "libgcc_s.so.1": info()})
    dests = {v.dest.as_posix() for v in plan.vendor}
    assert "site/torch/lib/libstdc++.so.6" in dests  # found through the $ORIGIN it already has
    assert {"lib/libstdc++.so.6", "lib/libgcc_s.so.1"} <= dests  # the closure, for everyone else
    assert all(e.path.as_posix() != "site/torch/lib/libtorch_cpu.so" for e in plan.rpaths)


def test_small_library_is_edited_not_copied_beside(tmp_path: Path) -> None:
    facts = {"site/pil/_avif.so": info(("libstdc++.so.6",), runpath=("$ORIGIN",))}
    plan, _ = make(tmp_path / "t", facts, {"libstdc++.so.6": info()})
    assert {v.dest.as_posix() for v in plan.vendor} == {"lib/libstdc++.so.6"}
    [edit] = plan.rpaths
    assert edit.new == ("$ORIGIN", "$ORIGIN/../../lib")
