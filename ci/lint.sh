#!/usr/bin/env bash
# Static checks, before any test runs: mypy strict on src/ (python_version 3.10,
# from pyproject.toml), ruff on src, tests and benchmarks, and shellcheck on
# every sh script shipenv ships or runs: deploy.sh, activate, the bin/python
# launcher as rendered (python.sh with the locate.sh fragment), and ci/*.sh.
#
#   ci/lint.sh        uses ${SHIPENV_VENV:-.venv}
set -euo pipefail

cd "$(dirname "$0")/.."
venv=${SHIPENV_VENV:-.venv}

say() { printf 'lint: %s\n' "$*"; }
status=0
check() {
    local what=$1 log
    shift
    log=$(mktemp)
    if "$@" >"$log" 2>&1; then
        say "$what: clean"
    else
        say "$what: FAILED" >&2
        cat "$log" >&2
        status=1
    fi
    rm -f -- "$log"
}

# The sh launcher as a bundle holds it (shipenv.build.launchers renders
# python.sh with the locate.sh fragment), for a 3.10 and a 3.12 interpreter
# (3.11+ adds __PYVENV_LAUNCHER__), on x86_64 (a bundled loader may be used)
# and on a machine with no known loader: the template alone is not valid sh.
# Called through check "$@", which shellcheck cannot follow (SC2317).
# shellcheck disable=SC2317
render_launchers() {
    local version machine rc=0
    for version in 3.10.13 3.12.1; do
        for machine in x86_64 riscv64; do
            "$venv/bin/python" -c 'import sys, types; from shipenv.build import launchers
v = tuple(map(int, sys.argv[1].split(".")))
py = types.SimpleNamespace(version=v, xy=f"{v[0]}.{v[1]}", machine=sys.argv[2])
sys.stdout.write(launchers.python_launcher(py))' "$version" "$machine" | shellcheck --shell=sh - || rc=1
        done
    done
    return "$rc"
}

check "mypy --strict src/shipenv" "$venv/bin/mypy"
check "ruff check src tests benchmarks" "$venv/bin/ruff" check -q src tests benchmarks
check "shellcheck templates/deploy.sh" shellcheck --shell=sh templates/deploy.sh
# activate is sourced by bash, zsh and ksh93, and must parse in plain sh.
check "shellcheck templates/activate (sh, bash)" sh -c 'shellcheck --shell=sh templates/activate && shellcheck --shell=bash templates/activate'
check "shellcheck bin/python (python.sh + locate.sh)" render_launchers
check "shellcheck ci/*.sh .ci/run" shellcheck ci/*.sh .ci/run
exit "$status"
