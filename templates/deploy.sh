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
#     ROOT/allowed_signers           who may sign what is deployed (shipenv trust)
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
#     sh deploy.sh prune /srv/app --keep 3
#
# (for a .tar.zst archive: zstd -dc app-2.0.0.tar.zst | tar -xf - -O app-2.0.0/.shipenv/deploy.sh > deploy.sh)
#
# deploy: lists the archive and refuses absolute paths, "..", entries outside
# NAME-VERSION/, hard links, devices, FIFOs, setuid/setgid bits, paths through
# a symlink, symlinks pointing outside the release, any file not in
# .shipenv/RECORD (or listed there but absent), and any file whose size in the
# listing differs from RECORD's (before tar -x writes a byte); checks RECORD's
# total (4 KiB blocks per file) against the free space (df -P -k) before
# unpacking; masks modes as shipenv does (no group/other write, no sticky bit,
# the release directory included: 0777 becomes 0755); checks the host's glibc
# (getconf GNU_LIBC_VERSION, else ldd --version; SHIPENV_HOST_GLIBC=X.Y
# overrides it where detection fails) and architecture against manifest.json
# (for a --libc bundled bundle: the kernel, uname -r, instead of glibc);
# unpacks into a temporary directory beside releases/; checks every file with
# `sha256sum -c` against RECORD; runs --check CMD (sh -c, in the new release);
# then moves it to releases/NAME-VERSION and switches current atomically
# (ln -s to a temporary name, then mv -T over current). Until that switch,
# current and every release stay untouched; a failure removes the temporary
# directory. Deploying the same archive again changes nothing; a different
# archive with the same NAME-VERSION is refused.
#
# trust: once `shipenv trust --root ROOT --allowed-signers FILE` has put an
# OpenSSH allowed_signers file at ROOT/allowed_signers, deploy needs ARCHIVE.sig
# beside the archive, checked with `ssh-keygen -Y verify -n shipenv` against that
# file before anything in ROOT is written (a host without an ssh-keygen that can
# is refused in a sentence); the history line records who signed, and rollback
# goes only to releases whose signer that file still allows.
#
# rollback: switches current to the release that was current before it,
# following history.jsonl (repeated rollbacks walk further back), or --to a
# version. releases: lists releases, most recently current first ("*" marks
# current, "<" where rollback would go). prune: removes all but the N most
# recently current releases, never current nor where rollback would go.
# A release is a directory directly under releases/, not a symlink, holding a
# .shipenv/manifest.json that names it; nothing else is listed, rolled back to
# or pruned.
#
# The root: it and releases/ may belong to root or to the service user that
# owns the root; run as root, deploy.sh refuses a root or releases/ that group
# or others can write, parent directories that anyone but root can change, and
# control files (.shipenv.lock, history.jsonl, current, releases/) that are not
# what it makes: it never writes through a symlink planted in the root.
#
# Names: any name shipenv deploy takes (UTF-8, tabs, backslashes, commas and
# quotes, which RECORD quotes as CSV does), read from tar's escaped listing;
# except a newline in a name, which deploy.sh refuses (shipenv deploy takes it;
# shipenv build never makes such a bundle).
# Members may start with "./" (tar -C DIR -cf X ./app-1.0); manifest.json and
# RECORD come first, as shipenv build writes them and shipenv deploy needs.
#
# Limits: no hard-link sharing with the current release (shipenv deploy does
# it); without flock(1) (util-linux) it warns and does not lock.
#
# Exit status (the same as shipenv's): 0 done; 1 refused or failed otherwise
# (the root is not as shipenv made it, another deploy holds the lock, --check
# failed, no such release); 2 usage; 3 refused archive; 4 refused host (arch,
# glibc); 5 I/O failure (disk full, read-only file system, permission denied,
# name too long, releases/ on another file system). Nothing changed unless 0.

set -u
unset CDPATH
LC_ALL=C
export LC_ALL

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

die_with() { # STATUS MESSAGE
    _status=$1
    shift
    printf 'error: %s\n' "$*" >&2
    exit "$_status"
}

# A glibc host refused for its glibc: the sentence, then what else would work (exit 4).
refuse_glibc() { # MESSAGE
    printf 'error: %s\nhint: %s\n' "$1" "Or rebuild it with --libc bundled: it then carries its own glibc and needs only a Linux kernel." >&2
    exit 4
}

usage_error() {
    die_with 2 "$@"
}

usage() {
    printf '%s\n' "usage: deploy.sh deploy ARCHIVE ROOT [--check CMD] [--wait SECONDS]" \
        "       deploy.sh rollback ROOT [--to VERSION] [--wait SECONDS]" \
        "       deploy.sh releases ROOT" \
        "       deploy.sh prune ROOT --keep N [--wait SECONDS]" >&2
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

# ---- the root: who owns it, lock, leftovers, current, history --------------------------------------
#
# The same rules as shipenv (src/shipenv/deploy/layout.py): the root and releases/ belong to root or
# to one service user (the root's owner), and as root deploy.sh refuses a root, releases/ or a parent
# directory that others can write. Nothing in the root is used without a check that it is what
# deploy.sh makes: a real directory, a plain file with one link (opened, then compared by
# device:inode with what the name holds), a symlink releases/NAME. Files in the new release are
# written relative to the temporary directory we made and entered (cd -P), not through a path.

# Say what the file system said (C locale's strerror) in shipenv's words, and exit 5.
io_fail() { # ERROR-TEXT
    case $1 in
        *"No space left"* | *"quota exceeded"*) die_with 5 "The disk holding $root is full; $state." ;;
        *"Read-only file system"*) die_with 5 "$root is on a read-only file system; $state." ;;
        *"Permission denied"* | *"Operation not permitted"*) die_with 5 "Permission denied in $root; $state." ;;
        *"too long"*) die_with 5 "A name is too long for the file system holding $root; $state." ;;
        *"cross-device"* | *"Cross-device"*) die_with 5 "$root/releases is on another file system than $root; $state." ;;
    esac
    die_with 5 "Cannot change $root: $(printf '%s\n' "$1" | sed -n '$s/.*: //p'); $state."
}

# CMD...: run it; on failure, io_fail with what it printed on stderr.
io() {
    _err=$("$@" 2>&1 >/dev/null) || io_fail "$_err"
}

kind_of() {
    if [ -L "$1" ]; then echo "a symlink"
    elif [ -d "$1" ]; then echo "a directory"
    elif [ -f "$1" ]; then echo "a regular file"
    elif [ -p "$1" ]; then echo "a FIFO"
    elif [ -S "$1" ]; then echo "a socket"
    elif [ -c "$1" ] || [ -b "$1" ]; then echo "a device"
    elif [ -e "$1" ]; then echo "not a file"
    else echo "gone"; fi
}

not_made() { # PATH WHAT-DEPLOY.SH-MAKES WHAT-IT-IS
    die "$1 is not the $2 shipenv makes (it is $3); nothing was changed."
}

as_root() { [ "$(id -u)" = 0 ]; }

writable_by_others() { # OCTAL-MODE
    [ $((0$1 & 022)) != 0 ]
}

refuse_writable() { # PATH OCTAL-MODE
    die "$1 is writable by group or others (mode $(printf '%04o' $((0$2)))), so anyone could change what runs from it; nothing was changed."
}

# As root: PATH belongs to root or the root's owner (and, with "dir", only they can write it).
check_owner() { # PATH [dir]
    as_root || return 0
    _st=$(stat -c '%u %a' -- "$1")
    _uid=${_st% *}
    _mode=${_st#* }
    if [ "$_uid" != 0 ] && [ "$_uid" != "$root_owner" ]; then
        die "$1 belongs to uid $_uid, neither root nor the owner of $root (uid $root_owner); nothing was changed."
    fi
    if [ "${2:-}" = dir ] && writable_by_others "$_mode"; then refuse_writable "$1" "$_mode"; fi
}

# As root: only root may be able to change the directories that lead to the root.
check_parents() { # AS-NAMED RESOLVED
    _seen=
    for _start in "$1" "$2"; do
        _p=$_start
        while [ "$_p" != / ]; do
            _p=${_p%/*}
            [ -n "$_p" ] || _p=/
            case " $_seen " in *" $_p "*) continue ;; esac
            _seen="$_seen $_p"
            _st=$(stat -L -c '%u %a' -- "$_p")
            _uid=${_st% *}
            _mode=${_st#* }
            _who=
            if [ "$_uid" != 0 ]; then
                _who="uid $_uid"
            elif writable_by_others "$_mode" && [ $((0$_mode & 01000)) = 0 ]; then
                _who="group or others"
            fi
            [ -z "$_who" ] || die "$_p, a parent directory of $1, can be changed by $_who, so the way to the root cannot be trusted; nothing was changed."
        done
    done
}

# ROOT as named: make it (and releases/ when "create"), check who may change it, enter nothing yet.
open_root() { # ROOT [create]
    case $1 in /*) _named=$1 ;; *) _named=$(pwd -P)/$1 ;; esac
    _named=$(printf '%s\n' "$_named" | sed -e 's|/\{1,\}|/|g' -e 's|/\./|/|g' -e 's|/$||')
    state="nothing was changed"
    root=$_named
    if [ "${2:-}" = create ]; then
        state="nothing was deployed and $_named/current was not created"
        [ -e "$1" ] || [ -L "$1" ] || io mkdir -p -- "$1"
        [ -d "$1" ] || usage_error "$1 is not a directory."
    fi
    [ -d "$1" ] || die "$_named holds no releases (no $_named/releases)."
    root=$(cd -P -- "$1" && pwd -P) || die "Cannot enter $1."
    root_owner=$(stat -c %u -- "$root")
    if as_root; then
        _m=$(stat -c %a -- "$root")
        ! writable_by_others "$_m" || refuse_writable "$root" "$_m"
        check_parents "$_named" "$root"
    fi
    if [ ! -e "$root/releases" ] && [ ! -L "$root/releases" ]; then
        [ "${2:-}" = create ] || die "$root holds no releases (no $root/releases)."
        # Another first deploy into the same new root may make it first: only fail if it is still missing.
        if ! mkdir -m 755 -- "$root/releases" 2>/dev/null && [ ! -e "$root/releases" ] && [ ! -L "$root/releases" ]; then
            io mkdir -m 755 -- "$root/releases"
        fi
    fi
    if [ -L "$root/releases" ] || [ ! -d "$root/releases" ]; then
        not_made "$root/releases" directory "$(kind_of "$root/releases")"
    fi
    check_owner "$root/releases" dir
    releases_id=$(stat -c '%d:%i' -- "$root/releases")
}

# PATH is a plain file with one link (or absent); as root, root's or the root owner's.
control_file() { # PATH
    if [ -L "$1" ] || { [ -e "$1" ] && [ ! -f "$1" ]; }; then
        not_made "$1" "plain file" "$(kind_of "$1")"
    fi
    [ -e "$1" ] || return 0
    _links=$(stat -c %h -- "$1")
    [ "$_links" = 1 ] || not_made "$1" "plain file" "a file with $_links hard links"
    check_owner "$1"
}

# FD is open on the very file PATH names now (no symlink swapped in between check and open).
same_file() { # FD PATH
    if [ -L "$2" ] || [ "$(stat -L -c '%d:%i:%h' "/proc/self/fd/$1" 2>/dev/null)" != "$(stat -c '%d:%i:1' -- "$2" 2>/dev/null)" ]; then
        not_made "$2" "plain file" "$(kind_of "$2")"
    fi
}

take_lock() {
    _lock="$root/.shipenv.lock"
    control_file "$_lock"
    _err=$( (exec 9>>"$_lock") 2>&1) || io_fail "$_err"
    exec 9>>"$_lock"
    same_file 9 "$_lock"
    if ! command -v flock >/dev/null 2>&1; then
        printf 'warning: %s\n' "flock is missing: not locking $root against a concurrent deploy." >&2
        return 0
    fi
    if ! flock -n 9; then
        if [ "$wait" = 0 ] || ! flock -w "$wait" 9; then
            holder=$(head -n 1 "/proc/self/fd/9" 2>/dev/null)
            case $holder in "" | *[!0-9]*) holder=unknown ;; esac
            if [ "$wait" = 0 ]; then
                die "Another deploy is running on $root (pid $holder); try again or pass --wait SECONDS."
            fi
            die "Another deploy is still running on $root (pid $holder) after waiting $wait seconds; try again later or pass a longer --wait."
        fi
    fi
    locked=1
    # Through the descriptor checked above: the pid lands in the lock file and nowhere else.
    printf '%s\n' "$$" >"/proc/self/fd/9"
}

# On any exit: remove the temporary directory; forget our pid in the lock file.
on_exit() {
    if [ -n "$work_path" ]; then
        cd / && rm -rf -- "$work_path"
    fi
    if [ -n "$locked" ]; then
        : >"/proc/self/fd/9"
    fi
}

# Leftovers of a run that was killed; only ever removed under the lock (rm -rf never follows a link).
clean_stale() {
    for _stale in "$root"/.deploy-* "$root"/.prune-* "$root"/.current.new.* "$root"/releases/.prune-*; do
        if [ -e "$_stale" ] || [ -L "$_stale" ]; then
            io rm -rf -- "$_stale"
        fi
    done
}

current_name() {
    if [ -L "$root/current" ]; then
        _target=$(readlink "$root/current") || die "Cannot read $root/current."
        _name=${_target%/}
        _name=${_name#releases/}
        case $_name in */*) _name= ;; esac
        if [ "releases/$_name" != "${_target%/}" ] || ! valid_name "$_name"; then
            die "$root/current points to $_target, not to a release in $root/releases; nothing was changed."
        fi
        printf '%s\n' "$_name"
    elif [ -e "$root/current" ]; then
        not_made "$root/current" symlink "$(kind_of "$root/current")"
    fi
}

# Where a state message starts: what is still true if this run stops now.
current_state() { # PREFIX
    _c=$(current_name) || exit 1
    if [ -n "$_c" ]; then state="$1$root/current still points to $_c"; else state="$1$root/current was not created"; fi
}

switch_to() {
    _new="$root/.current.new.$$"
    io rm -f -- "$_new"
    io ln -sn -- "releases/$1" "$_new"
    io mv -T -- "$_new" "$root/current"
    sync
}

check_history() {
    control_file "$root/history.jsonl"
}

# The same lines shipenv writes (json.dumps with sort_keys=True); KEY and
# SIGNER (who signed what became current) only when a signature was verified.
append_history() { # ACTION FROM TO [KEY SIGNER]
    if [ -n "$2" ]; then _from="\"$2\""; else _from=null; fi
    _signed=
    if [ -n "${4:-}" ]; then _signed="\"key\": \"$4\", \"signer\": \"$5\", "; fi
    _hist="$root/history.jsonl"
    control_file "$_hist"
    _err=$( (exec 8>>"$_hist") 2>&1) || io_fail "$_err"
    exec 8>>"$_hist"
    same_file 8 "$_hist"
    if [ -s "/proc/self/fd/8" ] && [ -n "$(tail -c 1 "/proc/self/fd/8")" ]; then
        printf '\n' >&8 # a crash tore the last line: do not glue this one to it
    fi
    printf '{"action": "%s", "from": %s, %s"time": "%s", "to": "%s"}\n' \
        "$1" "$_from" "$_signed" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$3" >&8 || die_with 5 "Cannot write $_hist; $state."
    exec 8>&-
}

# "ACTION FROM TO TIME" per well-formed history line (FROM "-" for none).
history_rows() {
    _hist="$root/history.jsonl"
    [ -e "$_hist" ] || [ -L "$_hist" ] || return 0
    control_file "$_hist"
    history_rows_of 7<"$_hist"
}

history_rows_of() {
    same_file 7 "$_hist"
    sed -n -e 's/"from": null,/"from": "-",/' \
        -e 's/^{"action": "\([a-z-]*\)", "from": "\([^" ]*\)", \("key": "[^"]*", "signer": "[^"]*", \)\{0,1\}"time": "\([^" ]*\)", "to": "\([^" ]*\)"}$/\1 \2 \5 \4/p' <&7
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

# A release: a directory directly under releases/, not a symlink, whose .shipenv/manifest.json
# (a regular file) names it. Prints its version.
release_version() { # NAME
    valid_name "$1" || return 1
    _d="$root/releases/$1"
    [ -d "$_d" ] && [ ! -L "$_d" ] && [ -d "$_d/.shipenv" ] && [ ! -L "$_d/.shipenv" ] || return 1
    [ -f "$_d/.shipenv/manifest.json" ] && [ ! -L "$_d/.shipenv/manifest.json" ] || return 1
    _rn=$(manifest_top name "$_d/.shipenv/manifest.json" 2>/dev/null)
    _rv=$(manifest_top version "$_d/.shipenv/manifest.json" 2>/dev/null)
    [ -n "$_rv" ] && [ "$_rn-$_rv" = "$1" ] || return 1
    printf '%s\n' "$_rv"
}

# Every release, one name a line, sorted.
release_names() {
    for _d in "$root"/releases/*; do
        _n=${_d##*/}
        release_version "$_n" >/dev/null && printf '%s\n' "$_n"
    done | sort
}

# Replays the history as shipenv does: a deploy pushes, a rollback pops the
# release it leaves; prints where a rollback goes (nothing if nowhere).
rollback_target() {
    stack=
    _rows=$(history_rows) || exit 1
    set -f
    while read -r _action _from _to _time; do
        [ -n "$_to" ] || continue
        case $_action in
            rollback*) stack_remove "$_from" ;;
            *) if [ "$_from" != - ] && ! stack_has "$_from"; then stack="$stack $_from"; fi ;;
        esac
        stack_remove "$_to"
        stack="$stack $_to"
    done <<EOT
$_rows
EOT
    _cur=$(current_name) || exit 1
    if [ -n "$_cur" ]; then
        stack_remove "$_cur"
        stack="$stack $_cur"
    fi
    _reversed=
    for _s in $stack; do _reversed="$_s $_reversed"; done
    set +f
    for _s in $_reversed; do
        if [ "$_s" != "$_cur" ] && release_version "$_s" >/dev/null; then
            printf '%s\n' "$_s"
            return 0
        fi
    done
}

# ---- trust: who may sign what is deployed ------------------------------------------------

policy_file() { # prints ROOT/allowed_signers when the root has a trust policy
    _policy="$root/allowed_signers"
    control_file "$_policy"
    [ ! -f "$_policy" ] || printf '%s\n' "$_policy"
}

need_ssh_keygen() { # WHY
    if ! command -v ssh-keygen >/dev/null 2>&1 ||
        ssh-keygen -Y find-principals -f /dev/null -s /dev/null 2>&1 | grep -q -e 'Unsupported operation' -e '^usage:'; then
        die_with 4 "$root accepts only signed archives ($_policy), and this host has no ssh-keygen that can check $1 (OpenSSH 8.2 or newer); install openssh-client (apt-get install openssh-client) or deploy with shipenv deploy."
    fi
}

# Sets signer and key when the root has a policy and ARCHIVE.sig satisfies it; refuses otherwise.
check_signature() {
    signer=
    key=
    _policy=$(policy_file) || exit 1
    [ -n "$_policy" ] || return 0
    _sig="$archive.sig"
    [ -f "$_sig" ] || refuse "$root accepts only signed archives ($_policy), and there is no $(basename -- "$_sig") beside it"
    need_ssh_keygen "$(basename -- "$_sig")"
    _before=$(archive_identity)
    _principal=$(ssh-keygen -Y find-principals -s "$_sig" -f "$_policy" 2>/dev/null | head -n 1)
    [ -n "$_principal" ] || refuse "$(basename -- "$_sig") is not a signature by a key that $_policy lists"
    # Written into history.jsonl as it is: only what JSON needs no escape for.
    case $_principal in
        *[!A-Za-z0-9@._+,*?!:=/-]*) refuse "the principals '$_principal' in $_policy hold characters shipenv does not accept" ;;
    esac
    if ! _out=$(ssh-keygen -Y verify -f "$_policy" -I "$_principal" -n shipenv -s "$_sig" <"$archive" 2>&1); then
        case $_out in
            *"namespace does not match"*) refuse "$(basename -- "$_sig") was made for another namespace than 'shipenv'" ;;
            *"incorrect signature"*) refuse "$(basename -- "$_sig") does not match the archive's bytes: the archive was changed or the signature is for another one" ;;
            *) refuse "$(basename -- "$_sig") does not verify against $_policy ($(printf '%s\n' "$_out" | grep -v '^Could not verify' | tail -n 1))" ;;
        esac
    fi
    key=$(printf '%s\n' "$_out" | sed -n 's/^Good "shipenv" signature for .* with [A-Z0-9-]* key \(SHA256:[A-Za-z0-9+\/]*\)$/\1/p' | head -n 1)
    [ -n "$key" ] || refuse "ssh-keygen did not say which key signed it"
    signer=$_principal
    identity=$(archive_identity)
    [ "$identity" = "$_before" ] || refuse "it changed while its signature was being checked"
    printf '%s\n' "$(basename -- "$archive") is signed by $signer ($key), whom $root trusts" >&2
}

# What changes when the archive is written to, replaced or renamed (ctime cannot be set back).
archive_identity() {
    stat -L -c '%d:%i:%s:%z' -- "$archive" 2>/dev/null
}

# Refuses the switch when the archive is not the file whose signature was checked.
still_verified() {
    [ -z "$key" ] || [ "$(archive_identity)" = "$identity" ] ||
        die_with 3 "$archive changed while it was being deployed, after its signature was checked; $state."
}

# "KEY SIGNER" of the last verified deploy of release NAME (nothing if none).
signed_by() { # NAME
    _hist="$root/history.jsonl"
    [ -e "$_hist" ] || [ -L "$_hist" ] || return 0
    control_file "$_hist"
    _re=$(printf '%s' "$1" | sed 's/[.]/\\./g')
    signed_by_of "$_re" 7<"$_hist"
}

signed_by_of() { # NAME-REGEX, the history on fd 7
    same_file 7 "$_hist"
    sed -n 's/^{"action": "[a-z-]*", "from": [^,]*, "key": "\([^"]*\)", "signer": "\([^"]*\)", "time": "[^"]*", "to": "'"$1"'"}$/\1 \2/p' <&7 |
        tail -n 1
}

# Fingerprints of the keys ROOT/allowed_signers allows to sign for "shipenv" now
# (namespaces="..." exact or "*"; valid-after/valid-before; no cert-authority).
allowed_fingerprints() { # POLICY TMPFILE
    awk -v now="$(date +%Y%m%d%H%M%S)" -v nowz="$(date -u +%Y%m%d%H%M%S)" '
        function when(v) { z = (v ~ /Z$/); sub(/Z$/, "", v); while (length(v) < 14) v = v "0"; return v }
        function opt(name,   v) { v = opts; if (v !~ (name "=\"")) return ""; sub(".*" name "=\"", "", v); sub(/".*/, "", v); return v }
        /^[ \t]*(#|$)/ { next }
        {
            for (i = 2; i <= NF; i++) if ($i ~ /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521))$/) break
            if (i >= NF) next
            opts = ""; for (j = 2; j < i; j++) opts = opts " " $j
            if (opts ~ /cert-authority/) next
            ns = opt("namespaces")
            if (opts ~ /namespaces="/ && ("," ns ",") !~ /,[ ]*(shipenv|\*)[ ]*,/) next
            va = opt("valid-after"); if (va != "") { t = when(va); if (t > (z ? nowz : now)) next }
            vb = opt("valid-before"); if (vb != "") { t = when(vb); if (t < (z ? nowz : now)) next }
            print $i, $(i + 1)
        }' "$1" >"$2"
    [ -s "$2" ] || return 0
    ssh-keygen -l -f "$2" 2>/dev/null | sed -n 's/^[0-9]* \(SHA256:[^ ]*\) .*/\1/p'
}

# Refuses switching to NAME unless the root's policy still allows whoever signed its deploy.
check_rollback_trust() { # NAME
    _policy=$(policy_file) || exit 1
    [ -n "$_policy" ] || return 0
    _signed=$(signed_by "$1")
    [ -n "$_signed" ] || die "Cannot roll back to $1: $1 was deployed without a verified signature, and $root now accepts only signed releases; $root/current still points to $_cur."
    need_ssh_keygen "who signed $1"
    work_path=$(mktemp -d "$root/.deploy-XXXXXXXXXX" 2>&1) || { _e=$work_path; work_path=; io_fail "$_e"; }
    if ! allowed_fingerprints "$_policy" "$work_path/keys" | grep -qxF "${_signed%% *}"; then
        die "Cannot roll back to $1: $1 was signed by ${_signed#* } (${_signed%% *}), whom $_policy no longer allows; $root/current still points to $_cur."
    fi
}

# ---- reading a bundle --------------------------------------------------------------------------

# .shipenv/facts holds what deploy.sh needs from the manifest, one KEY=VALUE line
# each, written by shipenv build (shipenv.bundle.manifest.render_facts); a value
# holding "%" is escaped and is none that deploy.sh reads. No JSON is parsed here.
fact() { # KEY FILE
    sed -n "s/^$1=//p" "$2" | head -n 1
}

# Releases unpacked before .shipenv/facts existed are still found by their
# manifest.json (json.dumps(indent=2, sort_keys=True): top-level keys indented by two).
manifest_top() { # KEY FILE
    sed -n "s/^  \"$1\": \"\\([^\"]*\\)\",\\{0,1\\}\$/\\1/p" "$2" | head -n 1
}

pick_decompressor() {
    _magic=$(od -An -tx1 -N6 -- "$archive" | tr -d ' \n')
    case $_magic in
        1f8b*) decompress=gzip ;;
        28b52ffd*) decompress=zstd ;;
        fd377a585a00*) decompress=xz ;;
        *) die_with 3 "$archive is not a .tar.gz, .tar.xz or .tar.zst archive." ;;
    esac
    if ! command -v "$decompress" >/dev/null 2>&1; then
        case $decompress in
            zstd) die "$archive is compressed with zstd, which this server lacks; install zstd (apt-get install zstd) or build the bundle with --format tar.gz." ;;
            *) die "$archive is compressed with $decompress, which this server lacks; install it or build the bundle with --format tar.gz." ;;
        esac
    fi
}

# tar ARGS... on the decompressed archive; fails if either side fails (sh has no pipefail).
# tar runs with its address space capped (TAR_MEMORY_KB): it reads a pax extended
# header whole, so a 1 MB archive declaring a 1 GiB header would otherwise cost
# 1 GiB of memory; with the cap tar fails instead, and the archive is refused.
TAR_MEMORY_KB=131072
untar() {
    rm -f -- "$work/.zfail"
    { "$decompress" -dc <"$archive" || : >"$work/.zfail"; } | (
        # shellcheck disable=SC3045 # dash, bash and busybox ash have -v; elsewhere this is a no-op
        ulimit -v "$TAR_MEMORY_KB" 2>/dev/null
        exec tar "$@"
    )
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
    die_with 3 "Refused $(basename -- "$archive"): $*; nothing was deployed."
}

# ---- deploy -------------------------------------------------------------------------------

# GNU tar lists names escaped (--quoting-style=escape: "\\", "\t", "\303\251" for a byte
# above 127); busybox tar lists them as they are. Sets tar_escapes when tar escapes.
tar_quoting() {
    tar_escapes=
    if tar --quoting-style=escape --version >/dev/null 2>&1; then tar_escapes=--quoting-style=escape; fi
}

# FILE of tar's escaped names to their bytes, one a line (printf %b reads "\0ddd", not "\ddd").
unescape_names() { # FILE
    _soh=$(printf '\001') # never in an escaped listing: tar writes it as \001
    sed -e "s/\\\\\\\\/$_soh/g" -e 's/\\\([0-7][0-7][0-7]\)/\\0\1/g' -e "s/$_soh/\\\\\\\\/g" "$1" |
        while IFS= read -r _n; do printf '%b\n' "$_n"; done
}

# A member name as shipenv deploy reads it: "" and "." components dropped ("./app-1.0/x" is "app-1.0/x").
plain_path() { # NAME: sets _norm
    case $1 in
        ./* | *//* | */./* | */. | .) ;;
        *) _norm=${1%/}; return 0 ;;
    esac
    _n=$1/
    _norm=
    while [ -n "$_n" ]; do
        _c=${_n%%/*}
        _n=${_n#*/}
        case $_c in "" | .) ;; *) _norm=${_norm:+$_norm/}$_c ;; esac
    done
}

check_listing() { # names and types of every entry, before anything is unpacked
    tar_quoting
    # shellcheck disable=SC2086 # $tar_escapes is one option or none
    if ! untar -tf - $tar_escapes >"$work/.names" 2>"$work/.tarerr"; then
        if grep -q -e 'memory exhausted' -e 'out of memory' "$work/.tarerr"; then
            refuse "an extended tar header is larger than any bundle needs"
        fi
        cat "$work/.tarerr" >&2
        die_with 3 "$archive is truncated or corrupt: it cannot be read to its end."
    fi
    # shellcheck disable=SC2086
    untar -tvf - $tar_escapes >"$work/.long" || die_with 3 "$archive is truncated or corrupt: it cannot be read to its end."
    [ "$(wc -l <"$work/.names")" = "$(wc -l <"$work/.long")" ] || refuse "its listing cannot be read"
    if [ -n "$tar_escapes" ] && grep -q '[\]' "$work/.names"; then
        # Every line of deploy.sh's lists is one name: a newline inside one cannot be told apart.
        _nl=$(sed -e 's/\\\\//g' "$work/.names" | grep -n '\\n' | head -n 1)
        [ -z "$_nl" ] || refuse "'$(sed -n "${_nl%%:*}p" "$work/.names")' has a newline in its name, which deploy.sh cannot deploy (shipenv deploy can)"
        unescape_names "$work/.names" >"$work/.names.tmp" && mv -f -- "$work/.names.tmp" "$work/.names"
    fi
    _first=$(head -n 1 "$work/.names")
    plain_path "$_first"
    top=${_norm%%/*}
    valid_name "$top" || refuse "its first entry '${_first%/}' is not under a NAME-VERSION/ directory"
    cut -c1-10 "$work/.long" | paste -d ' ' - "$work/.names" >"$work/.entries"
    # Each entry's size, from tar -tv's size column (after mode and owner, in GNU tar and busybox alike).
    sed 's/^[^ ]* *[^ ]* *\([0-9]*\) .*/\1/' "$work/.long" >"$work/.sizes"
    : >"$work/.tarsizes"
    # busybox tar lists a hard link as a plain file "NAME -> TARGET"; GNU tar as type h.
    _hard=$(grep -n '^-.* -> ' "$work/.long" | head -n 1)
    if [ -n "$_hard" ]; then
        refuse "'$(sed -n "${_hard%%:*}p" "$work/.names")' is a hard link; a bundle holds only files, directories and symlinks"
    fi
    : >"$work/.dirs"
    : >"$work/.files"
    : >"$work/.links"
    # As shipenv build writes it and shipenv deploy reads it: directories, then manifest.json and
    # RECORD before any other file. The names tar must be given to unpack them alone are kept.
    head_names=
    facts_name=
    _head=0
    while IFS= read -r _line && IFS= read -r _size <&4; do
        _mode=${_line%% *}
        _raw=${_line#* }
        _raw=${_raw%/}
        case $_raw in
            /*) refuse "entry '$_raw' is an absolute path" ;;
        esac
        plain_path "$_raw"
        _name=$_norm
        case /$_name/ in
            */../*) refuse "entry '$_raw' climbs out of its directory with '..'" ;;
        esac
        case $_name in
            "$top") _rel= ;;
            "$top"/*) _rel=${_name#"$top"/} ;;
            *) refuse "entry '$_raw' is outside $top/" ;;
        esac
        if [ "$_head" -lt 2 ] && [ "${_mode#d}" = "$_mode" ]; then
            case $_mode in -*) ;; *) _name=//not-the-head ;; esac
            case $_name in
                "$top/.shipenv/manifest.json" | "$top/.shipenv/RECORD") _head=$((_head + 1)) ;;
                *) refuse "it does not start with $top/.shipenv/manifest.json and .shipenv/RECORD as shipenv build writes them (found '$_raw' first)" ;;
            esac
            head_names="$head_names${head_names:+
}${_line#* }"
        fi
        # The release itself is a directory: a file or link in its place is refused up front.
        [ -n "$_rel" ] || [ "${_mode#d}" != "$_mode" ] || refuse "entry '$top' is not a directory"
        case $_mode in
            ???[sS]* | ??????[sS]*) refuse "'$_raw' has the setuid or setgid bit set" ;;
        esac
        [ "$_rel" != .shipenv/facts ] || facts_name=${_line#* }
        case $_mode in
            d*) printf '%s\n' "$_rel" >>"$work/.dirs" ;;
            -*) printf '%s\n' "$_rel" >>"$work/.files"; printf '%s %s\n' "$_size" "$_rel" >>"$work/.tarsizes" ;;
            l*) printf '%s\n' "$_rel" >>"$work/.files"; printf '%s\n' "$_rel" >>"$work/.links" ;;
            h*) refuse "'$_raw' is a hard link; a bundle holds only files, directories and symlinks" ;;
            c* | b*) refuse "entry '$_raw' is a device node; a bundle holds only files, directories and symlinks" ;;
            p*) refuse "entry '$_raw' is a FIFO; a bundle holds only files, directories and symlinks" ;;
            *) refuse "entry '$_raw' is not a file, directory or symlink" ;;
        esac
    done <"$work/.entries" 4<"$work/.sizes"
    [ "$_head" = 2 ] || refuse "it holds no .shipenv/manifest.json and .shipenv/RECORD: it is not a shipenv bundle"
    # A directory may be listed twice (shipenv deploy only takes its mode again); nothing else may.
    sort -u "$work/.dirs" | cat - "$work/.files" >"$work/.all"
    _dup=$(sort "$work/.all" | uniq -d | head -n 1)
    [ -z "$_dup" ] || refuse "'$top/$_dup' appears twice"
    # Every ancestor directory of every entry; one that is a symlink would be written through.
    sed -n -e ':a' -e 's|/[^/]*$||' -e 't p' -e 'd' -e ':p' -e 'p' -e 'b a' "$work/.all" >"$work/.parents"
    _through=$(grep -Fx -f "$(patterns "$work/.links")" "$work/.parents" | head -n 1)
    [ -z "$_through" ] || refuse "a path would be written through the symlink '$top/$_through'"
    # A parent that is a plain file: tar would stop half-way ("Not a directory"); say it up front.
    grep -Fxv -f "$(patterns "$work/.links")" "$work/.files" >"$work/.regular"
    _below=$(grep -Fx -f "$(patterns "$work/.regular")" "$work/.parents" | head -n 1)
    if [ -n "$_below" ]; then
        while IFS= read -r _c; do
            case $_c in "$_below"/*) refuse "'$top/$_c' would be written below the file '$top/$_below'" ;; esac
        done <"$work/.files"
        refuse "a directory would be made below the file '$top/$_below'"
    fi
}

# Every file's size in the listing against RECORD's, before tar -x writes a byte of it.
check_sizes() {
    # "SIZE PATH" of every file RECORD lists, read as check_record reads RECORD (CSV, quoted names).
    sed -n -e 's/^\([^,"]*\),sha256=[0-9a-f]\{64\},\([0-9]\{1,\}\)$/\2 \1/p' \
        -e 's/^"\(\([^"]*""\)*[^"]*\)",sha256=[0-9a-f]\{64\},\([0-9]\{1,\}\)$/\3 \1/p' "$work/$top/.shipenv/RECORD" |
        sed 's/""/"/g' >"$work/.recsizes"
    # RECORD cannot hold its own size: every other file's "SIZE PATH" must be one of RECORD's.
    _odd=$(grep -Fxv -f "$(patterns "$work/.recsizes")" "$work/.tarsizes" | while IFS= read -r _line; do
        [ "${_line#* }" = .shipenv/RECORD ] || { printf '%s\n' "$_line"; break; }
    done)
    [ -n "$_odd" ] || return 0
    _want=
    while IFS= read -r _line; do
        [ "${_line#* }" = "${_odd#* }" ] && _want=${_line%% *}
    done <"$work/.recsizes"
    refuse "'$top/${_odd#* }' is ${_odd%% *} bytes in the archive but RECORD says ${_want:-nothing}"
}

# BYTES as shipenv prints sizes: decimal units, one decimal (1.5 MB, 80.0 kB).
human() { # BYTES
    for _unit in GB:1000000000 MB:1000000 kB:1000; do
        _scale=${_unit#*:}
        if [ "$1" -ge "$_scale" ]; then
            _tenths=$((($1 * 10 + _scale / 2) / _scale))
            printf '%s.%s %s\n' "$((_tenths / 10))" "$((_tenths % 10))" "${_unit%%:*}"
            return
        fi
    done
    printf '%s bytes\n' "$1"
}

# Before anything is unpacked: RECORD's total, each file in whole 4 KiB blocks as shipenv counts it,
# against the free space df reports for the file system of the directory we are in.
check_space() {
    _need=0
    while read -r _size _path; do
        _blocks=$(((_size + 4095) / 4096))
        _need=$((_need + _blocks * 4))
    done <"$work/.recsizes"
    _free=$(df -P -k . | sed -n '2s/^.* \([0-9][0-9]*\)  *[0-9]*%  *.*$/\1/p')
    if [ -n "$_free" ] && [ "$_need" -gt "$_free" ]; then
        die_with 5 "The disk holding $root has $(human $((_free * 1024))) free but $top needs about $(human $((_need * 1024))); $state."
    fi
}

check_record() {
    _record="$work/$top/.shipenv/RECORD"
    # RECORD is CSV (Python's csv module): a field holding a comma or a quote is quoted, its
    # quotes doubled; names are UTF-8 bytes as they are (tabs, backslashes, any letter).
    _u='[^,"]*'
    _q='"\([^"]*""\)*[^"]*"'
    _h='sha256=[0-9a-f]\{64\},[0-9]\{1,\}'
    _bad=$(grep -v -e "^$_u,$_h\$" -e "^$_q,$_h\$" -e "^$_u,symlink=$_u,\$" -e "^$_q,symlink=$_u,\$" \
        -e "^$_u,\"symlink=\\([^\"]*\"\"\\)*[^\"]*\",\$" -e "^$_q,\"symlink=\\([^\"]*\"\"\\)*[^\"]*\",\$" \
        -e '^\.shipenv/RECORD,,$' "$_record" | head -n 1)
    [ -z "$_bad" ] || refuse "its RECORD has a line deploy.sh cannot read: $_bad"
    # Unquoted fields never hold a quote, so undoubling every "" unquotes the quoted ones.
    sed -n -e 's/^\([^,"]*\),sha256=\([0-9a-f]\{64\}\),[0-9]\{1,\}$/\2  \1/p' \
        -e 's/^"\(\([^"]*""\)*[^"]*\)",sha256=\([0-9a-f]\{64\}\),[0-9]\{1,\}$/\3  \1/p' "$_record" |
        sed 's/""/"/g' >"$work/.sha256"
    # Two lines a symlink: its path, then its target (either may hold a comma).
    sed -n -e 's/^\([^,"]*\),symlink=\([^,"]*\),$/\1\
\2/p' -e 's/^"\(\([^"]*""\)*[^"]*\)",symlink=\([^,"]*\),$/\1\
\3/p' -e 's/^\([^,"]*\),"symlink=\(\([^"]*""\)*[^"]*\)",$/\1\
\2/p' -e 's/^"\(\([^"]*""\)*[^"]*\)","symlink=\(\([^"]*""\)*[^"]*\)",$/\1\
\3/p' "$_record" | sed 's/""/"/g' >"$work/.symlinks"
    sed -n -e 's/^\([^,"]*\),.*/\1/p' -e 's/^"\(\([^"]*""\)*[^"]*\)",.*/\1/p' "$_record" | sed 's/""/"/g' >"$work/.recorded"
    _extra=$(grep -Fxv -f "$(patterns "$work/.recorded")" "$work/.files" | head -n 1)
    [ -z "$_extra" ] || refuse "'$top/$_extra' is not listed in RECORD"
    _missing=$(grep -Fxv -f "$(patterns "$work/.files")" "$work/.recorded" | head -n 1)
    [ -z "$_missing" ] || refuse "RECORD lists '$_missing', which the archive lacks"
    set -f
    while IFS= read -r _path && IFS= read -r _target; do
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
    _file="$work/$top/.shipenv/facts"
    [ -f "$_file" ] || refuse "it holds no $top/.shipenv/facts (it was built by an older shipenv); deploy it with shipenv deploy"
    _want=$(sed -n 's/^\.shipenv\/facts,sha256=\([0-9a-f]*\),[0-9]*$/\1/p' "$work/$top/.shipenv/RECORD")
    _got=$(sha256sum <"$_file")
    if [ -z "$_want" ] || [ "${_got%% *}" != "$_want" ]; then
        refuse "$top/.shipenv/facts differs from its RECORD entry"
    fi
    _name=$(fact name "$_file")
    _version=$(fact version "$_file")
    [ "$_name-$_version" = "$top" ] || refuse "its top directory $top/ does not match the manifest's $_name-$_version"
    _arch=$(fact arch "$_file")
    _host_arch=$(uname -m)
    if [ -n "$_arch" ] && [ "$_arch" != "$_host_arch" ]; then
        die_with 4 "This host is $_host_arch but $top was built for $_arch; deploy it on an $_arch host or build it on $_host_arch."
    fi
    if [ "$(fact libc "$_file")" = bundled ]; then
        # It carries its own glibc: only the kernel that glibc needs matters.
        _kfloor=$(fact kernel_floor "$_file")
        is_version "$_kfloor" || refuse "its manifest has an unreadable kernel floor '$_kfloor'"
        _kernel=$(uname -r | sed 's/[^0-9.].*//')
        if is_version "$_kernel" && ! version_ge "$_kernel" "$_kfloor"; then
            die_with 4 "This host runs Linux $_kernel but $top carries glibc $(fact glibc "$_file"), which needs Linux $_kfloor or newer; deploy it on a newer kernel."
        fi
        return 0
    fi
    _floor=$(fact glibc_floor "$_file")
    [ -n "$_floor" ] || return 0
    is_version "$_floor" || refuse "its manifest has an unreadable glibc floor '$_floor'"
    _have=$(host_glibc)
    if [ -z "$_have" ]; then
        refuse_glibc "This host has no glibc (or deploy.sh cannot tell its version) but $top needs glibc $_floor or newer; deploy it on a glibc-based distribution, or set SHIPENV_HOST_GLIBC=X.Y if it has one."
    fi
    is_version "$_have" || die "Cannot read this host's glibc version ('$_have'); set SHIPENV_HOST_GLIBC=X.Y."
    version_ge "$_have" "$_floor" ||
        refuse_glibc "This host has glibc $_have but $top needs $_floor or newer; deploy it on a newer distribution or rebuild it on an older one."
}

verify_unpacked() {
    _dir="$work/$top"
    if ! (cd -P -- "$_dir" && sha256sum -c) <"$work/.sha256" >"$work/.sumout" 2>&1; then
        _failed=$(grep ': FAILED' "$work/.sumout" | sed 's/: FAILED.*//')
        _count=$(printf '%s\n' "$_failed" | grep -c .)
        _failed=$(printf '%s\n' "$_failed" | head -n 3 | sed -e ':a' -e 'N' -e 's/\n/, /' -e 't a')
        refuse "$_count file(s) differ from RECORD: $_failed"
    fi
    set -f
    # Whole lines: read would trim a name's leading and trailing spaces, and
    # sha256sum -c follows a symlink named " lib/x" to its target's bytes.
    while IFS= read -r _line; do
        _path=${_line#*  }
        [ ! -L "$_dir/$_path" ] || refuse "'$top/$_path' is a symlink but RECORD lists it as a file"
    done <"$work/.sha256"
    _real_dir=$(cd -P -- "$_dir" && pwd)
    if realpath -m / >/dev/null 2>&1; then _resolve="realpath -m"; else _resolve="readlink -f"; fi
    while IFS= read -r _path && IFS= read -r _target; do
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
        die "The check '$check' failed in $top; ${state#nothing was deployed and }."
    fi
}

cmd_deploy() {
    [ $# -ge 2 ] || usage
    archive=$1
    _root_arg=$2
    shift 2
    parse_options "$@"
    if [ -n "$to_given" ] || [ -n "$keep" ]; then usage; fi
    [ ! -d "$archive" ] || usage_error "$archive is a directory, not a bundle archive."
    [ -f "$archive" ] || usage_error "$archive is not a file."
    case $archive in /*) ;; *) archive=$(pwd -P)/$archive ;; esac
    need tar sed grep sha256sum od tr cut paste sort uniq mktemp readlink mv ln date stat id df chmod
    pick_decompressor
    # The root's trust policy before anything in the root is written (open_root with create makes it).
    identity=
    key=
    signer=
    if [ -e "$_root_arg/allowed_signers" ] || [ -L "$_root_arg/allowed_signers" ]; then
        open_root "$_root_arg"
        check_signature
    fi
    open_root "$_root_arg" create
    current_state "nothing was deployed and "
    previous=$_c
    if [ "${releases_id%%:*}" != "$(stat -c %d -- "$root")" ]; then
        # A release moves in with one atomic rename, never a copy across file systems.
        die_with 5 "$root/releases is on another file system than $root; $state."
    fi
    take_lock
    check_history
    clean_stale
    work_path=$(mktemp -d "$root/.deploy-XXXXXXXXXX" 2>&1) || { _e=$work_path; work_path=; io_fail "$_e"; }
    # From here on the new release is reached relative to the directory we made, not by its path.
    cd -P -- "$work_path" || die "Cannot enter $work_path."
    work=.

    check_listing
    # By the names the archive gives them ("./app-1.0/.shipenv/RECORD" too), one a line.
    _old_ifs=$IFS
    IFS='
'
    set -f
    # shellcheck disable=SC2086
    untar -xof - -C "$work" $head_names ||
        refuse "it does not hold $top/.shipenv/manifest.json and RECORD: it is not a shipenv bundle"
    IFS=$_old_ifs
    set +f
    if [ -n "$facts_name" ]; then
        untar -xof - -C "$work" "$facts_name" || refuse "its $top/.shipenv/facts cannot be read"
    fi
    check_host
    check_record
    check_sizes

    final="$root/releases/$top"
    if [ -e "$final" ] || [ -L "$final" ]; then
        _old=
        if release_version "$top" >/dev/null; then _old=$(sha256sum <"$final/.shipenv/RECORD" 2>/dev/null); fi
        _new=$(sha256sum <"$work/$top/.shipenv/RECORD")
        [ "$_old" = "$_new" ] ||
            die "$final already exists with different content than $(basename -- "$archive"); a version is deployed only once."
        if [ "$previous" = "$top" ]; then
            printf '%s\n' "$top is already deployed with the same content and is current in $root; nothing changed."
            return 0
        fi
        run_check "$final"
        still_verified
        switch_to "$top"
        append_history deploy "$previous" "$top" "$key" "$signer"
        printf '%s\n' "$top was already unpacked with the same content; switched $root/current from ${previous:-nothing} to $top."
        return 0
    fi

    rm -rf -- "${work:?}/${top:?}"
    check_space
    printf '%s\n' "Unpacking $top and checking every file against its RECORD" >&2
    _err=$(untar -xof - -C "$work" 2>&1) || {
        case $_err in
            *"No space left"* | *"quota exceeded"* | *"Read-only"* | *"Permission denied"* | *"too long"*) io_fail "$_err" ;;
        esac
        die "Cannot unpack $top into $root (is its disk full?); $state."
    }
    # Modes masked as shipenv does: no group/other write, no sticky bit (setuid/setgid were refused).
    io chmod -R go-w,a-t -- "$work/$top"
    verify_unpacked
    run_check "$work/$top"
    still_verified
    sync
    if [ -e "$final" ] || [ -L "$final" ]; then die "$final appeared while $top was unpacked; $state."; fi
    _src=$(stat -c '%d:%i' -- "$top")
    enter_releases
    [ "$(stat -c '%d:%i' -- "$work_path/$top" 2>/dev/null)" = "$_src" ] || die "$work_path was changed while $top was unpacked; $state."
    io mv -T -- "$work_path/$top" "$top"
    switch_to "$top"
    append_history deploy "$previous" "$top" "$key" "$signer"
    _count=$(wc -l <"$work_path/.files")
    if [ -n "$previous" ]; then
        printf '%s\n' "Deployed $top and switched $root/current from $previous to $top ($((_count)) files)."
    else
        printf '%s\n' "Deployed $top and pointed $root/current to it ($((_count)) files)."
    fi
}

# cd into releases/, the very directory open_root checked (not a link swapped in since).
enter_releases() {
    if ! cd -P -- "$root/releases" 2>/dev/null || [ "$(stat -c '%d:%i' .)" != "$releases_id" ]; then
        not_made "$root/releases" directory "$(kind_of "$root/releases")"
    fi
}

# ---- rollback, releases, prune ------------------------------------------------------------------

listing() { # ITEMS...: the first five, "+ N more"
    _out=
    _i=0
    for _x in "$@"; do
        _i=$((_i + 1))
        [ "$_i" -le 5 ] && _out="${_out:+$_out, }$_x"
    done
    [ "$_i" -le 5 ] || _out="$_out (+ $((_i - 5)) more)"
    printf '%s\n' "$_out"
}

find_release() { # VERSION or NAME-VERSION
    _names=$(release_names)
    if release_version "$1" >/dev/null; then
        printf '%s\n' "$1"
        return 0
    fi
    _found=
    for _n in $_names; do
        [ "$(release_version "$_n")" = "$1" ] && _found="$_found $_n"
    done
    # shellcheck disable=SC2086
    set -- "$1" $_found
    [ $# -ne 2 ] || { printf '%s\n' "$2"; return 0; }
    if [ $# -gt 2 ]; then
        _v=$1
        shift
        usage_error "Several releases have version $_v: $(listing "$@"); name one with --to NAME-VERSION."
    fi
    # shellcheck disable=SC2086
    die "There is no release $1 under $root/releases; there are: $(listing $_names | sed 's/^$/none/')."
}

cmd_rollback() {
    [ $# -ge 1 ] || usage
    _root_arg=$1
    shift
    parse_options "$@"
    if [ -n "$check" ] || [ -n "$keep" ]; then usage; fi
    if [ -n "$to_given" ] && [ -z "$to" ]; then usage_error "--to needs a version or a NAME-VERSION."; fi
    need readlink mv ln date sed stat id
    open_root "$_root_arg"
    current_state ""
    take_lock
    check_history
    clean_stale
    _cur=$(current_name) || exit 1
    [ -n "$_cur" ] || die "$root/current does not exist, so there is nothing to roll back from."
    if [ -n "$to_given" ]; then
        _target=$(find_release "$to") || exit $?
        [ "$_target" != "$_cur" ] || die "$_target is already current in $root; nothing changed."
        _action=rollback-to
    else
        _target=$(rollback_target) || exit $?
        [ -n "$_target" ] || die "There is no earlier release to roll back to from $_cur in $root."
        _action=rollback
    fi
    check_rollback_trust "$_target"
    _signed=$(signed_by "$_target")
    switch_to "$_target"
    if [ -n "$_signed" ]; then
        append_history "$_action" "$_cur" "$_target" "${_signed%% *}" "${_signed#* }"
    else
        append_history "$_action" "$_cur" "$_target"
    fi
    printf '%s\n' "Switched $root/current from $_cur to $_target."
}

# "MARK NAME TIME" per release, most recently current first (MARK * current, < rollback, . other).
release_rows() {
    _cur=$(current_name) || exit 1
    _back=$(rollback_target) || exit 1
    # "INDEX TIME MARK NAME": the last time each release became current.
    _rows=$(history_rows | cat -n) || exit 1
    for _n in $(release_names); do
        _last=$(printf '%s\n' "$_rows" | while read -r _i _a _f _t _w; do
            [ "$_t" = "$_n" ] && printf '%s %s\n' "$_i" "$_w"
        done | tail -n 1)
        _mark=.
        [ "$_n" = "$_cur" ] && _mark='*'
        [ "$_n" = "$_back" ] && _mark='<'
        printf '%s %s %s\n' "${_last:-0 -}" "$_mark" "$_n"
    done | sort -k1,1nr -k4,4r | while read -r _i _w _mark _n; do
        printf '%s %s %s\n' "$_mark" "$_n" "$_w"
    done
}

cmd_releases() {
    [ $# -eq 1 ] || usage
    need readlink sed stat id
    if [ ! -d "$1/releases" ] && [ ! -L "$1/releases" ]; then
        printf '%s\n' "No releases under $1."
        return 0
    fi
    open_root "$1"
    _listed=$(release_rows) || exit 1
    [ -n "$_listed" ] || { printf '%s\n' "No releases under $1."; return 0; }
    printf '%s\n' "$_listed" | while read -r _mark _n _w; do
        [ "$_mark" = . ] && _mark=' '
        _signed=$(signed_by "$_n")
        if [ -n "$_signed" ]; then _signed="  signed by ${_signed#* } (${_signed%% *})"; fi
        printf '%s %-30s %s%s\n' "$_mark" "$_n" "$_w" "$_signed"
    done
    printf '%s\n' "(* current, < where rollback goes)"
}

# Removes all but the KEEP most recently current releases, never current nor the rollback target.
cmd_prune() {
    [ $# -ge 1 ] || usage
    _root_arg=$1
    shift
    parse_options "$@"
    if [ -n "$check" ] || [ -n "$to_given" ] || [ -z "$keep" ]; then usage; fi
    case $keep in *[!0-9]*) usage_error "--keep $keep is not a number." ;; esac
    [ "$keep" -ge 1 ] || usage_error "--keep $keep: keep at least 1 release (the current one)."
    need readlink mv sed stat id mktemp
    open_root "$_root_arg"
    current_state ""
    take_lock
    check_history
    clean_stale
    _rows=$(release_rows) || exit 1
    enter_releases
    _removed=
    _kept=
    _i=0
    set -f
    for _row in $(printf '%s\n' "$_rows" | sed 's/ /:/g'); do
        _i=$((_i + 1))
        _mark=${_row%%:*}
        _n=${_row#*:}
        _n=${_n%%:*}
        if [ "$_i" -le "$keep" ] || [ "$_mark" != . ]; then
            _kept="${_kept:+$_kept, }$_n"
            continue
        fi
        # Renamed away first (one name to another in releases/, no path to redirect), so a
        # crash never leaves a half-deleted release; rm -rf never follows a link.
        _trash=".prune-$$-$_n"
        io mv -T -- "$_n" "$_trash"
        io rm -rf -- "$_trash"
        _removed="${_removed:+$_removed, }$_n"
    done
    set +f
    if [ -n "$_removed" ]; then
        printf '%s\n' "Removed $_removed from $root/releases; kept $_kept."
    else
        printf '%s\n' "Nothing to prune in $root/releases: kept ${_kept:-nothing}."
    fi
}

parse_options() {
    check=
    to=
    to_given=
    keep=
    wait=0
    while [ $# -gt 0 ]; do
        case $1 in
            --check) [ $# -ge 2 ] || usage; check=$2; shift 2 ;;
            --to) [ $# -ge 2 ] || usage; to=$2; to_given=1; shift 2 ;;
            --keep) [ $# -ge 2 ] || usage; keep=$2; shift 2 ;;
            --wait) [ $# -ge 2 ] || usage; wait=$2; shift 2 ;;
            *) usage ;;
        esac
    done
    case $wait in "" | *[!0-9.]*) usage_error "--wait $wait is not a number of seconds." ;; esac
}

main() {
    [ $# -ge 1 ] || usage
    work=
    work_path=
    locked=
    root=
    state="nothing was changed"
    trap on_exit EXIT
    trap 'exit 130' INT TERM HUP
    _command=$1
    shift
    case $_command in
        deploy) cmd_deploy "$@" ;;
        rollback) cmd_rollback "$@" ;;
        releases) cmd_releases "$@" ;;
        prune) cmd_prune "$@" ;;
        -h | --help | help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0" 2>/dev/null || usage ;;
        *) usage ;;
    esac
}

# Everything above is only definitions. When the script is piped into `sh -s`,
# its stdin is the script itself: no command may read it, hence </dev/null.
main "$@" </dev/null
