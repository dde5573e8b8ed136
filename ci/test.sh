#!/usr/bin/env bash
# Run the test suite the way CI does: prepare the machine, the static checks,
# shipenv under every host Python it supports, then pytest.
#
#   ci/test.sh                      everything: lint, hosts, the whole suite (tests/)
#   ci/test.sh tests/unit -x -k elf lint, then any pytest arguments (no hosts)
#
#   SHIPENV_HOSTS=1 / 0   run ci/hosts.sh (3.10-3.13) even with pytest arguments / never
#   SHIPENV_LINT=0        skip ci/lint.sh (mypy, ruff, shellcheck)
#   SHIPENV_WORKERS=N     xdist workers for the whole suite (default 2)
#   SHIPENV_CACHE_DIR     the suite's build cache (default /var/cache/shipenv-ci/build-cache)
#   SHIPENV_CACHE_MAX     pruned to this size before the run (default 10G)
#   CI=true               one line per step
set -euo pipefail

cd "$(dirname "$0")/.."

bash ci/setup.sh

hosts=${SHIPENV_HOSTS:-}
if [[ -z $hosts ]]; then
    (($#)) && hosts=0 || hosts=1
fi
# The whole suite runs on two xdist workers (the machine's two cores): the
# expensive bundles are built once per run and shared between them under a lock.
(($#)) || set -- tests/ -n "${SHIPENV_WORKERS:-2}"

[[ ${SHIPENV_LINT:-1} == 0 ]] || bash ci/lint.sh
[[ $hosts == 0 ]] || bash ci/hosts.sh

# The suite's builds share one build cache per machine, apart from the user's
# own (~/.cache/shipenv): its layers make the next run fast, and it is pruned
# to a size before each run, so that run after run cannot fill the disk.
export SHIPENV_CACHE_DIR=${SHIPENV_CACHE_DIR:-/var/cache/shipenv-ci/build-cache}
mkdir -p -- "$SHIPENV_CACHE_DIR"
"${SHIPENV_VENV:-.venv}/bin/python" -m shipenv cache --prune --max-size "${SHIPENV_CACHE_MAX:-10G}" | sed 's/^/test: /'
# A whole run takes about 7 GB at its peak (README, "Development"): say so up front
# rather than let a test fail with ENOSPC nine minutes in.
for dir in "${TMPDIR:-/tmp}" "$SHIPENV_CACHE_DIR"; do
    free=$(df -Pk -- "$dir" | awk 'NR == 2 { print int($4 / 1048576) }')
    ((free >= 8)) || echo "test: warning: only ${free} GB free on $dir; the whole suite needs about 8 GB" >&2
done

# `python -m pytest` rather than `pytest`: it puts the repository on sys.path,
# which `from tests.helpers import ...` relies on.
status=0
"${SHIPENV_VENV:-.venv}/bin/python" -m pytest "$@" || status=$?

# pytest exits 5 when it collected nothing: a wrong path or a broken import
# pattern, never a pass.
if ((status == 5)); then
    echo "test: pytest collected no tests from: $*" >&2
    exit 1
fi
exit "$status"
