"""The build side: turn sources and a base Python into a relocatable tree, then an archive.

Stages, in the order :mod:`~shipenv.build.pipeline` runs them::

    install.resolve_sources   what goes in (venv, requirements, wheelhouse, project)
    interpreter               inspect the base Python and copy it
    install / resolver / venv wheels through installer, resolution through uv or pip
    relocate (+ patch, policy) plan ELF and shebang edits as data, then apply them
    launchers                 bin/python, console scripts, --entry commands
    bytecode                  byte-compile with the bundle's own interpreter
    audit                     remaining build-host paths, classified
    cache                     content-addressed layers of all the above
    layering                  layers made on threads, compiled as they come, merged in order
    output                    where the artifact goes, and the staging directory beside it
    dryrun                    build --dry-run: the same plan as data, nothing written
    runner                    the one process runner (pip, uv, the probe, the byte-compiler)

This package may import :mod:`shipenv.bundle`; it never imports :mod:`shipenv.deploy`.
"""
