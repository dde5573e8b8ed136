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

# The launcher as a bundle holds it, for a 3.10 and a 3.12 interpreter (3.11+
# adds __PYVENV_LAUNCHER__): the template alone is not valid sh. Called through
# check "$@", which shellcheck cannot follow (SC2317); '$d' is the launcher's
# own variable, written literally on purpose (SC2016).
# shellcheck disable=SC2317,SC2016
render_launchers() {
    local env
    for env in '' '__PYVENV_LAUNCHER__="$d/python" '; do
        "$venv/bin/python" -c 'import sys; from shipenv import templates
sys.stdout.write(templates.render("python.sh", xy="3.12", launcher_env=sys.argv[1], locate=templates.read("locate.sh")))' "$env" |
            shellcheck --shell=sh -
    done
}

check "mypy --strict src/shipenv" "$venv/bin/mypy"
check "ruff check src tests benchmarks" "$venv/bin/ruff" check -q src tests benchmarks
check "shellcheck templates/deploy.sh" shellcheck --shell=sh templates/deploy.sh
# activate is sourced by bash, zsh and ksh93, and must parse in plain sh.
check "shellcheck templates/activate (sh, bash)" sh -c 'shellcheck --shell=sh templates/activate && shellcheck --shell=bash templates/activate'
check "shellcheck bin/python (python.sh + locate.sh)" render_launchers
check "shellcheck ci/*.sh .ci/run" shellcheck ci/*.sh .ci/run
exit "$status"
