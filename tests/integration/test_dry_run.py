"""``shipenv build --dry-run`` prints the plan of a real build and writes nothing."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import pyenv_python, run_shipenv


def test_dry_run_prints_the_plan_of_a_real_build_and_writes_nothing(tmp_path: Path, py312_tree: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    proc = run_shipenv(
        "build", "--dry-run", "--python", pyenv_python("3.12"), "-r", requirements, "--entry", "hi=six:print_",
        "--name", "hello", "--version", "1.0", "-o", "out/", "--cache-dir", "cache", cwd=work,
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == "Plan for hello-1.0 (tar.zst) at out/hello-1.0.tar.zst; nothing was written."
    assert "wheel     six==1.16.0" in lines
    assert {"launcher  bin/python", "launcher  bin/python3", "launcher  bin/hi"} <= set(lines)
    assert any(line.startswith("rpath     bin/python3.12: ") and line.endswith(" -> $ORIGIN/../lib") for line in lines)
    # The same libraries a real build of that interpreter vendors into lib/.
    planned = {line.split()[1] for line in lines if line.startswith("vendor ")}
    built = {f"lib/{p.name}" for p in (py312_tree / "lib").iterdir() if p.is_file() and p.name.startswith("lib")}
    assert planned == built
    assert "lib/libpython3.12.so.1.0" in planned
    assert list(work.iterdir()) == []  # no output, no staging directory, no cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requirements.txt", "work"]
