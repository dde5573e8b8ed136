#!/bin/sh
# examples/webapp as a container image, with no Docker engine and no Dockerfile:
# shipenv writes the OCI image itself; skopeo pulls the base and pushes the result.
#
#   sh examples/container/oci.sh registry.example.com/webapp
#
# tests/integration/test_oci.py builds, inspects, unpacks, pushes, pulls and runs
# such an image (with a glibc-only base made in the test instead of distroless).
set -eu
dest=${1:?usage: oci.sh REGISTRY/REPOSITORY}
cd "$(dirname "$0")/../webapp"

# The base, once: distroless has glibc, OpenSSL and CA certificates, no shell, no Python.
[ -d distroless ] || skopeo copy docker://gcr.io/distroless/base-debian12 oci:distroless:latest

# dist/webapp-0.1.0.oci/: the base's layers, then interpreter, packages and app layers.
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 1577836800)
export SOURCE_DATE_EPOCH
shipenv build . --format oci --base oci:distroless:latest --max-glibc 2.36 -o dist/

skopeo inspect oci:dist/webapp-0.1.0.oci:webapp:0.1.0
skopeo copy oci:dist/webapp-0.1.0.oci:webapp:0.1.0 "docker://$dest:0.1.0"
