#!/bin/sh
# shipenv: bin/python of a relocatable bundle.
#
# Finds the bundle from this file's own location (symlinks followed, so
# /usr/local/bin/python -> /srv/app/current/bin/python works), then runs the
# bundle's real interpreter with -E -s: the host's PYTHONPATH, PYTHONHOME and
# user site-packages cannot change what the bundle imports. Nothing is
# exported: the environment the bundle's children see is the caller's.
# bin/python${xy} is the real interpreter, for images without a shell.
p=$$0
while [ -h "$$p" ]; do
    t=$$(readlink -- "$$p")
    case $$t in
        /*) p=$$t ;;
        *) p=$${p%/*}/$$t ;;
    esac
done
case $$p in */*) d=$${p%/*} ;; *) d=. ;; esac
d=$$(cd -P -- "$$d" && pwd -P) || exit 127
${launcher_env}exec "$$d/python${xy}" -E -s "$$@"
