#!/bin/sh
# shipenv: the "${name}" command of a --libc bundled bundle.
#
# libexec/${name} is the ELF executable a package shipped as bin/${name}; it
# needs glibc, so it runs through the bundled loader, which finds the bundled
# glibc through --library-path (no environment variable: nothing leaks into
# what it starts). It sees argv[0] as it was called.
# locate.sh: $$d becomes the directory of this file, symlinks followed.
${locate}exec "$$d/../lib/${loader}" --inhibit-cache --library-path "$$d/../lib" --argv0 "$$0" "$$d/../libexec/${name}" "$$@"
