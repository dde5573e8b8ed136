#!/bin/sh
''':'
# shipenv launcher for the "${name}" command (${target}).
# As a shell script it finds the bundle from its own location (symlinks
# followed) and runs the bundle's interpreter on this file; as Python it is the
# entry point itself, so `bin/python${xy} bin/${name}` works without a shell.
# With --libc bundled (a loader in lib/) it runs through the bundled loader.
# locate.sh: $$d becomes the directory of this file, symlinks followed.
${locate}${through_loader}"$$d/python${xy}" -E -s "$$d/$${p##*/}" "$$@"
${launcher_env}exec "$$d/python${xy}" -E -s "$$d/$${p##*/}" "$$@"
'''
${main}