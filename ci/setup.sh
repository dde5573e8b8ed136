#!/usr/bin/env bash
# Make this machine ready for the test suite, from a fresh Debian 12 with
# pyenv: Debian packages, the project's virtualenv, the chroot roots.
#
# Idempotent, and about a second when nothing is missing, because ci/test.sh
# (and so CI) runs it before every test run: a new machine must pass from the
# repository alone, with nothing installed by hand.
#
#   SHIPENV_VENV   virtualenv to use (default: .venv in the repository)
#   SHIPENV_ROOTS  where the roots are cached (see ci/make-root.sh)
#   CI=true        print one line per step; tool output only on failure
set -euo pipefail

# Bump to force every machine to reinstall the virtualenv's packages.
readonly SETUP_VERSION=1

# debootstrap builds the Debian roots; zstd, xz-utils and pigz are the
# command-line twins of the archive formats the tests round-trip; fish, csh
# and tcsh run the activate scripts for those shells; lmod runs module
# files. Debian's environment-modules declares a conflict with lmod, so only
# one of the two can be installed: lmod, as it reads both Lua and Tcl
# module files. zsh, ksh and shellcheck check the sh activate script in every
# shell it supports; gcc and zlib1g-dev build the test sdist whose C extension
# links a system library (tests/packages/zext); curl fetches from the example
# service; systemd's systemd-analyze checks the example unit; Java runs the
# Spark test's local cluster; skopeo, umoci, docker-registry and podman read,
# unpack, push and run the OCI images of `--format oci`; qemu-user-static runs
# the aarch64 native launcher; openssh-client's ssh-keygen and ssh-agent make and
# check the signatures shipenv's must interoperate with.
readonly APT_PACKAGES=(debootstrap zstd xz-utils pigz fish csh tcsh zsh ksh shellcheck lmod gcc zlib1g-dev curl openssh-client
    systemd openjdk-17-jre-headless skopeo umoci docker-registry podman qemu-user-static)
readonly ROOT_KINDS=(glibc bookworm bullseye busybox musl)

cd "$(dirname "$0")/.."

step() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Run a noisy tool; under CI its output is kept back and shown only when it
# fails, so a green log stays one line per step.
quietly() {
    if [[ ${CI:-} != true ]]; then
        "$@"
        return
    fi
    local log status=0
    log=$(mktemp)
    "$@" >"$log" 2>&1 </dev/null || status=$?
    if ((status != 0)); then
        printf 'setup: %s failed (exit %d); its last output:\n' "$*" "$status" >&2
        tail -n 40 "$log" >&2
    fi
    rm -f -- "$log"
    return "$status"
}

install_apt_packages() {
    local pkg missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        step "apt: ${#APT_PACKAGES[@]} packages already installed"
        return
    fi
    [[ $(id -u) == 0 ]] || die "need root to install ${missing[*]}"
    step "apt: installing ${missing[*]}"
    # apt-get update only when something is missing: it is most of the time
    # this step would take, and needs the network.
    export DEBIAN_FRONTEND=noninteractive
    quietly apt-get update -q
    quietly apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The newest pyenv CPython 3.11: the interpreter the project develops on.
find_base_python() {
    local pyenv_root candidates
    pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    shopt -s nullglob
    candidates=("$pyenv_root"/versions/3.11.*/bin/python3.11)
    shopt -u nullglob
    ((${#candidates[@]})) || die "no CPython 3.11 in $pyenv_root/versions (pyenv install 3.11)"
    printf '%s\n' "${candidates[@]}" | sort -V | tail -n 1
}

make_venv() {
    local venv=${SHIPENV_VENV:-.venv} base home stamp want
    base=$(find_base_python)
    home=$(dirname "$base")
    # A venv is tied to the interpreter it was made from: rebuild it when that
    # one was removed or a newer 3.11 appeared, instead of failing later.
    if ! "$venv/bin/python" -c '' 2>/dev/null ||
        ! grep -qxF "home = $home" "$venv/pyvenv.cfg" 2>/dev/null; then
        step "venv: creating $venv from $base"
        rm -rf -- "$venv"
        quietly "$base" -m venv "$venv"
    fi
    # Reinstall only when what decides the installed set changed; the
    # editable install picks up source changes by itself.
    stamp=$venv/.shipenv-setup
    if [[ -f pyproject.toml ]]; then
        want="v$SETUP_VERSION $base $(sha256sum pyproject.toml | cut -d' ' -f1)"
    else
        want="v$SETUP_VERSION $base no-pyproject"
    fi
    if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
        step "venv: $venv up to date ($("$venv/bin/python" -V))"
        return
    fi
    rm -f -- "$stamp"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    if [[ -f pyproject.toml ]]; then
        step "venv: pip install -e '.[test]' into $venv"
        quietly "$venv/bin/python" -m pip install -e '.[test]'
    else
        # Only while the project has no pyproject.toml yet: the harness's own
        # tests still need a runner.
        step "venv: no pyproject.toml; installing pytest alone into $venv"
        quietly "$venv/bin/python" -m pip install pytest
    fi
    printf '%s\n' "$want" >"$stamp"
}

make_roots() {
    local kind
    for kind in "${ROOT_KINDS[@]}"; do
        bash ci/make-root.sh "$kind"
    done
}

install_apt_packages
make_venv
make_roots
