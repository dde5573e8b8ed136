#!/usr/bin/env bash
# Run the test suite the way CI does: prepare the machine, then pytest.
#
#   ci/test.sh                      the whole suite (tests/)
#   ci/test.sh tests/unit -x -k elf any pytest arguments
set -euo pipefail

cd "$(dirname "$0")/.."

bash ci/setup.sh

(($#)) || set -- tests/

# `python -m pytest` rather than `pytest`: it puts the repository on sys.path,
# which `from tests.chroots import ...` relies on.
status=0
"${SHIPENV_VENV:-.venv}/bin/python" -m pytest "$@" || status=$?

# pytest exits 5 when it collected nothing: a wrong path or a broken import
# pattern, never a pass.
if ((status == 5)); then
    echo "test: pytest collected no tests from: $*" >&2
    exit 1
fi
exit "$status"
