"""The command line's error paths: one ``error:`` line, a hint where there is one, a non-zero exit.

A user mistake (a bad path, an unknown flag value, a missing bundle, a bad
``--level``, an output that is in the way) must never end in a traceback, and
must leave nothing behind. ``main`` runs in process (``capsys`` holds what it
prints); one test runs the real ``shipenv`` command to see what a user sees.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shipenv import cli
from tests.helpers import REPO, SHIPENV, pyenv_python


def fails(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, list[str]]:
    """Run ``shipenv ARGV``; return the exit code, the single error line and the hint lines."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    assert code != 0, (out, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    hints = [line for line in err.splitlines() if line.startswith("hint:")]
    return code, errors[0], hints


# -- arguments argparse refuses: exit 2, the flag named, the usage line ------------------------------------


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["build", "--format", "zip"], "argument --format: invalid choice: 'zip'"),
        (["build", "--level", "abc"], "argument --level: invalid int value: 'abc'"),
        (["build", "--max-glibc", "two"], "argument --max-glibc: 'two' is not a glibc version such as 2.31"),
        (["build", "--entry", "serve"], "argument --entry: 'serve' is not NAME=module:function"),
        (["build", "--keep-stdlib", "nope"], "argument --keep-stdlib: invalid choice: 'nope'"),
        (["deploy", "app.tar.zst"], "the following arguments are required: --root"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_a_bad_flag_value_is_one_error_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], named: str) -> None:
    code, error, _hints = fails(capsys, *argv)
    assert code == 2
    assert named in error


# -- mistakes the library finds: exit 1 or 2, one sentence ----------------------------------------


def test_a_missing_bundle_for_inspect_and_verify(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for command in ("inspect", "verify"):
        code, error, hints = fails(capsys, command, tmp_path / "nope.tar.zst")
        assert code == 2
        assert error == f"error: {tmp_path / 'nope.tar.zst'} does not exist."
        assert hints == ["hint: Give a bundle archive or an unpacked bundle directory."]


def test_a_file_that_is_not_a_bundle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a bundle\n")
    for argv in (["inspect", notes], ["verify", notes], ["deploy", notes, "--root", tmp_path / "srv"]):
        code, error, hints = fails(capsys, *argv)
        assert code == (3 if argv[0] == "deploy" else 1)  # deploy: a refused archive, as the README's table says
        assert error.startswith(f"error: {notes} is not a bundle archive")
        assert hints == ["hint: Give the archive that shipenv build wrote, or an unpacked bundle directory."]
    assert not (tmp_path / "srv" / "current").exists()


ARCHIVE_HINT = "hint: Give the archive shipenv build wrote (NAME-VERSION.tar.zst, .tar.gz or .tar.xz); an unpacked tree is not deployed."


def test_a_missing_archive_for_deploy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, error, hints = fails(capsys, "deploy", tmp_path / "app-1.0.tar.zst", "--root", tmp_path / "srv")
    assert code == 2
    assert error == f"error: {tmp_path / 'app-1.0.tar.zst'} is not a file."
    assert hints == [ARCHIVE_HINT]
    assert not (tmp_path / "srv" / "releases").exists()


def test_a_directory_given_to_deploy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "app-1.0").mkdir()
    code, error, hints = fails(capsys, "deploy", tmp_path / "app-1.0", "--root", tmp_path / "srv")
    assert (code, error, hints) == (2, f"error: {tmp_path / 'app-1.0'} is a directory, not a bundle archive.", [ARCHIVE_HINT])
    done = subprocess.run(["dash", str(REPO / "templates" / "deploy.sh"), "deploy", str(tmp_path / "app-1.0"), str(tmp_path / "srv")],
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (2, f"{error}\n")  # deploy.sh: the same sentence (it prints no hints for usage)
    assert not (tmp_path / "srv").exists()


def test_rollback_and_modulefile_on_a_root_with_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, error, hints = fails(capsys, "rollback", "--root", tmp_path)
    assert code == 1 and f"{tmp_path} holds no releases" in error
    assert hints == [f"hint: Deploy one first: shipenv deploy ARCHIVE --root {tmp_path}"]
    code, error, hints = fails(capsys, "modulefile", "--root", tmp_path)
    assert code == 2 and "is neither a deploy root" in error
    assert hints == ["hint: Give the --root of shipenv deploy, or an unpacked bundle directory."]


def test_keep_zero_for_prune_and_deploy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "app-1.0.tar.gz").write_bytes(b"")
    for argv in (["prune", "--root", tmp_path, "--keep", "0"], ["deploy", tmp_path / "app-1.0.tar.gz", "--root", tmp_path / "srv", "--keep", "0"]):
        code, error, hints = fails(capsys, *argv)
        assert code == 2
        assert error == "error: --keep 0: keep at least 1 release (the current one)."
        assert hints == ["hint: --keep N keeps the N most recently current releases (1 or more), and always the current one and where rollback goes."]
    assert not (tmp_path / "srv").exists()


def test_a_project_that_is_not_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, error, hints = fails(capsys, "build", tmp_path / "nowhere", "-o", tmp_path / "out")
    assert code == 2
    assert error == f"error: The project {tmp_path / 'nowhere'} is not a directory."
    assert hints == ["hint: Give a directory holding a pyproject.toml."]
    assert not (tmp_path / "out").exists()


def test_missing_requirements_file_and_venv(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    python = pyenv_python("3.12")
    code, error, _hints = fails(capsys, "build", "-r", tmp_path / "req.txt", "--python", python, "--name", "a", "--version", "1",
                                "-o", tmp_path / "out")
    assert code == 2 and error == f"error: The requirements file {tmp_path / 'req.txt'} does not exist."
    assert _hints == ["hint: Check the path given to -r/-c (relative to the current directory) or to requirement/constraint in [tool.shipenv]."]
    code, error, _hints = fails(capsys, "build", "--venv", tmp_path, "--name", "a", "--version", "1", "-o", tmp_path / "out")
    assert code == 2 and error == f"error: --venv {tmp_path} is not a virtual environment (it has no pyvenv.cfg)."
    assert _hints == ["hint: Give the directory that python -m venv (or uv venv) made, the one holding pyvenv.cfg."]
    assert not (tmp_path / "out").exists()


LEVELS = "hint: Levels by format: tar.zst 1-22, tar.gz 1-9, tar.xz 0-9; leave --level out for the default"


@pytest.mark.parametrize(
    ("flags", "message", "hint"),
    [
        (["--level", "99"], "error: --level 99 is out of range for tar.zst (1-22).", f"{LEVELS} (3)."),
        (["--format", "tar.gz", "--level", "0"], "error: --level 0 is out of range for tar.gz (1-9).", f"{LEVELS} (5)."),
        (["--threads", "-3"], "error: --threads -3 is negative; use 0 for all cores or a positive count.", "hint: Leave --threads out to use every core."),
    ],
)
def test_a_bad_level_or_thread_count(capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], message: str, hint: str) -> None:
    code, error, hints = fails(capsys, "build", "--python", pyenv_python("3.12"), "--name", "a", "--version", "1",
                               "-o", tmp_path / "out", *flags)
    assert code == 2 and error == message and hints == [hint]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_output_below_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``-o /etc/passwd/x``: one sentence before anything is built, not a NotADirectoryError."""
    blocker = tmp_path / "passwd"
    blocker.write_text("root:x:0:0::/root:/bin/sh\n")
    for fmt in ("dir", "tar.gz"):
        code, error, hints = fails(capsys, "build", "--python", pyenv_python("3.12"), "--name", "a", "--version", "1",
                                   "--format", fmt, "-o", blocker / "x")
        artifact = blocker / "x" / ("a-1" if fmt == "dir" else "a-1.tar.gz")
        assert (code, error) == (2, f"error: {blocker} is not a directory, so the output {artifact} cannot be made below it.")
        assert hints == ["hint: Choose another -o: a directory, or a file name ending in .tar.zst, .tar.gz or .tar.xz."]
    assert blocker.read_text() == "root:x:0:0::/root:/bin/sh\n"


@pytest.mark.parametrize(
    ("argv", "error", "hint"),
    [
        (["build", "--frob"], "error: unrecognized arguments: --frob.", "hint: See 'shipenv build --help' for what it takes."),
        (["deploy"], "error: the following arguments are required: archive, --root.", "hint: See 'shipenv deploy --help' for what it takes."),
        (["prune", "--root", "/srv/app", "--keep"], "error: argument --keep: expected one argument.",
         "hint: See 'shipenv prune --help' for what it takes."),
        (["frobnicate"], "error: argument COMMAND: invalid choice: 'frobnicate' (choose from 'build', 'inspect', 'verify', 'deploy', "
         "'rollback', 'releases', 'prune', 'cache', 'trust', 'modulefile').", "hint: See 'shipenv --help' for what it takes."),
        ([], "error: the following arguments are required: COMMAND.", "hint: See 'shipenv --help' for what it takes."),
    ],
)
def test_argparse_errors_in_the_house_format(capsys: pytest.CaptureFixture[str], argv: list[str], error: str, hint: str) -> None:
    """What argparse refuses is one sentence and a hint naming the command's --help, exit 2, no usage block."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{error}\n{hint}\n")


def test_a_python_that_does_not_exist(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _code, error, _hints = fails(capsys, "build", "--python", tmp_path / "python3.12", "--format", "dir", "-o", tmp_path / "out")
    assert f"{tmp_path / 'python3.12'} does not exist" in error


def test_an_output_in_the_way_is_left_alone(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "a-1").mkdir(parents=True)
    (out / "a-1" / "keep.txt").write_text("precious")
    _code, error, _hints = fails(capsys, "build", "--python", pyenv_python("3.12"), "--name", "a", "--version", "1",
                                 "--format", "dir", "-o", out)
    assert "exists and is not empty" in error
    assert (out / "a-1" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["a-1"]


def test_what_a_user_sees_from_the_real_command(tmp_path: Path) -> None:
    done = subprocess.run([*SHIPENV, "inspect", str(tmp_path / "gone.tar.zst")], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (f"error: {tmp_path / 'gone.tar.zst'} does not exist.\n"
                           "hint: Give a bundle archive or an unpacked bundle directory.\n")
