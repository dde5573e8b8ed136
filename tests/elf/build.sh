#!/usr/bin/env bash
# Rebuild the tiny ELF files tests/unit/test_elf.py and test_patch.py read.
#
# The files are committed, so the tests need no compiler and always see the
# same bytes; this script documents how they were made (as pypa/packaging
# does for its ELF fixtures). Run it from anywhere on x86_64 Debian 12 with
# gcc and binutils (ci/setup.sh installs gcc), then commit the result:
#
#   bash tests/elf/build.sh
#
# libfoo.so.1      x86_64 shared library: SONAME libfoo.so.1, DT_RUNPATH
#                  $ORIGIN/../lib:/opt/foo/lib, no NEEDED (it calls nothing)
# app              x86_64 executable: NEEDED libfoo.so.1 and libc.so.6, a
#                  DT_RPATH naming a build-host directory (the loader will not
#                  find libfoo.so.1 beside it), and glibc symbol versions
#                  (GLIBC_2.2.5 and GLIBC_2.34 from linking against glibc 2.36)
# app-merged       like app, but its DT_RPATH ends in "libfoo.so.1", so the
#                  linker can store NEEDED libfoo.so.1 as the tail of the RPATH
#                  string: an in-place rewrite must not clobber it
# libplain32.so    i386 (ELFCLASS32) shared library without libc, no search path
set -euo pipefail

cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

# Small, stripped, no build id: the bytes depend only on the toolchain.
flags=(-Os -s -Wl,--build-id=none -Wl,--hash-style=gnu -Wl,-z,noseparate-code)

cat >"$work/foo.c" <<'C'
int foo(int x) { return x * 2 + 1; }
C
cat >"$work/app.c" <<'C'
#include <stdio.h>
#include <string.h>
int foo(int x);
int main(int argc, char **argv) {
    char buf[32];
    memcpy(buf, "foo says", 9);
    printf("%s %d\n", buf, foo(argc + (argv[0] != NULL)));
    return 0;
}
C
cat >"$work/plain.c" <<'C'
int plain(int x) { return x + 1; }
C

gcc "${flags[@]}" -shared -fPIC -Wl,-soname,libfoo.so.1 -Wl,--enable-new-dtags \
    -Wl,-rpath,'$ORIGIN/../lib:/opt/foo/lib' -o libfoo.so.1 "$work/foo.c"
# --disable-new-dtags: DT_RPATH, as old toolchains and many wheels have it.
gcc "${flags[@]}" -Wl,--disable-new-dtags -Wl,-rpath,/build/host/toolchain/lib -o app "$work/app.c" -L. -l:libfoo.so.1
gcc "${flags[@]}" -Wl,--disable-new-dtags -Wl,-rpath,/build/host/libfoo.so.1 -o app-merged "$work/app.c" -L. -l:libfoo.so.1
gcc -m32 -Os -fPIC -c -o "$work/plain.o" "$work/plain.c"
ld -m elf_i386 -shared -s --build-id=none -z noseparate-code -o libplain32.so "$work/plain.o"

ls -l libfoo.so.1 app app-merged libplain32.so
