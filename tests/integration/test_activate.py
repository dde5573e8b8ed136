"""``bin/activate*`` in real shells, from a moved bundle reached through a symlink.

Every shell runs a driver script that prints ``@key=value`` lines before
activation, while active and after ``deactivate``; the tests compare them.
A user would notice each of these: ``python`` or an app command that is not
the bundle's, a PATH or prompt that ``deactivate`` does not give back, or an
``activate`` that silently does nothing. The interactive tests drive each shell
through a pseudo-terminal and read the prompt it really prints.

Needs the Debian packages bash, dash, zsh, ksh (ksh93), fish, csh (BSD csh)
and tcsh; a missing shell fails the test with that hint, never skips it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shlex
import shutil
import subprocess
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, BuildFn, pyenv_python

NAME = "hello-1.0"
SH_SHELLS = ("bash", "zsh", "ksh")
SHELLS = (*SH_SHELLS, "fish", "csh", "tcsh")
SCRIPT = {"bash": "activate", "zsh": "activate", "ksh": "activate", "fish": "activate.fish", "csh": "activate.csh", "tcsh": "activate.csh"}
RUN = {
    "bash": ["bash", "--norc", "--noprofile"],
    "zsh": ["zsh", "-f"],
    "ksh": ["ksh"],
    "fish": ["fish", "--no-config"],
    "csh": ["csh", "-f"],
    "tcsh": ["tcsh", "-f"],
    "dash": ["dash"],
}
PACKAGES = "apt-get install -y bash dash zsh ksh fish csh tcsh"


def need(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is not installed; run ci/setup.sh or `{PACKAGES}`.")


@dataclass(frozen=True)
class Places:
    root: Path  # the moved bundle, physical path (with a space)
    link: Path  # a symlink to it (with a space)
    linked_files: Path  # a directory of symlinks to its bin/activate* files
    host_bin: Path  # first on PATH before activation: a fake host `python`
    home: Path


@pytest.fixture(scope="module")
def bundle(built_bundle: BuildFn) -> Path:
    """An interpreter bundle with one console script, built once per run."""
    tree = built_bundle(
        "py312-entry-dir", "--python", pyenv_python("3.12"), "--name", "hello", "--version", "1.0", "--format", "dir",
        "--entry", "hello-json=json.tool:main",
    )
    for name in ("activate", "activate.fish", "activate.csh"):
        shipped = tree / "bin" / name
        assert shipped.is_file(), f"the build did not put bin/{name} into the bundle"
        assert shipped.read_bytes() == (REPO / "templates" / name).read_bytes(), f"bin/{name} is not templates/{name} verbatim"
    return tree


@pytest.fixture(scope="module")
def places(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Places:
    """The bundle copied to a path with a space (once: the tests only read it)."""
    base = tmp_path_factory.mktemp("activate")
    root = base / "moved here" / bundle.name
    root.parent.mkdir()
    shutil.copytree(bundle, root, symlinks=True)
    link = base / "link to app"
    link.symlink_to(root)
    linked_files = base / "linked files"
    linked_files.mkdir()
    for name in ("activate", "activate.fish", "activate.csh"):
        (linked_files / name).symlink_to(root / "bin" / name)
    host_bin = base / "host bin"
    host_bin.mkdir()
    fake = host_bin / "python"
    fake.write_text("#!/bin/sh\necho host python\n")
    fake.chmod(0o755)
    home = base / "home"
    home.mkdir()
    return Places(root.resolve(), link, linked_files, host_bin, home)


def environment(places: Places, **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{places.host_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(places.home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PYTHONHOME": "/nonexistent/host python home",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra)
    return env


# --- drivers ---------------------------------------------------------------


def quote(shell: str, text: str | Path) -> str:
    text = str(text)
    if shell == "fish":
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if shell in ("csh", "tcsh"):
        assert not set(text) & set('"`$!\n'), f"csh cannot double-quote {text!r}"
        return f'"{text}"'
    return shlex.quote(text)


def sh_driver(src: str, *, prompt: str | None = "me@host:~$ ", times: int = 1, setup: str = "") -> str:
    report = (
        "printf '@%s=%s\\n' {0}_path \"$PATH\" {0}_prompt \"${{PS1-<unset>}}\" "
        "{0}_pythonhome \"${{PYTHONHOME-<unset>}}\" {0}_bundle \"${{SHIPENV_BUNDLE-<unset>}}\""
    )
    lines = [setup]
    if prompt is None:
        lines.append("unset PS1")
    else:
        lines.append(f"PS1={shlex.quote(prompt)}")
    lines += ["python >/dev/null 2>&1", report.format("before")]
    for i in range(times):
        lines += [f". {src}", f"printf '@activate_rc{i}=%s\\n' \"$?\""]
    lines += [
        report.format("during"),
        "printf '@which_python=%s\\n' \"$(command -v python)\"",
        "printf '@which_script=%s\\n' \"$(command -v hello-json)\"",
        "printf '@prefix=%s\\n' \"$(python -c 'import sys; print(sys.prefix)')\"",
        "printf '@script_out='; echo '{\"a\": 1}' | hello-json --compact",
        "deactivate",
        "printf '@deactivate_rc=%s\\n' \"$?\"",
        report.format("after"),
        "printf '@after_python=%s\\n' \"$(python)\"",
        "if type deactivate >/dev/null 2>&1; then echo @after_deactivate=defined; else echo @after_deactivate=gone; fi",
        "printf '@leftovers=%s\\n' \"$(set | grep -c '^_shipenv')\"",
    ]
    return "\n".join(lines) + "\n"


def fish_driver(src: str, *, times: int = 1, setup: str = "") -> str:
    report = (
        "printf '@%s=%s\\n' {0}_path (string join : $PATH) "
        "{0}_prompt (string escape -- (fish_prompt | string collect)) "
        "{0}_prompt_function (string escape -- (functions fish_prompt | string collect)) "
        "{0}_pythonhome (v PYTHONHOME) {0}_bundle (v SHIPENV_BUNDLE)"
    )
    lines = [
        setup,
        "function v; if set -q $argv[1]; string join : $$argv[1]; else; echo '<unset>'; end; end",
        "python >/dev/null 2>&1",
        report.format("before"),
    ]
    for i in range(times):
        lines += [f"source {src}", f"printf '@activate_rc{i}=%s\\n' $status"]
    lines += [
        report.format("during"),
        "printf '@which_python=%s\\n' (command -v python)",
        "printf '@which_script=%s\\n' (command -v hello-json)",
        "printf '@prefix=%s\\n' (python -c 'import sys; print(sys.prefix)')",
        "printf '@script_out='; echo '{\"a\": 1}' | hello-json --compact",
        "deactivate",
        "printf '@deactivate_rc=%s\\n' $status",
        report.format("after"),
        "printf '@after_python=%s\\n' (python)",
        "if functions -q deactivate; echo @after_deactivate=defined; else; echo @after_deactivate=gone; end",
        "printf '@leftovers=%s\\n' (count (set -n | string match '_shipenv*') (functions -a | string match '_shipenv*'))",
    ]
    return "\n".join(lines) + "\n"


def csh_driver(src: str, *, prompt: str | None = "%n@%m:%~%# ", times: int = 1, setup: str = "") -> str:
    def report(when: str) -> list[str]:
        out = [f"printf '@%s=%s\\n' {when}_path \"$PATH\""]
        for var, name in (("prompt", "prompt"), ("PYTHONHOME", "pythonhome"), ("SHIPENV_BUNDLE", "bundle")):
            out += [
                f"if ($?{var}) then",
                f"    printf '@%s=%s\\n' {when}_{name} \"${var}\"",
                "else",
                f"    printf '@%s=%s\\n' {when}_{name} '<unset>'",
                "endif",
            ]
        return out

    lines = [setup]
    if prompt is not None:
        lines.append(f'set prompt = "{prompt}"')
    lines += ["python >& /dev/null", *report("before")]
    lines += [f"source {src}"] * times
    lines += [
        *report("during"),
        "printf '@which_python=%s\\n' \"`which python`\"",
        "printf '@which_script=%s\\n' \"`which hello-json`\"",
        "printf '@prefix=%s\\n' \"`python -c 'import sys; print(sys.prefix)'`\"",
        "printf '@script_out='; echo '{\"a\": 1}' | hello-json --compact",
        "deactivate",
        *report("after"),
        "printf '@after_python=%s\\n' \"`python`\"",
        "printf '@after_deactivate_alias=%s\\n' \"`alias deactivate`\"",
        "printf '@leftovers=%s\\n' \"`set | grep -c '^_shipenv'`\"",
    ]
    return "\n".join(lines) + "\n"


def run_driver(shell: str, text: str, env: dict[str, str], cwd: Path, tmp_path: Path) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
    need(shell)
    script = tmp_path / f"driver.{shell}"
    script.write_text(text)
    proc = subprocess.run([*RUN[shell], str(script)], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False)
    values: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("@") and "=" in line:
            key, _, value = line[1:].partition("=")
            values[key] = value
    return values, proc


def fish_unescape(text: str) -> str:
    """`string escape` output back to the string (fish itself does it)."""
    return subprocess.run(["fish", "--no-config", "-c", "string unescape -- $argv[1]", text], capture_output=True, text=True, check=True).stdout.removesuffix("\n")


def driver(shell: str, src: str, *, times: int = 1) -> str:
    """The round-trip driver for ``shell``, sourcing ``src`` (already quoted) ``times`` times."""
    if shell == "fish":
        return fish_driver(src, times=times)
    if shell in ("csh", "tcsh"):
        return csh_driver(src, times=times)
    return sh_driver(src, times=times)


def strip_ksh_quotes(text: str) -> str:
    """ksh93's `command -v` quotes a path with a space."""
    return text[1:-1] if text.startswith("'") and text.endswith("'") else text


def check_round_trip(shell: str, v: dict[str, str], proc: subprocess.CompletedProcess[str], root: Path, *, prompt_changed: bool = True) -> None:
    where = f"{shell} driver\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "after_leftovers" not in v and "leftovers" in v, where
    if shell != "csh" and shell != "tcsh":
        assert {v[k] for k in v if k.startswith("activate_rc")} == {"0"}, where
        assert v["deactivate_rc"] == "0", where
    # While active: the bundle first on PATH, its python and app commands.
    assert v["during_path"] == f"{root}/bin:{v['before_path']}", where
    assert v["during_bundle"] == str(root), where
    assert v["during_pythonhome"] == "<unset>", where
    assert strip_ksh_quotes(v["which_python"]) == f"{root}/bin/python", where
    assert strip_ksh_quotes(v["which_script"]) == f"{root}/bin/hello-json", where
    assert v["prefix"] == str(root), where
    assert v["script_out"] == '{"a":1}', where
    if shell == "fish":
        before, during = fish_unescape(v["before_prompt"]), fish_unescape(v["during_prompt"])
        assert during == (f"({NAME}) {before}" if prompt_changed else before), where
    else:
        before = v["before_prompt"].replace("<unset>", "")
        assert v["during_prompt"] == (f"({NAME}) {before}" if prompt_changed else v["before_prompt"]), where
    # After deactivate: everything as it was, nothing of ours left.
    for key in ("path", "prompt", "pythonhome"):
        assert v[f"after_{key}"] == v[f"before_{key}"], f"{key} not restored; {where}"
    if shell == "fish":
        assert v["after_prompt_function"] == v["before_prompt_function"], where
    assert v["after_bundle"] == "<unset>", where
    assert v["after_python"] == "host python", where
    if shell in ("csh", "tcsh"):
        assert v["after_deactivate_alias"] == "", where
    else:
        assert v["after_deactivate"] == "gone", where
    assert v["leftovers"] == "0", where
    assert proc.stderr == "", where


# --- the round trip, in every shell and every way of reaching the file ------

HOW = ("through a symlinked bundle", "relative from the bundle", "through ..", "through a symlinked file")


def source_path(places: Places, shell: str, how: str) -> tuple[str, Path]:
    """(path to source, working directory)."""
    name = SCRIPT[shell]
    if how == "through a symlinked bundle":
        return str(places.link / "bin" / name), places.home
    if how == "relative from the bundle":
        return f"bin/{name}", places.link
    if how == "through ..":
        return str(places.link / "lib" / ".." / "bin" / name), places.home
    return str(places.linked_files / name), places.home


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("shell", SHELLS)
def test_activate_then_deactivate(shell: str, how: str, places: Places, tmp_path: Path) -> None:
    src, cwd = source_path(places, shell, how)
    v, proc = run_driver(shell, driver(shell, quote(shell, src)), environment(places), cwd, tmp_path)
    check_round_trip(shell, v, proc, places.root)


@pytest.mark.parametrize("shell", SHELLS)
def test_activating_twice_then_deactivating_once_restores_everything(shell: str, places: Places, tmp_path: Path) -> None:
    src = quote(shell, places.link / "bin" / SCRIPT[shell])
    v, proc = run_driver(shell, driver(shell, src, times=2), environment(places), places.home, tmp_path)
    check_round_trip(shell, v, proc, places.root)


@pytest.mark.parametrize("shell", SHELLS)
def test_disabled_prompt_is_left_alone(shell: str, places: Places, tmp_path: Path) -> None:
    src = quote(shell, places.link / "bin" / SCRIPT[shell])
    env = environment(places, SHIPENV_DISABLE_PROMPT="1")
    v, proc = run_driver(shell, driver(shell, src), env, places.home, tmp_path)
    check_round_trip(shell, v, proc, places.root, prompt_changed=False)


@pytest.mark.parametrize("shell", ("bash", "zsh"))
def test_strict_mode_and_no_prompt_at_all(shell: str, places: Places, tmp_path: Path) -> None:
    """`set -eu` users, and scripts without a PS1: PS1 is unset again afterwards."""
    src = quote(shell, places.link / "bin" / "activate")
    env = environment(places)
    del env["PYTHONHOME"]
    v, proc = run_driver(shell, sh_driver(src, prompt=None, setup="set -eu"), env, places.home, tmp_path)
    if shell == "bash":  # zsh always has a PS1
        assert v["before_prompt"] == "<unset>", proc.stdout
    check_round_trip(shell, v, proc, places.root)


def test_csh_without_a_prompt_gets_none(places: Places, tmp_path: Path) -> None:
    """A non-interactive csh has no $prompt; setting one would make scripts think they are interactive."""
    src = quote("tcsh", places.link / "bin" / "activate.csh")
    v, proc = run_driver("tcsh", csh_driver(src, prompt=None), environment(places), places.home, tmp_path)
    assert v["before_prompt"] == v["during_prompt"] == v["after_prompt"] == "<unset>", proc.stdout
    assert v["during_path"] == f"{places.root}/bin:{v['before_path']}", proc.stdout


@pytest.mark.parametrize("shell", ("csh", "tcsh"))
def test_csh_prompt_on_two_lines_comes_back(shell: str, places: Places, tmp_path: Path) -> None:
    """A csh prompt with a newline in it breaks "$prompt" quoting; it must survive the round trip."""
    src = quote(shell, places.link / "bin" / "activate.csh")
    text = (
        'set prompt = "top %~\\\n%# "\n'
        "set before = $prompt:q\n"
        f"source {src}\n"
        'if ("$SHIPENV_BUNDLE" != "") echo active\n'
        'if ($prompt:q == "(hello-1.0) "$before:q) echo prefixed\n'
        "deactivate\n"
        "if ($prompt:q == $before:q) echo restored\n"
    )
    need(shell)
    script = tmp_path / "driver.csh"
    script.write_text(text)
    proc = subprocess.run([*RUN[shell], str(script)], capture_output=True, text=True, env=environment(places), timeout=60, check=False)
    assert proc.stdout.split() == ["active", "prefixed", "restored"], proc.stdout + proc.stderr


@pytest.mark.parametrize("shell", ("bash", "fish", "tcsh"))
def test_deactivate_nondestructive_restores_but_stays(shell: str, places: Places, tmp_path: Path) -> None:
    src = quote(shell, places.link / "bin" / SCRIPT[shell])
    text = driver(shell, src).replace("\ndeactivate\n", "\ndeactivate nondestructive\n")
    v, proc = run_driver(shell, text, environment(places), places.home, tmp_path)
    assert v["after_path"] == v["before_path"], proc.stdout
    assert v["after_prompt"] == v["before_prompt"], proc.stdout
    assert v["after_bundle"] == "<unset>", proc.stdout
    if shell == "tcsh":
        assert v["after_deactivate_alias"].startswith("test "), proc.stdout
    else:
        assert v["after_deactivate"] == "defined", proc.stdout


def test_an_active_venv_is_left_first(places: Places, tmp_path: Path) -> None:
    """Otherwise our deactivate would replace the venv's, and the venv could not be left."""
    venv = tmp_path / "a venv"
    subprocess.run([str(pyenv_python("3.12")), "-m", "venv", "--without-pip", str(venv)], check=True)
    setup = f". {shlex.quote(str(venv / 'bin' / 'activate'))}\nprintf '@venv_path=%s\\n' \"$PATH\""
    text = sh_driver(shlex.quote(str(places.link / "bin" / "activate")), setup=setup)
    text = text.replace("deactivate\n", "printf '@during_venv=%s\\n' \"${VIRTUAL_ENV-<unset>}\"\ndeactivate\n", 1)
    v, proc = run_driver("bash", text, environment(places), places.home, tmp_path)
    assert v["venv_path"].startswith(f"{venv}/bin:"), proc.stdout
    assert v["during_venv"] == "<unset>", proc.stdout
    assert v["during_path"] == f"{places.root}/bin:{places.host_bin}:/usr/local/bin:/usr/bin:/bin", proc.stdout
    assert v["after_path"] == f"{places.host_bin}:/usr/local/bin:/usr/bin:/bin", proc.stdout
    assert v["after_deactivate"] == "gone", proc.stdout


# --- refusing clearly ---------------------------------------------------------


@pytest.mark.parametrize("shell", ("dash", "sh"))
def test_plain_sh_says_it_cannot_and_changes_nothing(shell: str, places: Places, tmp_path: Path) -> None:
    need(shell)
    text = (
        "PS1='$ '\nbefore=$PATH\n"
        f". {shlex.quote(str(places.link / 'bin' / 'activate'))}\n"
        "echo \"rc=$?\"\n"
        "[ \"$PATH\" = \"$before\" ] && echo path-unchanged\n"
        "[ \"$PS1\" = '$ ' ] && echo prompt-unchanged\n"
        "echo \"bundle=${SHIPENV_BUNDLE-<unset>}\"\n"
        "type deactivate >/dev/null 2>&1 || echo no-deactivate\n"
    )
    script = tmp_path / "driver.sh"
    script.write_text(text)
    proc = subprocess.run([shell, str(script)], capture_output=True, text=True, env=environment(places), timeout=60, check=False)
    assert proc.stdout.split() == ["rc=1", "path-unchanged", "prompt-unchanged", "bundle=<unset>", "no-deactivate"], proc.stdout + proc.stderr
    assert "activate: cannot find its own location in this shell; source it from bash, zsh or ksh93" in proc.stderr
    assert "run the bundle's bin/ commands directly" in proc.stderr


@pytest.mark.parametrize("shell", ("bash", "zsh"))
def test_running_instead_of_sourcing_says_so(shell: str, places: Places) -> None:
    need(shell)
    proc = subprocess.run([shell, str(places.link / "bin" / "activate")], capture_output=True, text=True, env=environment(places), timeout=60, check=False)
    assert proc.returncode == 1
    assert "activate: source this file to change your shell: . " in proc.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_outside_a_bundle_it_refuses(shell: str, places: Places, tmp_path: Path) -> None:
    """An activate script copied out of its bundle must not put a random bin/ on PATH."""
    stray = tmp_path / "not a bundle" / "bin"
    stray.mkdir(parents=True)
    shutil.copy(places.root / "bin" / SCRIPT[shell], stray)
    src = quote(shell, stray / SCRIPT[shell])
    if shell == "fish":
        text = f"set before $PATH\nsource {src}\necho rc=$status\ntest (string join : $before) = (string join : $PATH); and echo path-unchanged\nfunctions -q deactivate; or echo no-deactivate\n"
    elif shell in ("csh", "tcsh"):
        text = f'set before = "$PATH"\nsource {src}\nif ("$before" == "$PATH") echo path-unchanged\nif ("`alias deactivate`" == "") echo no-deactivate\n'
    else:
        text = f"before=$PATH\n. {src}\necho rc=$?\n[ \"$before\" = \"$PATH\" ] && echo path-unchanged\ntype deactivate >/dev/null 2>&1 || echo no-deactivate\n"
    need(shell)
    script = tmp_path / "driver"
    script.write_text(text)
    proc = subprocess.run([*RUN[shell], str(script)], capture_output=True, text=True, env=environment(places), timeout=60, check=False)
    expected = ["path-unchanged", "no-deactivate"] if shell in ("csh", "tcsh") else ["rc=1", "path-unchanged", "no-deactivate"]
    assert proc.stdout.split() == expected, proc.stdout + proc.stderr
    assert "no .shipenv/manifest.json" in proc.stderr


# --- the name in the prompt -----------------------------------------------------


@pytest.fixture(scope="module")
def odd_places(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The bundle in a directory whose name a prompt would expand: (tame symlink, physical root)."""
    base = tmp_path_factory.mktemp("odd")
    root = base / "app `touch ran-backtick` $(touch ran-dollar) %n !-1.0"
    shutil.copytree(bundle, root, symlinks=True)
    link = base / "tame"
    link.symlink_to(root)
    return link, root


ODD_LABEL = "(app _touch ran-backtick_ _(touch ran-dollar) _n _-1.0) "


@pytest.mark.parametrize("shell", SHELLS)
def test_prompt_shows_the_name_without_letting_it_run(shell: str, odd_places: tuple[Path, Path], places: Places, tmp_path: Path) -> None:
    link, root = odd_places
    src = quote(shell, link / "bin" / SCRIPT[shell])
    text = driver(shell, src)
    if shell == "bash":  # render PS1 as an interactive bash would, $(...) and all
        text = text.replace("\ndeactivate\n", "\nshopt -s promptvars\nprintf '@rendered=%s\\n' \"${PS1@P}\"\ndeactivate\n")
    v, proc = run_driver(shell, text, environment(places), tmp_path, tmp_path)
    assert v["during_bundle"] == str(root), proc.stdout + proc.stderr
    prompt = fish_unescape(v["during_prompt"]) if shell == "fish" else v["during_prompt"]
    assert prompt.startswith(ODD_LABEL), prompt
    if shell == "bash":
        assert v["rendered"] == f"{ODD_LABEL}me@host:~$ ", v["rendered"]
    assert not list(tmp_path.glob("ran-*")), "the directory name was run as a command"
    assert v["after_prompt"] == v["before_prompt"]


# --- interactive shells on a terminal -----------------------------------------


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def interact(argv: Sequence[str], lines: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 30.0) -> list[str]:
    """Type each line into the shell on a terminal; return what it printed, split after each line's output.

    After each line an ``echo @@DONE""N@@`` marks the end of its output (the
    terminal echoes the typed ``""``, only the shell's output has it joined);
    the prompt printed before the next line falls into the piece that follows.
    """
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, preexec_fn=_controlling_terminal, close_fds=True)
    os.close(slave)
    buf = b""

    def read_until(marker: bytes) -> bytes:
        nonlocal buf
        deadline = time.monotonic() + timeout
        while marker not in buf:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            try:
                chunk = os.read(master, 65536) if ready else b""
            except OSError:  # the shell closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"{argv[0]}: no {marker.decode()} within {timeout}s; it printed:\n{buf.decode(errors='replace')}")
            buf += chunk
        head, _, buf = buf.partition(marker)
        return head

    pieces = []
    try:
        for n, line in enumerate(lines):
            os.write(master, f'{line}\necho @@DONE""{n}@@\n'.encode())
            pieces.append(read_until(f"@@DONE{n}@@".encode()).decode(errors="replace"))
        os.write(master, f'echo @@DONE""{len(lines)}@@\n'.encode())
        pieces.append(read_until(f"@@DONE{len(lines)}@@".encode()).decode(errors="replace"))
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    return pieces


INTERACTIVE = {
    "bash": ["bash", "--norc", "--noprofile", "-i"],
    "zsh": ["zsh", "-f", "-i"],
    "ksh": ["ksh", "-i"],
    "fish": ["fish", "--no-config", "-i"],
    "csh": ["csh", "-i"],  # with Debian's /etc/csh.cshrc, as a user gets it
    "tcsh": ["tcsh", "-i"],
}


@pytest.mark.parametrize("shell", SHELLS)
def test_interactive_prompt_and_commands(shell: str, places: Places) -> None:
    need(shell)
    source = "source" if shell in ("fish", "csh", "tcsh") else "."
    src = quote(shell, places.link / "bin" / SCRIPT[shell])
    lines = ["python", f"{source} {src}", "python -c 'import sys; print(sys.prefix)'", "deactivate", "python"]
    env = environment(places, PS1="me@host$ ") if shell in SH_SHELLS else environment(places)
    pieces = interact(INTERACTIVE[shell], lines, env, places.home)
    where = f"{shell} printed:\n" + "\n----\n".join(map(repr, pieces))
    assert "host python" in pieces[0], where
    # The prompt printed after `activate` and the one after the next command.
    assert f"({NAME}) " in pieces[2], where
    assert str(places.root) in pieces[2], where
    assert "host python" not in pieces[2], where
    # Once deactivated the prompt has no prefix, and python is the host's again.
    assert f"({NAME})" not in pieces[4] + pieces[5], where
    assert "host python" in pieces[4], where
