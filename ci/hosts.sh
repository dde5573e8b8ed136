#!/usr/bin/env bash
# Run shipenv itself under every CPython it supports as a host (3.10-3.13):
# for each, a virtualenv with shipenv and the unit-test dependencies, the unit
# tests, and one real `shipenv build examples/webapp --format dir` whose
# result must then pass its own self-test.
#
#   ci/hosts.sh                 every version, in parallel
#   ci/hosts.sh 3.10 3.13       only these
#   CI=true                     one line per version; logs only on failure
#
# The virtualenvs live in .venv-hosts/3.X and are reinstalled only when
# pyproject.toml changes (the same stamp as ci/setup.sh); the editable install
# picks up source changes by itself. Each version's build cache and output
# live there too, so a second run reuses the layers the first one built.
set -euo pipefail

readonly HOST_VERSIONS=(3.10 3.11 3.12 3.13)
readonly SETUP_VERSION=1

cd "$(dirname "$0")/.."

say() { printf 'hosts: %s\n' "$*"; }
die() { printf 'hosts: error: %s\n' "$*" >&2; exit 1; }

# The newest pyenv CPython X.Y (release builds only: 3.12.1, not 3.12-dev).
pyenv_python() {
    local xy=$1 pyenv_root candidates
    pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    shopt -s nullglob
    candidates=("$pyenv_root"/versions/"$xy".[0-9]*/bin/python"$xy")
    shopt -u nullglob
    ((${#candidates[@]})) || die "no CPython $xy in $pyenv_root/versions (pyenv install $xy)"
    printf '%s\n' "${candidates[@]}" | sort -V | tail -n 1
}

# Everything for one version, its output in $dir/log; exit status says how it went.
one_host() {
    local xy=$1 dir=.venv-hosts/$1 base venv stamp want
    base=$(pyenv_python "$xy")
    venv=$dir/venv
    stamp=$venv/.shipenv-setup
    want="v$SETUP_VERSION $base $(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ ! -f $stamp || $(<"$stamp") != "$want" ]] || ! "$venv/bin/python" -c '' 2>/dev/null; then
        echo "== venv from $base"
        rm -rf -- "$venv"
        "$base" -m venv "$venv"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q -e '.[unit]'
        printf '%s\n' "$want" >"$stamp"
    fi
    echo "== unit tests under $("$venv/bin/python" -V)"
    "$venv/bin/python" -m pytest tests/unit -q -x -p no:cacheprovider
    echo "== shipenv build examples/webapp --format dir"
    rm -rf -- "$dir/out"
    "$venv/bin/shipenv" build examples/webapp --format dir --cache-dir "$dir/cache" -o "$dir/out" </dev/null
    echo "== the bundle's self-test"
    (cd / && env -u PYTHONPATH -u PYTHONHOME "$OLDPWD/$dir/out/webapp-0.1.0/bin/python" -m webapp --selftest)
}

main() {
    local xy pids=() failed=()
    (($#)) || set -- "${HOST_VERSIONS[@]}"
    for xy in "$@"; do
        mkdir -p ".venv-hosts/$xy"
        one_host "$xy" >".venv-hosts/$xy/log" 2>&1 </dev/null &
        pids+=($!)
    done
    local i=0
    for xy in "$@"; do
        if wait "${pids[$i]}"; then
            say "$xy: unit tests, build of examples/webapp and its self-test passed ($(grep -E '^[0-9]+ passed' ".venv-hosts/$xy/log" | tail -n 1))"
        else
            failed+=("$xy")
            say "$xy: FAILED; the end of .venv-hosts/$xy/log:" >&2
            tail -n 40 ".venv-hosts/$xy/log" >&2
        fi
        i=$((i + 1))
        [[ ${CI:-} == true ]] || sed -n 's/^== /  /p' ".venv-hosts/$xy/log"
    done
    ((${#failed[@]} == 0)) || die "shipenv failed under Python ${failed[*]}"
}

main "$@"
