#!/bin/sh
''':'
# shipenv launcher for the "${name}" command (${target}).
# As a shell script it finds the bundle from its own location (symlinks
# followed) and runs the bundle's interpreter on this file; as Python it is the
# entry point itself, so `bin/python${xy} bin/${name}` works without a shell.
# locate.sh: $$d becomes the directory of this file, symlinks followed.
${locate}${launcher_env}exec "$$d/python${xy}" -E -s "$$d/$${p##*/}" "$$@"
'''
${main}