"""The OCI image vocabulary, and reading the base image an image is built on.

A base is given as skopeo names it: ``oci:DIR[:REF]`` (an image layout, for
example what ``skopeo copy docker://gcr.io/distroless/base-debian12
oci:distroless:latest`` wrote) or ``oci-archive:FILE[:REF]`` (the same as one
tar); a bare path is a layout when it is a directory and an archive otherwise.
:func:`read_base` reads only the small JSON documents (index, manifest,
config), checks that the image is for the bundle's architecture, and returns
them as plain data; :func:`copy_layers` later copies the base's layer blobs,
unchanged and verified against their digests, into the new image, so the new
image reuses them by digest. shipenv never talks to a registry: pulling and
pushing is skopeo's job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shipenv.errors import UsageError

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
#: Layer types a base may have, with what they are called in an OCI manifest (Docker's become OCI's: same bytes).
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "application/vnd.oci.image.layer.v1.tar",
    MEDIA_LAYER_GZIP: MEDIA_LAYER_GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": MEDIA_LAYER_GZIP,
}
_MANIFEST_TYPES = (MEDIA_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json")
_INDEX_TYPES = (MEDIA_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"

#: ``uname -m`` (the bundle manifest's arch) to the image-spec's GOARCH and variant.
ARCHES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}
_JSON_LIMIT = 8 << 20  # an index, manifest or config larger than this is not one
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a blob is, its digest and its size."""

    media_type: str
    digest: str  #: "sha256:<hex>"
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class BaseImage:
    """A base image as read from a layout or an archive: its documents as plain data."""

    spec: str  #: what the user gave (``oci:DIR:REF``)
    path: Path
    is_archive: bool
    ref: str | None
    manifest: Descriptor
    config_json: str  #: the base's image config, verbatim
    layers: tuple[Descriptor, ...]

    @property
    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.config_json)
        return data


def platform(machine: str) -> tuple[str, str | None]:
    """GOARCH and variant for a ``uname -m``; refuses an architecture OCI has no name for."""
    try:
        return ARCHES[machine]
    except KeyError:
        raise UsageError(f"The bundle is for {machine}, which has no OCI architecture name shipenv knows.") from None


def parse_spec(spec: str) -> tuple[Path, bool | None, str | None]:
    """``oci:DIR[:REF]`` → (DIR, False, REF); ``oci-archive:FILE`` → (FILE, True, None); a path → (path, None, None)."""
    for prefix, is_archive in (("oci-archive:", True), ("oci:", False)):
        if spec.startswith(prefix):
            path, _, ref = spec[len(prefix) :].partition(":")
            return Path(path), is_archive, ref or None
    return Path(spec), None, None


def read_base(spec: str, machine: str) -> BaseImage:
    """The base image ``spec`` names, checked to be an OCI image for ``machine`` on Linux."""
    path, is_archive, ref = parse_spec(spec)
    if not path.exists():
        raise UsageError(f"The base image {path} does not exist.", hint=_PULL_HINT)
    if is_archive is None:
        is_archive = not path.is_dir()
    goarch, variant = platform(machine)
    with _open(path, is_archive, spec) as reader:
        if _read_json(reader, "oci-layout", spec).get("imageLayoutVersion") is None:
            raise _not_oci(spec, "its oci-layout file has no imageLayoutVersion")
        manifest_desc = _choose(reader, _read_json(reader, "index.json", spec), ref, goarch, spec)
        manifest = _read_json(reader, _blob_name(manifest_desc.digest, spec), spec)
        config_desc = _descriptor(manifest.get("config"), spec)
        config_json = reader.read(_blob_name(config_desc.digest, spec)).decode("utf-8", "replace")
        try:
            config: dict[str, Any] = json.loads(config_json)
        except ValueError:
            raise _not_oci(spec, "its image config is not JSON") from None
    arch, os_name = config.get("architecture"), config.get("os")
    if (arch, os_name) != (goarch, "linux"):
        raise UsageError(
            f"The base image {spec} is for {os_name}/{arch}, but the bundle is for linux/{goarch} ({machine}).",
            hint=f"Pull the base for this architecture: skopeo copy --override-arch {goarch} docker://IMAGE oci:DIR:latest.",
        )
    layers = []
    for raw in manifest.get("layers") or []:
        desc = _descriptor(raw, spec)
        if desc.media_type not in LAYER_TYPES:
            raise _not_oci(spec, f"layer {desc.digest} has the media type {desc.media_type!r}, which is not a layer tar")
        layers.append(Descriptor(LAYER_TYPES[desc.media_type], desc.digest, desc.size))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layers):
        raise _not_oci(spec, f"its config lists {len(diff_ids)} layers but its manifest {len(layers)}")
    return BaseImage(spec, path, is_archive, ref, manifest_desc, config_json, tuple(layers))


def copy_layers(base: BaseImage, blobs: Path) -> None:
    """Copy the base's layer blobs into ``blobs`` (``blobs/sha256``), each checked against its digest."""
    with _open(base.path, base.is_archive, base.spec) as reader:
        for layer in base.layers:
            dest = blobs / layer.digest.split(":", 1)[1]
            if dest.exists():
                continue
            tmp = dest.with_name(dest.name + ".part")
            digest = hashlib.sha256()
            with reader.open(_blob_name(layer.digest, base.spec)) as src, tmp.open("wb") as out:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if f"sha256:{digest.hexdigest()}" != layer.digest:
                tmp.unlink()
                raise UsageError(
                    f"The base image {base.spec} is corrupt: its layer {layer.digest} does not match its digest.",
                    hint=_PULL_HINT,
                )
            os.replace(tmp, dest)


_PULL_HINT = "Pull one with skopeo, for example: skopeo copy docker://gcr.io/distroless/base-debian12 oci:distroless:latest."


def _not_oci(spec: str, why: str) -> UsageError:
    return UsageError(f"The base image {spec} is not an OCI image: {why}.", hint=_PULL_HINT)


class _Reader:
    """Files of a layout, from its directory or its tar, by their names in the layout."""

    def __init__(self, path: Path, tar: tarfile.TarFile | None, spec: str) -> None:
        self._path = path
        self._tar = tar
        self._spec = spec

    def open(self, name: str) -> IO[bytes]:
        if self._tar is None:
            try:
                return (self._path / name).open("rb")
            except OSError as exc:
                raise _not_oci(self._spec, f"it has no {name} ({exc.strerror})") from None
        try:
            member = self._tar.getmember(name)
            f = self._tar.extractfile(member) if member.isfile() else None
        except KeyError:
            f = None
        if f is None:
            raise _not_oci(self._spec, f"it has no file {name}")
        return f

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            data = f.read(_JSON_LIMIT + 1)
        if len(data) > _JSON_LIMIT:
            raise _not_oci(self._spec, f"{name} is larger than {_JSON_LIMIT >> 20} MiB")
        return data


@contextlib.contextmanager
def _open(path: Path, is_archive: bool, spec: str) -> Iterator[_Reader]:
    if not is_archive:
        if not path.is_dir():
            raise _not_oci(spec, "it is not a directory")
        yield _Reader(path, None, spec)
        return
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise _not_oci(spec, f"it is not a tar file ({exc})") from None
    with tar:
        yield _Reader(path, tar, spec)


def _read_json(reader: _Reader, name: str, spec: str) -> dict[str, Any]:
    try:
        data = json.loads(reader.read(name))
    except ValueError:
        raise _not_oci(spec, f"{name} is not JSON") from None
    if not isinstance(data, dict):
        raise _not_oci(spec, f"{name} is not a JSON object")
    return data


def _descriptor(raw: object, spec: str) -> Descriptor:
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str) or not isinstance(raw.get("size"), int):
        raise _not_oci(spec, f"a descriptor is malformed ({raw!r:.80})")
    return Descriptor(str(raw.get("mediaType", "")), raw["digest"], raw["size"])


def _blob_name(digest: str, spec: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise _not_oci(spec, f"it names the blob {digest!r}, which is not a sha256 digest")
    return f"blobs/sha256/{hexdigest}"


def _choose(reader: _Reader, index: dict[str, Any], ref: str | None, goarch: str, spec: str) -> Descriptor:
    """The image manifest ``ref`` names, or the only one; in a multi-arch index, the one for ``goarch``."""
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    if ref is not None:
        entries = [m for m in entries if (m.get("annotations") or {}).get(REF_NAME) == ref]
        if not entries:
            raise UsageError(f"The base image {spec} has no image named {ref!r}.", hint="List its names with: skopeo inspect oci:DIR.")
    for _ in range(4):  # an index may point at an index (skopeo copy --all): follow a few levels
        if len(entries) > 1:
            entries = [m for m in entries if (m.get("platform") or {}).get("architecture") == goarch] or entries
        if len(entries) != 1:
            raise UsageError(
                f"The base image {spec} holds {len(entries)} images; shipenv cannot tell which to use.",
                hint="Name one: --base oci:DIR:REF.",
            )
        desc = _descriptor(entries[0], spec)
        if desc.media_type in _MANIFEST_TYPES:
            return desc
        if desc.media_type not in _INDEX_TYPES:
            raise _not_oci(spec, f"its index points at {desc.media_type!r}, which is neither a manifest nor an index")
        entries = [m for m in _read_json(reader, _blob_name(desc.digest, spec), spec).get("manifests") or [] if isinstance(m, dict)]
    raise _not_oci(spec, "its indexes nest too deeply")

