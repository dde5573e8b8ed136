#!/bin/sh
# shipenv: bin/python of a relocatable bundle.
#
# Finds the bundle from this file's own location (symlinks followed, so
# /usr/local/bin/python -> /srv/app/current/bin/python works), then runs the
# bundle's real interpreter with -E -s: the host's PYTHONPATH, PYTHONHOME and
# user site-packages cannot change what the bundle imports. Nothing is
# exported: the environment the bundle's children see is the caller's.
# bin/python${xy} is the real interpreter, for images without a shell.
# locate.sh: $$d becomes the directory of this file, symlinks followed.
${locate}${launcher_env}exec "$$d/python${xy}" -E -s "$$@"
