#!/bin/sh
# shipenv: bin/python of a relocatable bundle.
#
# Finds the bundle from this file's own location (symlinks followed, so
# /usr/local/bin/python -> /srv/app/current/bin/python works), then runs the
# bundle's real interpreter with -E -s: the host's PYTHONPATH, PYTHONHOME and
# user site-packages cannot change what the bundle imports. Nothing is
# exported: the environment the bundle's children see is the caller's.
# bin/python${xy} is the real interpreter, for images without a shell.
# A --libc bundled bundle carries its own loader in lib/: then the interpreter
# runs through it (its --library-path is no environment variable, so nothing
# leaks into children; --argv0 makes sys.executable this launcher).
# locate.sh: $$d becomes the directory of this file, symlinks followed.
${locate}${through_loader}"$$d/python${xy}" -E -s "$$@"
${launcher_env}exec "$$d/python${xy}" -E -s "$$@"
