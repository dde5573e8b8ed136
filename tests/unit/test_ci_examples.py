"""examples/ci: the GitHub Actions and GitLab CI files users copy.

They cannot run here, so what can be checked is checked: they are valid YAML
of the shape each CI expects, they run on tags only, every ``shipenv``
command in them is accepted by shipenv's own argument parser, the build signs
with the key from the CI's secret store and writes ``app-<version>.tar.zst``,
its ``.sha256``, ``.sig`` and ``.cdx.json`` where the artifact upload looks, the
signature is verified against the allowed signers servers trust, and the
directories cached are the ones pip and ``--cache-dir`` use.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipenv.cli import _parser
from tests.helpers import REPO

CI = REPO / "examples" / "ci"
GITHUB = CI / "github-actions.yml"
GITLAB = CI / "gitlab-ci.yml"

#: Shell operators that end one command and start the next on a line.
_SEPARATORS = {"&&", "||", ";", "|"}


def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def commands(script: str) -> Iterator[list[str]]:
    """Simple commands of a shell script: continuations joined, comments and operators split off."""
    for line in script.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = ""  # a shell comment starts a word, not anywhere in one (tar.gz#env)
        current: list[str] = []
        for word in lexer:
            if word.startswith("#"):
                break
            if word in _SEPARATORS or word in ("(", ")"):
                if current:
                    yield current
                current = []
            else:
                current.append(word)
        if current:
            yield current


def shipenv_commands(scripts: list[str]) -> list[list[str]]:
    found = [argv for script in scripts for argv in commands(script) if argv[0] == "shipenv"]
    assert found, "no shipenv command found"
    return found


def github_scripts(data: dict[Any, Any]) -> list[str]:
    return [step["run"] for job in data["jobs"].values() for step in job["steps"] if "run" in step]


def gitlab_scripts(data: dict[Any, Any]) -> list[str]:
    scripts = []
    for name, job in data.items():
        if name in ("stages", "variables", "default", "workflow", "include") or not isinstance(job, dict):
            continue
        for key in ("before_script", "script", "after_script"):
            scripts += job.get(key, [])
    return scripts


def parse(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    """Parse ``shipenv ARGS`` with the real parser; any rejected option fails the test."""
    try:
        return _parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"shipenv rejects `{shlex.join(argv)}`:\n{capsys.readouterr().err}")


def build_outputs(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The artifact a `shipenv build` line writes, as a glob over its version placeholder."""
    args = parse(argv, capsys)
    assert args.command == "build"
    assert args.name == "app"
    assert args.fmt in (None, "tar.zst"), "the examples promise .tar.zst"
    assert str(args.output).rstrip("/") == "dist"
    assert args.bundle_version.startswith("$"), "the version comes from the tag"
    assert str(args.sign_key) == "$SHIPENV_SIGNING_KEY", "the build signs with the key from the secret store"
    return f"dist/{args.name}-*.tar.zst"


PUBLISHED = ("", ".sha256", ".sig", ".cdx.json")


def check_verify(found: list[list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    (verify,) = [argv for argv in found if argv[1] == "verify"]
    assert str(parse(verify, capsys).allowed_signers) == "allowed_signers", "the signature is checked as servers will"


# --------------------------------------------------------------------------- GitHub Actions


def test_github_workflow_runs_on_tags_only() -> None:
    data = load(GITHUB)
    # YAML 1.1 reads the bare key `on` as True; GitHub reads it as "on".
    trigger = data.get("on", data.get(True))
    assert trigger == {"push": {"tags": ["v*"]}}
    assert set(data["jobs"]) == {"bundle"}
    steps = data["jobs"]["bundle"]["steps"]
    assert all(("uses" in s) != ("run" in s) for s in steps), "each step either uses an action or runs a script"


def test_github_shipenv_commands_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    found = shipenv_commands(github_scripts(load(GITHUB)))
    assert [argv[1] for argv in found] == ["build", "verify", "inspect"]
    for argv in found:
        parse(argv, capsys)


def test_github_uploads_what_the_build_writes_and_caches_what_it_uses(capsys: pytest.CaptureFixture[str]) -> None:
    data = load(GITHUB)
    steps = data["jobs"]["bundle"]["steps"]
    (build,) = [argv for argv in shipenv_commands(github_scripts(data)) if argv[1] == "build"]
    archive = build_outputs(build, capsys)
    (upload,) = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload["with"]["path"].split() == [archive + suffix for suffix in PUBLISHED]
    check_verify(shipenv_commands(github_scripts(data)), capsys)
    (step,) = [s for s in steps if "shipenv build" in s.get("run", "")]
    assert step["env"]["SIGNING_KEY"] == "${{ secrets.SHIPENV_SIGNING_KEY }}"
    assert 'umask 077 && printf \'%s\\n\' "$SIGNING_KEY" > "$SHIPENV_SIGNING_KEY"' in step["run"]
    assert upload["with"]["if-no-files-found"] == "error"

    (cache,) = [s for s in steps if s.get("uses", "").startswith("actions/cache@")]
    cached = cache["with"]["path"].split()
    args = parse(build, capsys)
    assert str(args.cache_dir) in cached  # what --cache-dir names is what is kept
    assert "~/.cache/pip" in cached  # pip's default cache on Linux
    # A cache step must come before the build to help it.
    names = [s.get("uses", s.get("name", "")) for s in steps]
    assert names.index(cache["uses"]) < next(i for i, s in enumerate(steps) if "shipenv build" in s.get("run", ""))


# --------------------------------------------------------------------------- GitLab CI


def test_gitlab_job_runs_on_tags_only() -> None:
    data = load(GITLAB)
    job = data["bundle"]
    assert job["stage"] in data["stages"]
    assert job["rules"] == [{"if": "$CI_COMMIT_TAG"}]
    assert job["image"].startswith("python:3.12-")


def test_gitlab_shipenv_commands_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    found = shipenv_commands(gitlab_scripts(load(GITLAB)))
    assert [argv[1] for argv in found] == ["build", "verify", "inspect"]
    for argv in found:
        parse(argv, capsys)


def test_gitlab_keeps_what_the_build_writes_and_caches_what_it_uses(capsys: pytest.CaptureFixture[str]) -> None:
    data = load(GITLAB)
    job = data["bundle"]
    (build,) = [argv for argv in shipenv_commands(gitlab_scripts(data)) if argv[1] == "build"]
    archive = build_outputs(build, capsys)
    assert job["artifacts"]["paths"] == [archive + suffix for suffix in PUBLISHED]
    check_verify(shipenv_commands(gitlab_scripts(data)), capsys)

    def expand(text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: job["variables"].get(m.group(1), m.group(0)), text)

    # GitLab caches paths relative to the project directory, and only those.
    def in_project(path: str) -> str:
        path = expand(expand(path))
        assert path.startswith("$CI_PROJECT_DIR/"), f"{path} is outside the project: GitLab cannot cache it"
        return path.removeprefix("$CI_PROJECT_DIR/")

    cached = job["cache"]["paths"]
    assert in_project(str(parse(build, capsys).cache_dir)) in cached
    assert in_project(job["variables"]["PIP_CACHE_DIR"]) in cached


def test_commands_splits_shell_lines_the_way_a_shell_does() -> None:
    script = 'a=1 && shipenv build . \\\n  -o dist/ ; (cd dist && sha256sum -c "x y.sha256")  # done\n# shipenv nope\nx a#b'
    assert list(commands(script)) == [
        ["a=1"], ["shipenv", "build", ".", "-o", "dist/"], ["cd", "dist"], ["sha256sum", "-c", "x y.sha256"], ["x", "a#b"],
    ]  # fmt: skip
