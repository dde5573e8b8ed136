"""Byte-compilation (shipenv.build.bytecode, data/compile.py): roots streamed while they are installed give the same pycs."""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from shipenv.build import bytecode
from shipenv.build.runner import REAL, Completed, OnLine, Stream
from shipenv.errors import RelocateError

PYTHON = Path(sys.executable)
TAG = sys.implementation.cache_tag


def tree(root: Path, n: int) -> Path:
    """A package of ``n`` modules, one of them in a test-data directory (never compiled)."""
    pkg = root / "lib" / f"pkg{n}"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for i in range(n):
        (pkg / f"m{i}.py").write_text(f"def f{i}():\n    return {i}\n")
    (pkg / "tests" / "data").mkdir(parents=True)
    (pkg / "tests" / "data" / "fixture.py").write_text("x = 1\n")
    return root


def pycs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.pyc"))}


def test_streamed_roots_compile_exactly_like_roots_given_at_once(tmp_path: Path) -> None:
    at_once = [tree(tmp_path / "a" / str(i), n) for i, n in enumerate((3, 70, 1))]
    streamed = [tree(tmp_path / "b" / str(i), n) for i, n in enumerate((3, 70, 1))]
    bytecode.byte_compile(PYTHON, at_once)
    with bytecode.Compiler(PYTHON) as compiler:
        for root in streamed:
            compiler.add(root)
        compiler.finish()
    for a, b in zip(at_once, streamed):
        assert pycs(a) == pycs(b) and len(pycs(a)) == len(list(a.rglob("*.py"))) - 1  # not tests/data
    # The path in each pyc is relative to its root: no build path inside.
    pyc = streamed[1] / "lib" / "pkg70" / "__pycache__" / f"m5.{TAG}.pyc"
    assert str(tmp_path).encode() not in pyc.read_bytes() and b"lib/pkg70/m5.py" in pyc.read_bytes()


def test_a_file_that_is_not_python_3_stays_uncompiled_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tree(tmp_path / "r", 2)
    (root / "lib" / "pkg2" / "py2.py").write_text("print 'hello'\n")
    with caplog.at_level("WARNING", logger="shipenv.build.bytecode"), bytecode.Compiler(PYTHON) as compiler:
        compiler.add(root)
        compiler.finish()
    assert "skipped 1 file(s)" in caplog.text and "py2.py" in caplog.text
    assert (root / "lib" / "pkg2" / "__pycache__" / f"m1.{TAG}.pyc").is_file()


def test_the_test_suites_of_installed_packages_stay_sources(tmp_path: Path) -> None:
    """pandas/tests and the like are shipped but not compiled; a "test" module and the stdlib's test dirs are."""
    root = tmp_path / "r"
    files = {
        "lib/python3.x/site-packages/pkg/__init__.py": True,
        "lib/python3.x/site-packages/pkg/tests/test_a.py": False,
        "lib/python3.x/site-packages/pkg/core/tests/__init__.py": False,
        "lib/python3.x/site-packages/tests/conftest.py": False,
        "lib/python3.x/site-packages/pkg/test/client.py": True,
        "lib/python3.x/site-packages/pkg/testsuite.py": True,
        "local/lib/python3.x/dist-packages/deb/tests/test_b.py": False,
        "lib/python3.x/lib2to3/tests/test_c.py": True,
    }
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    bytecode.byte_compile(PYTHON, [root])
    compiled = {rel: Path(importlib.util.cache_from_source(str(root / rel))).is_file() for rel in files}
    assert compiled == files
    assert not (root / "lib/python3.x/site-packages/pkg/tests/__pycache__").exists()


def test_a_build_that_compiles_nothing_starts_no_process(tmp_path: Path) -> None:
    class NoProcess:
        def run(self, argv: Sequence[str], **_kw: object) -> Completed:
            raise AssertionError(f"ran {argv}")

        def start(self, argv: Sequence[str], *, env_extra: Mapping[str, str | None] | None = None, on_line: OnLine | None = None) -> Stream:
            raise AssertionError(f"started {argv}")

    with bytecode.Compiler(PYTHON, runner=NoProcess()) as compiler:
        compiler.finish()


def test_a_runner_that_cannot_stream_gets_every_root_in_one_run(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    class Batch:
        def run(self, argv: Sequence[str], **_kw: object) -> Completed:
            calls.append(list(argv))
            return Completed(0, "", "")

    with bytecode.Compiler(PYTHON, runner=Batch()) as compiler:
        compiler.add(tmp_path / "one")
        compiler.add(tmp_path / "two")
        assert calls == []
        compiler.finish()
    (call,) = calls
    assert call[-2:] == [str(tmp_path / "one"), str(tmp_path / "two")]


def test_a_compiler_that_dies_is_one_sentence(tmp_path: Path) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'Fatal Python error: init_fs_encoding' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(RelocateError, match=r"^Byte-compiling the bundle failed \(Fatal Python error: init_fs_encoding\)\.$"), \
            bytecode.Compiler(broken) as compiler:
        for i in range(50):  # it is gone early: writing to it must not raise BrokenPipeError
            compiler.add(tree(tmp_path / str(i), 1))
        compiler.finish()


def test_a_missing_interpreter_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(RelocateError, match="cannot run"), bytecode.Compiler(tmp_path / "nope") as compiler:
        compiler.add(tmp_path)


def test_an_error_while_installing_stops_the_compiler_and_its_workers(tmp_path: Path) -> None:
    import time

    started: list[Stream] = []

    class Recording:
        def run(self, argv: Sequence[str], **kw: object) -> Completed:
            raise AssertionError("not used")

        def start(self, argv: Sequence[str], *, env_extra: Mapping[str, str | None] | None = None, on_line: OnLine | None = None) -> Stream:
            started.append(REAL.start(argv, env_extra=env_extra, on_line=on_line))  # type: ignore[attr-defined]
            return started[-1]

    def children(pid: int) -> list[int]:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    workers: list[int] = []
    with pytest.raises(KeyError), bytecode.Compiler(PYTHON, runner=Recording()) as compiler:
        compiler.add(tree(tmp_path / "r", 2000))  # long enough to be still compiling when the install fails
        pid = started[0]._proc.pid  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while not workers and time.monotonic() < deadline:
            workers = children(pid)
            time.sleep(0.02)
        raise KeyError("an install failed")
    (stream,) = started
    assert stream._proc.returncode is not None  # type: ignore[attr-defined]  # killed and reaped
    assert workers, "compile.py started no pool"
    # ... and so are its pool workers: they would wait forever for work from a parent that is gone.
    deadline = time.monotonic() + 10
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    alive = list(workers)
    while alive and time.monotonic() < deadline:
        alive = [w for w in alive if running(w)]
        time.sleep(0.05)
    assert alive == [], "compile.py's workers outlived it"


def test_compile_py_parses_as_the_oldest_supported_python() -> None:
    # data/compile.py runs inside the bundle's interpreter (any CPython >= 3.8): keep its syntax old.
    spec = importlib.util.find_spec("shipenv.data")
    assert spec is not None and spec.origin is not None
    ast.parse((Path(spec.origin).parent / "compile.py").read_text(), "compile.py", feature_version=(3, 8))


def test_a_root_can_be_waited_for_while_later_ones_compile(tmp_path: Path) -> None:
    first, second = tree(tmp_path / "a", 2), tree(tmp_path / "b", 2)
    with bytecode.Compiler(PYTHON) as compiler:
        compiler.add(first)
        compiler.wait(first)  # compile.py said "=0": every pyc of the first root is written
        assert len(pycs(first)) == 3
        compiler.add(second)
        compiler.wait(second)
        compiler.wait(first)  # again: at once
        compiler.finish()
    assert len(pycs(second)) == 3


def test_a_runner_that_cannot_stream_runs_what_it_has_when_one_is_waited_for(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    class Batch:
        def run(self, argv: Sequence[str], **_kw: object) -> Completed:
            calls.append(list(argv))
            return Completed(0, "", "")

    with bytecode.Compiler(PYTHON, runner=Batch()) as compiler:
        compiler.add(tmp_path / "one")
        compiler.add(tmp_path / "two")
        compiler.wait(tmp_path / "one")
        compiler.add(tmp_path / "three")
        compiler.wait(tmp_path / "two")  # already run with "one"
        compiler.finish()
    first, second = calls
    assert first[-2:] == [str(tmp_path / "one"), str(tmp_path / "two")]
    assert second[-1] == str(tmp_path / "three") and str(tmp_path / "two") not in second


def test_waiting_for_a_compiler_that_dies_is_the_same_sentence(tmp_path: Path) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'Fatal Python error: init_fs_encoding' >&2\nexit 1\n")
    broken.chmod(0o755)
    root = tree(tmp_path / "r", 1)
    with pytest.raises(RelocateError, match=r"^Byte-compiling the bundle failed \(Fatal Python error: init_fs_encoding\)\.$"), \
            bytecode.Compiler(broken) as compiler:
        compiler.add(root)
        compiler.wait(root)


def test_a_thread_waiting_when_the_build_fails_is_woken(tmp_path: Path) -> None:
    import threading

    root = tree(tmp_path / "r", 400)  # long enough to be still compiling when the build fails
    errors: list[BaseException] = []

    def waiter(compiler: bytecode.Compiler) -> None:
        try:
            compiler.wait(root)
        except RelocateError as exc:
            errors.append(exc)

    with pytest.raises(KeyError), bytecode.Compiler(PYTHON) as compiler:
        compiler.add(root)
        thread = threading.Thread(target=waiter, args=(compiler,))
        thread.start()
        raise KeyError("an install failed")
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) <= 1  # woken: with an error, or compiled just before it was stopped
