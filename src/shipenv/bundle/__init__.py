"""What a bundle is, shared by the build and the deploy side.

``manifest`` (manifest.json and RECORD), ``archive`` and ``codecs`` (the
deterministic writers and the streaming decompressors), ``reader`` (the one
archive reader and its refusal rules), ``unpack`` (the one writer of a checked
archive to disk), ``elf`` (read-only ELF facts) and ``verify`` (inspect and
verify a bundle).

Imports nothing from :mod:`shipenv.build` or :mod:`shipenv.deploy`.
"""
