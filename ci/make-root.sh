#!/usr/bin/env bash
# Build, once per machine, a root file system the integration tests chroot
# into to play "the server" or "the runtime stage of a container image".
#
#   ci/make-root.sh glibc      only the host's glibc: a distroless root, no shell
#   ci/make-root.sh bookworm   debootstrap minbase Debian 12 (glibc 2.36)
#   ci/make-root.sh bullseye   debootstrap minbase Debian 11 (glibc 2.31)
#   ci/make-root.sh busybox    only a static busybox (Debian's busybox-static): no libc at all
#   ci/make-root.sh musl       Debian's musl libc plus a static busybox, as on Alpine
#
# The root lands in ${SHIPENV_ROOTS:-/var/cache/shipenv-ci/roots}/KIND and is
# reused while KIND.stamp beside it names the same recipe. Tests never write
# into it: tests/chroots.py runs them on an overlay above it.
set -euo pipefail

# Bump when the recipe below changes: every root built by an older recipe is
# then rebuilt on its next use instead of silently lacking the change.
readonly RECIPE=1

# What a distroless image carries of glibc; DESIGN.md measured that a copied
# interpreter starts with exactly these.
readonly GLIBC_LIBS=(
    libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2
    librt.so.1 libutil.so.1 libresolv.so.2
)
readonly MULTIARCH=x86_64-linux-gnu
# Packages a Debian root gets beyond minbase, and a file that shows each is
# there (extras below): bookworm plays a server whose deploy.sh checks signatures with
# ssh-keygen (tests/integration/test_trust.py). A cached root built before a
# package was listed gets it added in place (top_up) instead of being rebuilt.

die() { echo "make-root: $*" >&2; exit 1; }

kind=${1:-}
case $kind in
    glibc | bookworm | bullseye | busybox | musl) ;;
    *) echo "usage: $0 glibc|bookworm|bullseye|busybox|musl" >&2; exit 2 ;;
esac
[[ $(id -u) == 0 ]] || die "must run as root (mknod, debootstrap and chroot need it)"

roots=${SHIPENV_ROOTS:-/var/cache/shipenv-ci/roots}
mkdir -p "$roots"
roots=$(cd "$roots" && pwd -P) # debootstrap wants absolute paths
# debootstrap itself breaks on a target with a space in it (its chroot step
# fails half way); say so up front rather than after a minute of downloads.
if [[ $kind != glibc && $kind != busybox && $kind != musl && $roots == *[[:space:]]* ]]; then
    die "SHIPENV_ROOTS='$roots' contains whitespace, which debootstrap cannot build in"
fi
final=$roots/$kind
stamp=$roots/$kind.stamp
log=$roots/$kind.log
tmp=$roots/.$kind.tmp

# Two test runs on one machine may both ask for a missing root; the second
# waits and then finds it built instead of building over the first.
exec 9>"$roots/.$kind.lock"
flock 9

# The first line of the stamp says which recipe (and for glibc, which host
# libc6 package) built the root; when it differs, the root is stale.
if [[ $kind == glibc ]]; then
    key="shipenv-ci-root recipe=$RECIPE kind=$kind libc6=$(dpkg-query -W -f='${Version}' libc6)"
else
    key="shipenv-ci-root recipe=$RECIPE kind=$kind"
fi

extras() { # "PACKAGE:FILE ..." for a kind
    case $1 in
        bookworm) echo "openssh-client:/usr/bin/ssh-keygen" ;;
    esac
}

# Install the listed packages missing from a cached root with the root's own apt.
top_up() {
    local dir=$1 entry missing=()
    for entry in $(extras "$kind"); do
        [[ -e $dir/${entry#*:} ]] || missing+=("${entry%%:*}")
    done
    ((${#missing[@]})) || return 0
    echo "make-root: adding ${missing[*]} to the cached $kind root"
    if ! unshare --mount --propagation private -- chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends "$@" && apt-get clean && rm -rf /var/lib/apt/lists/*' \
        sh "${missing[@]}" </dev/null >>"$log" 2>&1; then
        tail -n 25 "$log" >&2
        die "installing ${missing[*]} into the $kind root failed; full log in $log"
    fi
}

if [[ -d $final && -f $stamp && $(head -n 1 "$stamp") == "$key" ]]; then
    top_up "$final"
    echo "make-root: $kind cached at $final ($(sed -n 2p "$stamp"))"
    exit 0
fi

# Remove a tree without ever leaving its file system: should a mount have
# survived inside it (it cannot, see unshare below, but a half-built root may
# come from an older script), rm stops with an error instead of emptying the
# host's /proc or /dev.
remove_tree() {
    [[ -e $1 ]] || return 0
    rm -rf --one-file-system -- "$1"
}

# The mirror apt on this machine already uses for its own release (deb822
# .sources and one-line .list files), so the roots come from where the
# machine's packages come from.
host_mirror() {
    local codename
    # shellcheck source=/dev/null  # a system file, read for VERSION_CODENAME only
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || return 0
    {
        awk -v cn="$codename" '
            function flush() {
                if (uris != "" && on && (" " suites " ") ~ (" " cn " ")) print uris
                uris = ""; suites = ""; on = 1
            }
            BEGIN { on = 1 }
            FNR == 1 { flush() }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "uris:" { uris = $2 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            tolower($1) == "enabled:" && tolower($2) == "no" { on = 0 }
            END { flush() }
        ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
        awk -v cn="$codename" '
            $1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == cn) print $i
            }
        ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
    } | sed 's:/*$::' | head -n 1
}

# First mirror that serves the suite: the host's, then Debian's CDN, then the
# archive that takes over once a release leaves the mirrors.
pick_mirror() {
    local suite=$1 m
    for m in "$(host_mirror)" http://deb.debian.org/debian http://archive.debian.org/debian; do
        [[ -n $m ]] || continue
        if curl -fsS --max-time 30 -o /dev/null "$m/dists/$suite/Release" 2>/dev/null; then
            echo "$m"
            return 0
        fi
    done
    return 1
}

build_glibc() {
    local dir=$1 lib
    mkdir -p "$dir/lib/$MULTIARCH" "$dir/lib64" "$dir"/{proc,tmp,dev,etc,srv}
    chmod 1777 "$dir/tmp"
    # -L: the host's /lib is a merged-usr symlink and its libraries may be
    # symlinks too; the root gets plain files in plain directories.
    for lib in "${GLIBC_LIBS[@]}"; do
        cp -L -- "/lib/$MULTIARCH/$lib" "$dir/lib/$MULTIARCH/$lib"
    done
    cp -L -- /lib64/ld-linux-x86-64.so.2 "$dir/lib64/ld-linux-x86-64.so.2"
    mknod -m 666 "$dir/dev/null" c 1 3
    info="glibc $(dpkg-query -W -f='${Version}' libc6) copied from the host"
}

# Unpack Debian packages of this machine's release into DIR without installing
# them on the host (busybox-static conflicts with the host's busybox).
unpack_debs() {
    local dir=$1 pkg deb
    shift
    mkdir -p "$roots/.debs/download"
    for pkg in "$@"; do
        # apt-get download writes into the current directory; _apt cannot
        # write into a root-only cache, which apt only warns about.
        (cd "$roots/.debs/download" && apt-get download -q "$pkg" >>"$log" 2>&1) ||
            die "apt-get download $pkg failed; full log in $log"
        # Newest download first; Debian package file names are plain [a-z0-9.+~_-], so ls is safe here.
        # shellcheck disable=SC2012
        deb=$(ls -t "$roots/.debs/download/${pkg}_"*.deb | head -n 1)
        dpkg-deb -x "$deb" "$dir"
        info="$info, $pkg $(dpkg-deb -f "$deb" Version)"
    done
}

# A root with a static busybox and no libc: what an image "FROM busybox"
# (or Alpine, with musl added) gives, including the /etc files a container
# runtime writes. Nothing in it can run a glibc program.
build_busybox() {
    local dir=$1 applet
    shift
    mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,proc,tmp,dev,etc,srv,root}
    chmod 1777 "$dir/tmp"
    : >"$log"
    info=
    unpack_debs "$dir" busybox-static "$@"
    rm -rf -- "${dir:?}/usr/share"
    # Every applet as a symlink, where busybox itself says it belongs.
    for applet in $("$dir/bin/busybox" --list-full); do
        [[ -e $dir/$applet || -L $dir/$applet ]] || ln -s /bin/busybox "$dir/$applet"
    done
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$dir/etc/hosts"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$dir/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
    mknod -m 666 "$dir/dev/null" c 1 3
    info="static busybox, no glibc$info"
}

build_debian() {
    local suite=$1 dir=$2 mirror
    command -v debootstrap >/dev/null || die "debootstrap is missing: run ci/setup.sh (or apt-get install debootstrap)"
    mirror=$(pick_mirror "$suite") || die "no mirror serves $suite (tried the host's, deb.debian.org, archive.debian.org)"
    mkdir -p "$roots/.debs"
    # A private mount namespace: the /proc and /sys debootstrap mounts inside
    # the target die with it, even when it is killed half way.
    local include=() entry
    for entry in $(extras "$suite"); do include+=("${entry%%:*}"); done
    if ! unshare --mount --propagation private -- \
        debootstrap --variant=minbase --cache-dir="$roots/.debs" ${include:+--include="$(IFS=,; echo "${include[*]}")"} \
        "$suite" "$dir" "$mirror" </dev/null >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        die "debootstrap $suite from $mirror failed; full log in $log"
    fi
    info="glibc $(dpkg-query --admindir="$dir/var/lib/dpkg" -W -f='${Version}' libc6) from $mirror"
}

start=$SECONDS
# Stamp first, root second: a root without a stamp is never taken as built.
rm -f -- "$stamp"
remove_tree "$tmp"
trap 'remove_tree "$tmp"' EXIT
info=
case $kind in
    glibc) build_glibc "$tmp" ;;
    busybox) build_busybox "$tmp" ;;
    musl) build_busybox "$tmp" musl ;;
    *) build_debian "$kind" "$tmp" ;;
esac
remove_tree "$final"
mv -T -- "$tmp" "$final"
printf '%s\n%s, built %s\n' "$key" "$info" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$stamp.new"
mv -f -- "$stamp.new" "$stamp"
echo "make-root: built $kind in $((SECONDS - start)) s at $final ($info)"
