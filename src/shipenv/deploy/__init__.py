"""The server side: releases under a root, the atomic switch, rollback, prune, modulefiles.

``releases`` (deploy: the host check, unpacking, the switch; it also
re-exports the other commands), ``rollback`` (listing, rollback, prune),
``extract`` (unpacking through :mod:`shipenv.bundle.reader` and
:mod:`shipenv.bundle.unpack`, sharing unchanged files with the current
release, the free-space check), ``layout``
(the root: who may own it, ``current``, the history, what a release is), ``fs``
(operations in the root by directory descriptor, never through a symlink;
OS errors as sentences), ``lock`` (one deploy at a time per root; the opened, locked root every change starts from), ``modulefile``. ``templates/deploy.sh`` is the same
contract in POSIX sh.

May import :mod:`shipenv.bundle`; never imports :mod:`shipenv.build`, so a
server needs none of the build dependencies' code paths.
"""
