#!/bin/sh
# deploy.sh - deploy a shipenv bundle on a server that has no shipenv and no Python.
#
# Every bundle carries this script as NAME-VERSION/.shipenv/deploy.sh. It needs
# only a POSIX sh (dash, busybox ash), tar, sed, grep and coreutils, plus the
# archive's decompressor: gzip for .tar.gz (everywhere), xz for .tar.xz, zstd
# for .tar.zst (often missing on servers: build with --format tar.gz for them).
# It keeps the same layout, lock and history as `shipenv deploy`, so the two can
# take turns on one root:
#
#     ROOT/releases/NAME-VERSION/    one directory per release
#     ROOT/current -> releases/NAME-VERSION
#     ROOT/history.jsonl             one JSON line per switch of current
#     ROOT/.shipenv.lock             flock(1): one deploy at a time
#
# Run it straight out of the archive, without unpacking anything first:
#
#     tar -xzf app-2.0.0.tar.gz -O app-2.0.0/.shipenv/deploy.sh | sh -s -- deploy app-2.0.0.tar.gz /srv/app
#
# or save it once and reuse it (any bundle's copy works for any bundle):
#
#     tar -xzf app-2.0.0.tar.gz -O app-2.0.0/.shipenv/deploy.sh > deploy.sh
#     sh deploy.sh deploy app-2.0.0.tar.gz /srv/app [--check 'bin/python -m app --selftest'] [--wait SECONDS]
#     sh deploy.sh rollback /srv/app [--to VERSION|NAME-VERSION] [--wait SECONDS]
#     sh deploy.sh releases /srv/app
#
# (for a .tar.zst archive: zstd -dc app-2.0.0.tar.zst | tar -xf - -O app-2.0.0/.shipenv/deploy.sh > deploy.sh)
#
# deploy: lists the archive and refuses absolute paths, "..", entries outside
# NAME-VERSION/, hard links, devices, FIFOs, setuid/setgid bits, paths through
# a symlink, symlinks pointing outside the release, and any file not in
# .shipenv/RECORD (or listed there but absent); checks the host's glibc
# (getconf GNU_LIBC_VERSION, else ldd --version; SHIPENV_HOST_GLIBC=X.Y
# overrides it where detection fails) and architecture against manifest.json;
# unpacks into a temporary directory beside releases/; checks every file with
# `sha256sum -c` against RECORD; runs --check CMD (sh -c, in the new release);
# then moves it to releases/NAME-VERSION and switches current atomically
# (ln -s to a temporary name, then mv -T over current). Until that switch,
# current and every release stay untouched; a failure removes the temporary
# directory. Deploying the same archive again changes nothing; a different
# archive with the same NAME-VERSION is refused.
#
# rollback: switches current to the release that was current before it,
# following history.jsonl (repeated rollbacks walk further back), or --to a
# version. releases: lists releases, most recently current first ("*" marks
# current, "<" where rollback would go).
#
# Limits: no prune (remove an old release with rm -rf ROOT/releases/NAME-VERSION,
# never the one current points to, or use shipenv prune); no hard-link sharing
# with the current release (shipenv deploy does it); without flock(1) (util-linux)
# it warns and does not lock; file names with a comma, quote or newline are
# refused (shipenv deploy takes them).
#
# Exit status: 0 done, 1 refused or failed (nothing changed), 2 usage.

set -u
unset CDPATH
LC_ALL=C
export LC_ALL

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

usage() {
    printf '%s\n' "usage: deploy.sh deploy ARCHIVE ROOT [--check CMD] [--wait SECONDS]" \
        "       deploy.sh rollback ROOT [--to VERSION] [--wait SECONDS]" \
        "       deploy.sh releases ROOT" >&2
    exit 2
}

need() {
    for _cmd in "$@"; do
        command -v "$_cmd" >/dev/null 2>&1 || die "This server lacks '$_cmd', which deploy.sh needs; install it and try again."
    done
}

# A release name is one path component that needs no quoting in sh or JSON.
valid_name() {
    case $1 in
        "" | .* | -* | *[!A-Za-z0-9._+-]* | *..*) return 1 ;;
    esac
    return 0
}

# ---- the root: lock, leftovers, current, history --------------------------------------

take_lock() {
    if ! command -v flock >/dev/null 2>&1; then
        printf 'warning: %s\n' "flock is missing: not locking $root against a concurrent deploy." >&2
        return 0
    fi
    exec 9>>"$root/.shipenv.lock" || die "Cannot open $root/.shipenv.lock."
    if ! flock -n 9; then
        if [ "$wait" = 0 ] || ! flock -w "$wait" 9; then
            holder=$(head -n 1 "$root/.shipenv.lock" 2>/dev/null)
            case $holder in "" | *[!0-9]*) holder=unknown ;; esac
            if [ "$wait" = 0 ]; then
                die "Another deploy is running on $root (pid $holder); try again or pass --wait SECONDS."
            fi
            die "Another deploy is still running on $root (pid $holder) after waiting $wait seconds; try again later or pass a longer --wait."
        fi
    fi
    printf '%s\n' "$$" >"$root/.shipenv.lock"
    locked=1
}

# On any exit: remove the temporary directory; forget our pid in the lock file.
on_exit() {
    if [ -n "$work" ]; then
        rm -rf -- "$work"
    fi
    if [ -n "$locked" ]; then
        : >"$root/.shipenv.lock"
    fi
}

# Leftovers of a run that was killed; only ever removed under the lock.
clean_stale() {
    for _stale in "$root"/.deploy-* "$root"/.prune-* "$root"/.current.new.*; do
        if [ -e "$_stale" ] || [ -L "$_stale" ]; then
            rm -rf -- "$_stale"
        fi
    done
}

current_name() {
    if [ -L "$root/current" ]; then
        _target=$(readlink "$root/current") || die "Cannot read $root/current."
        _target=${_target%/}
        printf '%s\n' "${_target##*/}"
    elif [ -e "$root/current" ]; then
        die "$root/current is not a symlink; deploy.sh manages it as one: move it away and try again."
    fi
}

switch_to() {
    _new="$root/.current.new.$$"
    rm -f -- "$_new"
    ln -s "releases/$1" "$_new" || die "Cannot create $_new."
    mv -T -- "$_new" "$root/current" || die "Cannot switch $root/current to $1."
    sync
}

# The same lines shipenv writes (json.dumps with sort_keys=True).
append_history() { # ACTION FROM TO
    if [ -n "$2" ]; then _from="\"$2\""; else _from=null; fi
    _hist="$root/history.jsonl"
    if [ -s "$_hist" ] && [ -n "$(tail -c 1 "$_hist")" ]; then
        printf '\n' >>"$_hist" # a crash tore the last line: do not glue this one to it
    fi
    printf '{"action": "%s", "from": %s, "time": "%s", "to": "%s"}\n' \
        "$1" "$_from" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$3" >>"$_hist" || die "Cannot write $_hist."
}

# "ACTION FROM TO TIME" per well-formed history line (FROM "-" for none).
history_rows() {
    [ -f "$root/history.jsonl" ] || return 0
    sed -n -e 's/"from": null,/"from": "-",/' \
        -e 's/^{"action": "\([a-z-]*\)", "from": "\([^" ]*\)", "time": "\([^" ]*\)", "to": "\([^" ]*\)"}$/\1 \2 \4 \3/p' \
        "$root/history.jsonl"
}

stack_remove() {
    _kept=
    for _s in $stack; do
        [ "$_s" = "$1" ] || _kept="$_kept $_s"
    done
    stack=$_kept
}

stack_has() {
    case " $stack " in *" $1 "*) return 0 ;; esac
    return 1
}

# Replays the history as shipenv does: a deploy pushes, a rollback pops the
# release it leaves; prints where a rollback goes (nothing if nowhere).
rollback_target() {
    stack=
    _rows=$(history_rows)
    set -f
    while read -r _action _from _to _time; do
        [ -n "$_to" ] || continue
        case $_action in
            rollback*) stack_remove "$_from" ;;
            *) if [ "$_from" != - ] && ! stack_has "$_from"; then stack="$stack $_from"; fi ;;
        esac
        stack_remove "$_to"
        stack="$stack $_to"
    done <<EOF
$_rows
EOF
    _cur=$(current_name)
    if [ -n "$_cur" ]; then
        stack_remove "$_cur"
        stack="$stack $_cur"
    fi
    _reversed=
    for _s in $stack; do _reversed="$_s $_reversed"; done
    set +f
    for _s in $_reversed; do
        if [ "$_s" != "$_cur" ] && [ -d "$root/releases/$_s" ]; then
            printf '%s\n' "$_s"
            return 0
        fi
    done
}

# ---- reading a bundle --------------------------------------------------------------------------

# manifest.json is written by json.dumps(indent=2, sort_keys=True): a top-level
# key is indented by two spaces, a key of "platform" by four inside its block.
manifest_top() { # KEY FILE
    sed -n "s/^  \"$1\": \"\\([^\"]*\\)\",\\{0,1\\}\$/\\1/p" "$2" | head -n 1
}

manifest_platform() { # KEY FILE
    sed -n '/^  "platform": {$/,/^  }/p' "$2" |
        sed -n "s/^    \"$1\": \"\\{0,1\\}\\([^\",]*\\)\"\\{0,1\\},\\{0,1\\}\$/\\1/p" | head -n 1
}

pick_decompressor() {
    _magic=$(od -An -tx1 -N6 -- "$archive" | tr -d ' \n')
    case $_magic in
        1f8b*) decompress=gzip ;;
        28b52ffd*) decompress=zstd ;;
        fd377a585a00*) decompress=xz ;;
        *) die "$archive is not a .tar.gz, .tar.xz or .tar.zst archive." ;;
    esac
    if ! command -v "$decompress" >/dev/null 2>&1; then
        case $decompress in
            zstd) die "$archive is compressed with zstd, which this server lacks; install zstd (apt-get install zstd) or build the bundle with --format tar.gz." ;;
            *) die "$archive is compressed with $decompress, which this server lacks; install it or build the bundle with --format tar.gz." ;;
        esac
    fi
}

# tar ARGS... on the decompressed archive; fails if either side fails (sh has no pipefail).
untar() {
    rm -f -- "$work/.zfail"
    { "$decompress" -dc <"$archive" || : >"$work/.zfail"; } | tar "$@"
    _status=$?
    [ ! -e "$work/.zfail" ] && [ "$_status" = 0 ]
}

version_ge() { # A B: is glibc A at least B?
    _a1=${1%%.*}
    _a2=0
    case $1 in *.*) _a2=${1#*.}; _a2=${_a2%%.*} ;; esac
    _b1=${2%%.*}
    _b2=0
    case $2 in *.*) _b2=${2#*.}; _b2=${_b2%%.*} ;; esac
    [ "$_a1" -gt "$_b1" ] || { [ "$_a1" -eq "$_b1" ] && [ "$_a2" -ge "$_b2" ]; }
}

host_glibc() {
    if [ -n "${SHIPENV_HOST_GLIBC:-}" ]; then
        printf '%s\n' "$SHIPENV_HOST_GLIBC"
        return
    fi
    _v=$(getconf GNU_LIBC_VERSION 2>/dev/null) && [ -n "$_v" ] && {
        printf '%s\n' "${_v##* }"
        return
    }
    _v=$(ldd --version 2>&1 | head -n 1)
    case $_v in
        *GLIBC* | *"GNU libc"*) printf '%s\n' "${_v##* }" ;;
    esac
}

is_version() {
    case $1 in
        "" | *[!0-9.]* | .* | *.) return 1 ;;
    esac
    return 0
}

# FILE as a pattern file for grep -Fx -f that is never empty (busybox grep matches
# every line against an empty one); "//" is no path a listing or RECORD can hold.
patterns() {
    { printf '//\n'; cat "$1"; } >"$1.pat"
    printf '%s\n' "$1.pat"
}

refuse() {
    die "Refused $(basename -- "$archive"): $*; nothing was deployed."
}

# ---- deploy -------------------------------------------------------------------------------

check_listing() { # names and types of every entry, before anything is unpacked
    untar -tf - >"$work/.names" || die "Cannot read $archive: it is truncated or corrupt."
    untar -tvf - >"$work/.long" || die "Cannot read $archive: it is truncated or corrupt."
    [ "$(wc -l <"$work/.names")" = "$(wc -l <"$work/.long")" ] || refuse "its listing cannot be read"
    top=$(head -n 1 "$work/.names")
    top=${top#./}
    top=${top%%/*}
    valid_name "$top" || refuse "its first entry is not under a NAME-VERSION/ directory"
    cut -c1-10 "$work/.long" | paste -d ' ' - "$work/.names" >"$work/.entries"
    # busybox tar lists a hard link as a plain file "NAME -> TARGET"; GNU tar as type h.
    _hard=$(grep -n '^-.* -> ' "$work/.long" | head -n 1)
    if [ -n "$_hard" ]; then
        refuse "'$(sed -n "${_hard%%:*}p" "$work/.names")' is a hard link; a bundle holds only files, directories and symlinks"
    fi
    : >"$work/.all"
    : >"$work/.files"
    : >"$work/.links"
    while IFS= read -r _line; do
        _mode=${_line%% *}
        _name=${_line#* }
        case $_name in
            /*) refuse "entry '$_name' is an absolute path" ;;
        esac
        _name=${_name#./}
        _name=${_name%/}
        case /$_name/ in
            */../*) refuse "entry '$_name' climbs out of its directory with '..'" ;;
            *//* | */./*) refuse "entry '$_name' is not a plain path" ;;
        esac
        case $_name in
            "$top") _rel= ;;
            "$top"/*) _rel=${_name#"$top"/} ;;
            *) refuse "entry '$_name' is outside $top/" ;;
        esac
        case $_mode in
            ???[sS]* | ??????[sS]*) refuse "'$_name' has the setuid or setgid bit set" ;;
        esac
        printf '%s\n' "$_rel" >>"$work/.all"
        case $_mode in
            d*) ;;
            -*) printf '%s\n' "$_rel" >>"$work/.files" ;;
            l*) printf '%s\n' "$_rel" >>"$work/.files"; printf '%s\n' "$_rel" >>"$work/.links" ;;
            h*) refuse "'$_name' is a hard link; a bundle holds only files, directories and symlinks" ;;
            c* | b*) refuse "entry '$_name' is a device node; a bundle holds only files, directories and symlinks" ;;
            p*) refuse "entry '$_name' is a FIFO; a bundle holds only files, directories and symlinks" ;;
            *) refuse "entry '$_name' is not a file, directory or symlink" ;;
        esac
    done <"$work/.entries"
    _dup=$(sort "$work/.all" | uniq -d | head -n 1)
    [ -z "$_dup" ] || refuse "'$top/$_dup' appears twice"
    # Every ancestor directory of every entry; one that is a symlink would be written through.
    sed -n -e ':a' -e 's|/[^/]*$||' -e 't p' -e 'd' -e ':p' -e 'p' -e 'b a' "$work/.all" >"$work/.parents"
    _through=$(grep -Fx -f "$(patterns "$work/.links")" "$work/.parents" | head -n 1)
    [ -z "$_through" ] || refuse "a path would be written through the symlink '$top/$_through'"
}

check_record() {
    _record="$work/$top/.shipenv/RECORD"
    if grep -q '^"' "$_record"; then
        die "The RECORD of $top quotes a path (a comma or quote in a file name), which deploy.sh cannot read; use shipenv deploy."
    fi
    _bad=$(grep -v -e '^[^,]*,sha256=[0-9a-f]\{64\},[0-9]\{1,\}$' -e '^[^,]*,symlink=[^,]*,$' -e '^\.shipenv/RECORD,,$' "$_record" | head -n 1)
    [ -z "$_bad" ] || refuse "its RECORD has a line deploy.sh cannot read: $_bad"
    sed -n 's/^\([^,]*\),sha256=\([0-9a-f]*\),[0-9]*$/\2  \1/p' "$_record" >"$work/.sha256"
    sed -n 's/^\([^,]*\),symlink=\([^,]*\),$/\1,\2/p' "$_record" >"$work/.symlinks"
    sed -e 's/,.*//' "$_record" >"$work/.recorded"
    _extra=$(grep -Fxv -f "$(patterns "$work/.recorded")" "$work/.files" | head -n 1)
    [ -z "$_extra" ] || refuse "'$top/$_extra' is not listed in RECORD"
    _missing=$(grep -Fxv -f "$(patterns "$work/.files")" "$work/.recorded" | head -n 1)
    [ -z "$_missing" ] || refuse "RECORD lists '$_missing', which the archive lacks"
    set -f
    while IFS=, read -r _path _target; do
        case /$_path/ in */../* | //*) refuse "its RECORD names '$_path', outside the release" ;; esac
        case $_target in /*) refuse "the symlink '$top/$_path' points outside the release (to '$_target')" ;; esac
        # Count how deep the target climbs from the link's directory, lexically.
        _depth=0
        _dir=${_path%/*}
        [ "$_dir" = "$_path" ] && _dir=
        _old_ifs=$IFS
        IFS=/
        for _c in $_dir $_target; do
            case $_c in
                "" | .) ;;
                ..) _depth=$((_depth - 1)) ;;
                *) _depth=$((_depth + 1)) ;;
            esac
            [ "$_depth" -ge 0 ] || { IFS=$_old_ifs; refuse "the symlink '$top/$_path' points outside the release (to '$_target')"; }
        done
        IFS=$_old_ifs
    done <"$work/.symlinks"
    set +f
}

check_host() {
    _file="$work/$top/.shipenv/manifest.json"
    _name=$(manifest_top name "$_file")
    _version=$(manifest_top version "$_file")
    [ "$_name-$_version" = "$top" ] || refuse "its top directory $top/ does not match the manifest's $_name-$_version"
    _arch=$(manifest_platform arch "$_file")
    _host_arch=$(uname -m)
    if [ -n "$_arch" ] && [ "$_arch" != "$_host_arch" ]; then
        die "This host is $_host_arch but $top was built for $_arch; deploy it on an $_arch host or build it on $_host_arch."
    fi
    _floor=$(manifest_platform glibc_floor "$_file")
    [ -n "$_floor" ] && [ "$_floor" != null ] || return 0
    is_version "$_floor" || refuse "its manifest has an unreadable glibc floor '$_floor'"
    _have=$(host_glibc)
    if [ -z "$_have" ]; then
        die "This host has no glibc (or deploy.sh cannot tell its version) but $top needs glibc $_floor or newer; deploy it on a glibc-based distribution, or set SHIPENV_HOST_GLIBC=X.Y if it has one."
    fi
    is_version "$_have" || die "Cannot read this host's glibc version ('$_have'); set SHIPENV_HOST_GLIBC=X.Y."
    version_ge "$_have" "$_floor" ||
        die "This host has glibc $_have but $top needs $_floor or newer; deploy it on a newer distribution or rebuild it on an older one."
}

verify_unpacked() {
    _dir="$work/$top"
    if ! (cd -P -- "$_dir" && sha256sum -c "$work/.sha256") >"$work/.sumout" 2>&1; then
        _failed=$(grep ': FAILED' "$work/.sumout" | sed 's/: FAILED.*//')
        _count=$(printf '%s\n' "$_failed" | grep -c .)
        _failed=$(printf '%s\n' "$_failed" | head -n 3 | sed -e ':a' -e 'N' -e 's/\n/, /' -e 't a')
        refuse "$_count file(s) differ from RECORD: $_failed"
    fi
    set -f
    while read -r _hash _path; do
        [ ! -L "$_dir/$_path" ] || refuse "'$top/$_path' is a symlink but RECORD lists it as a file"
    done <"$work/.sha256"
    _real_dir=$(cd -P -- "$_dir" && pwd)
    if realpath -m / >/dev/null 2>&1; then _resolve="realpath -m"; else _resolve="readlink -f"; fi
    while IFS=, read -r _path _target; do
        [ -L "$_dir/$_path" ] || refuse "'$top/$_path' is not the symlink RECORD lists"
        [ "$(readlink "$_dir/$_path")" = "$_target" ] || refuse "the symlink '$top/$_path' differs from its RECORD entry"
        # Lexically fine links can still escape through another link ("s -> ." and "l -> s/..").
        _real=$($_resolve "$_dir/$_path") || refuse "the symlink '$top/$_path' cannot be resolved"
        case $_real in
            "$_real_dir" | "$_real_dir"/*) ;;
            *) refuse "the symlink '$top/$_path' resolves outside the release" ;;
        esac
    done <"$work/.symlinks"
    set +f
}

run_check() { # DIR
    [ -n "$check" ] || return 0
    printf '%s\n' "Running the check in $top: $check" >&2
    if ! (cd -P -- "$1" && sh -c "$check") >&2; then
        die "The check '$check' failed in $top; $state."
    fi
}

cmd_deploy() {
    [ $# -ge 2 ] || usage
    archive=$1
    root=$2
    shift 2
    parse_options "$@"
    [ -f "$archive" ] || die "$archive is not a file."
    need tar sed grep sha256sum od tr cut paste sort uniq mktemp readlink mv ln date
    pick_decompressor
    mkdir -p -- "$root/releases" || die "Cannot create $root/releases."
    root=$(cd -P -- "$root" && pwd) || die "Cannot enter $root."
    take_lock
    clean_stale
    previous=$(current_name)
    if [ -n "$previous" ]; then state="$root/current still points to $previous"; else state="$root/current was not created"; fi
    work=$(mktemp -d "$root/.deploy-XXXXXXXXXX") || die "Cannot create a temporary directory in $root."

    check_listing
    untar -xof - -C "$work" "$top/.shipenv/manifest.json" "$top/.shipenv/RECORD" ||
        refuse "it does not hold $top/.shipenv/manifest.json and RECORD: it is not a shipenv bundle"
    check_host
    check_record

    final="$root/releases/$top"
    if [ -e "$final" ] || [ -L "$final" ]; then
        _old=$(sha256sum <"$final/.shipenv/RECORD" 2>/dev/null)
        _new=$(sha256sum <"$work/$top/.shipenv/RECORD")
        [ "$_old" = "$_new" ] ||
            die "$final already exists with different content than $(basename -- "$archive"); a version is deployed only once."
        if [ "$previous" = "$top" ]; then
            printf '%s\n' "$top is already deployed with the same content and is current in $root; nothing changed."
            return 0
        fi
        run_check "$final"
        switch_to "$top"
        append_history deploy "$previous" "$top"
        printf '%s\n' "$top was already unpacked with the same content; switched $root/current from ${previous:-nothing} to $top."
        return 0
    fi

    rm -rf -- "${work:?}/${top:?}"
    printf '%s\n' "Unpacking $top and checking every file against its RECORD" >&2
    untar -xof - -C "$work" || die "Cannot unpack $top into $root (is its disk full?); nothing was deployed and $state."
    verify_unpacked
    run_check "$work/$top"
    sync
    mv -T -- "$work/$top" "$final" || die "Cannot move the new release to $final."
    switch_to "$top"
    append_history deploy "$previous" "$top"
    _count=$(wc -l <"$work/.files")
    if [ -n "$previous" ]; then
        printf '%s\n' "Deployed $top and switched $root/current from $previous to $top ($((_count)) files)."
    else
        printf '%s\n' "Deployed $top and pointed $root/current to it ($((_count)) files)."
    fi
}

# ---- rollback, releases -------------------------------------------------------------------------

find_release() { # VERSION or NAME-VERSION
    if valid_name "$1" && [ -d "$root/releases/$1" ]; then
        printf '%s\n' "$1"
        return 0
    fi
    _found=
    for _d in "$root"/releases/*/; do
        [ -d "$_d" ] || continue
        _d=${_d%/}
        _v=$(manifest_top version "$_d/.shipenv/manifest.json" 2>/dev/null)
        if [ "$_v" = "$1" ]; then
            [ -z "$_found" ] || die "Several releases have version $1; name one with --to NAME-VERSION."
            _found=${_d##*/}
        fi
    done
    [ -n "$_found" ] || die "There is no release $1 under $root/releases."
    printf '%s\n' "$_found"
}

cmd_rollback() {
    [ $# -ge 1 ] || usage
    root=$1
    shift
    parse_options "$@"
    [ -d "$root/releases" ] || die "$root holds no releases (no $root/releases)."
    root=$(cd -P -- "$root" && pwd) || die "Cannot enter $root."
    need readlink mv ln date sed
    take_lock
    clean_stale
    _cur=$(current_name)
    [ -n "$_cur" ] || die "$root/current does not exist, so there is nothing to roll back from."
    if [ -n "$to" ]; then
        _target=$(find_release "$to") || exit 1
        [ "$_target" != "$_cur" ] || die "$_target is already current in $root; nothing changed."
        _action=rollback-to
    else
        _target=$(rollback_target)
        [ -n "$_target" ] || die "There is no earlier release to roll back to from $_cur in $root."
        _action=rollback
    fi
    switch_to "$_target"
    append_history "$_action" "$_cur" "$_target"
    printf '%s\n' "Switched $root/current from $_cur to $_target."
}

cmd_releases() {
    [ $# -eq 1 ] || usage
    root=$1
    [ -d "$root/releases" ] || { printf '%s\n' "No releases under $root."; return 0; }
    root=$(cd -P -- "$root" && pwd) || die "Cannot enter $root."
    _cur=$(current_name)
    _back=$(rollback_target)
    # "INDEX TIME MARK NAME": the last time each release became current.
    _rows=$(history_rows | cat -n)
    for _d in "$root"/releases/*/; do
        [ -d "$_d" ] || continue
        _d=${_d%/}
        _n=${_d##*/}
        _last=$(printf '%s\n' "$_rows" | while read -r _i _a _f _t _w; do
            [ "$_t" = "$_n" ] && printf '%s %s\n' "$_i" "$_w"
        done | tail -n 1)
        _mark=.
        [ "$_n" = "$_cur" ] && _mark='*'
        [ "$_n" = "$_back" ] && _mark='<'
        printf '%s %s %s\n' "${_last:-0 -}" "$_mark" "$_n"
    done | sort -k1,1nr | while read -r _i _w _mark _n; do
        [ "$_mark" = . ] && _mark=' '
        printf '%s %-30s %s\n' "$_mark" "$_n" "$_w"
    done
}

parse_options() {
    check=
    to=
    wait=0
    while [ $# -gt 0 ]; do
        case $1 in
            --check) [ $# -ge 2 ] || usage; check=$2; shift 2 ;;
            --to) [ $# -ge 2 ] || usage; to=$2; shift 2 ;;
            --wait) [ $# -ge 2 ] || usage; wait=$2; shift 2 ;;
            *) usage ;;
        esac
    done
    case $wait in "" | *[!0-9.]*) die "--wait $wait is not a number of seconds." ;; esac
}

main() {
    [ $# -ge 1 ] || usage
    work=
    locked=
    trap on_exit EXIT
    trap 'exit 130' INT TERM HUP
    _command=$1
    shift
    case $_command in
        deploy) cmd_deploy "$@" ;;
        rollback) cmd_rollback "$@" ;;
        releases) cmd_releases "$@" ;;
        -h | --help | help) sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0" 2>/dev/null || usage ;;
        *) usage ;;
    esac
}

# Everything above is only definitions. When the script is piped into `sh -s`,
# its stdin is the script itself: no command may read it, hence </dev/null.
main "$@" </dev/null
