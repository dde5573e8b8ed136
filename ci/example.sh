#!/usr/bin/env bash
# The README's quick start, run for real: build examples/webapp into a
# bundle, unpack it into a directory whose path has a space, start its web
# service on a free port, fetch one answer, stop the service.
#
#   bash ci/example.sh            prints the service's JSON answer; exit 0 = it worked
#
#   SHIPENV_VENV   virtualenv holding shipenv (default: .venv, made by ci/setup.sh if missing)
#   KEEP=1         keep the work directory (printed at the end) for a look around
#
# Needs curl, and tar with zstd for the default .tar.zst (apt-get install curl zstd).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD

say() { printf 'example: %s\n' "$*"; }
die() { printf 'example: error: %s\n' "$*" >&2; exit 1; }

for tool in curl tar zstd; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install $tool"
done

venv=${SHIPENV_VENV:-.venv}
if ! "$venv/bin/shipenv" --version >/dev/null 2>&1; then
    say "no shipenv in $venv yet: running ci/setup.sh"
    bash ci/setup.sh
fi
case $venv in
    /*) shipenv=$venv/bin/shipenv ;;
    *) shipenv=$repo/$venv/bin/shipenv ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/shipenv-example.XXXXXX")
server=
cleanup() {
    if [[ -n $server ]] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    if [[ ${KEEP:-} == 1 ]]; then
        say "kept $work"
    else
        rm -rf -- "$work"
    fi
}
trap cleanup EXIT

# 1. Build: [tool.shipenv] in examples/webapp/pyproject.toml says Python 3.12,
#    the `app` command and .tar.zst.
say "building examples/webapp"
"$shipenv" build examples/webapp -o "$work/dist" </dev/null
archive=$(find "$work/dist" -maxdepth 1 -name 'webapp-*.tar.*' ! -name '*.sha256' ! -name '*.cdx.json' ! -name '*.sig' -print -quit)
[[ -n $archive ]] || die "shipenv build left no archive in $work/dist"
(cd "$work/dist" && sha256sum --quiet -c "$(basename "$archive").sha256") || die "the .sha256 does not match $archive"

# 2. Unpack anywhere: here, a path with a space. No step after tar.
dest="$work/my apps"
mkdir -p "$dest"
tar -xf "$archive" -C "$dest"
bundle=$(find "$dest" -mindepth 1 -maxdepth 1 -type d -print -quit)
say "unpacked $(basename "$archive") into $bundle"

# 3. Serve on a free port, from another working directory, with nothing of
#    the host's Python in the environment.
port=$(cd / && "$bundle/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd / && exec env -u PYTHONPATH -u PYTHONHOME "$bundle/bin/app" --bind "127.0.0.1:$port" --workers 1) \
    </dev/null >"$work/server.log" 2>&1 &
server=$!

answer=
for _ in $(seq 1 150); do
    if answer=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/" 2>/dev/null); then
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        cat "$work/server.log" >&2
        die "the service exited before answering"
    fi
    sleep 0.2
done
if [[ -z $answer ]]; then
    cat "$work/server.log" >&2
    die "no answer from http://127.0.0.1:$port/ within 30 s"
fi
printf '%s\n' "$answer"

# The answer must come from the unpacked bundle, not from some other Python.
"$bundle/bin/python" - "$answer" "$bundle" <<'EOF' || { cat "$work/server.log" >&2; exit 1; }
import json, sys
answer, bundle = json.loads(sys.argv[1]), sys.argv[2]
if answer.get("app") != "webapp" or answer.get("prefix") != bundle:
    sys.exit(f"example: error: the answer does not come from {bundle}: {answer}")
EOF

# 4. Stop it the way systemd and docker do: SIGTERM, then a clean exit.
kill -TERM "$server"
status=0
wait "$server" || status=$?
server=
((status == 0)) || { cat "$work/server.log" >&2; die "the service exited with $status on SIGTERM"; }
say "OK: served by $bundle on port $port, stopped cleanly"
