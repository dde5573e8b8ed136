"""``--format oci`` and ``oci-archive``: the bundle as a layered, reproducible OCI image, with no daemon.

The image (image-spec 1.0: ``oci-layout``, ``index.json``, ``blobs/sha256/``)
holds the base image's layers, reused by digest, and then the bundle tree at
``/app`` (``--image-root``) in up to three layers, split by how often they change:

1. ``interpreter``: the interpreter, its standard library and the vendored
   shared libraries (``lib/``), which change when Python or shipenv does;
2. ``packages``: every third-party distribution (what their ``RECORD`` lists,
   their byte-code, and whatever else is under site-packages);
3. ``app``: the project's own distribution, the launchers in ``bin/``
   (console scripts of the project, ``--entry`` commands, ``bin/python``) and
   ``.shipenv/`` (manifest, RECORD, deploy.sh), which change on every commit.

A layer that would hold nothing is left out. :func:`split` decides this as
plain data (which entries of :func:`shipenv.bundle.archive.plan` go into which
layer), so the bundle archive writer can share it to assemble archives from
per-layer fragments (issue 16). Layer tars are written exactly as the bundle
archive is (same walk, same normalized headers, owners 0/0 without names,
mtimes clamped to ``SOURCE_DATE_EPOCH``) and gzip-compressed the way ``.tar.gz``
is (fixed blocks, mtime 0, no name), so the same tree and epoch give the same
layer digests on any machine and with any thread count; JSON documents are
written with sorted keys and no spaces. Hence the same inputs give the same
manifest digest, and a change to the app's code alone changes the last layer only.

The ``oci-archive`` form is that layout as one plain tar (``oci-layout`` first),
which ``podman load`` and ``skopeo copy oci-archive:...`` read.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import posixpath
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.utils import canonicalize_name

from shipenv import __version__
from shipenv.bundle import archive, codecs, manifest
from shipenv.bundle.ocibase import (
    MEDIA_CONFIG,
    MEDIA_INDEX,
    MEDIA_LAYER_GZIP,
    MEDIA_MANIFEST,
    REF_NAME,
    BaseImage,
    Descriptor,
    copy_layers,
    platform,
    read_base,
)
from shipenv.errors import ArchiveError, UsageError, listing
from shipenv.model import ImageOptions

Progress = Callable[[int, int], None]

FORMATS = ("oci", "oci-archive")
LAYERS = ("interpreter", "packages", "app")
#: The user an image runs as when neither --user nor the base says: distroless's "nonroot".
DEFAULT_USER = "65532:65532"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SCRATCH_REASON = "An image without a base (scratch) has no C library, and this bundle uses the host's glibc."
#: The empty base of a ``scratch`` image: no layers, no settings.
SCRATCH = BaseImage(
    spec="scratch", path=Path("/"), is_archive=False, ref=None,
    manifest=Descriptor(MEDIA_MANIFEST, "", 0), config_json='{"rootfs": {"type": "layers", "diff_ids": []}}', layers=(),
)


@dataclass(frozen=True)
class LayerPlan:
    """One layer: its name and its tar members, in order (names as in the image, without a leading ``/``)."""

    name: str
    entries: tuple[archive.Entry, ...]


@dataclass(frozen=True)
class Layer:
    name: str
    blob: Descriptor  #: the compressed layer, as the manifest lists it
    diff_id: str  #: sha256 of the uncompressed tar, as the config lists it


@dataclass(frozen=True)
class Image:
    """What :func:`write` made."""

    path: Path
    digest: str  #: the image manifest's digest, ``sha256:...``: what a registry calls the image
    layers: tuple[Layer, ...]  #: shipenv's own layers (the base's come before them)
    sha256: str | None = None  #: of the tar file, for ``oci-archive``


def prepare(image: ImageOptions, machine: str, level: int | None = None, threads: int = 0, *, libc: str = "host") -> BaseImage:
    """Check ``--base`` and ``--level`` before anything is built: read the base and check its arch.

    No base (``scratch``) needs a bundle that carries its C library (``--libc bundled``):
    its native launchers and the bundled loader are then all the image holds.
    """
    platform(machine)
    archive.codec("tar.gz", level, threads)
    if image.base is None or image.base == "scratch":
        if libc == "bundled":
            return SCRATCH
        raise UsageError(
            _SCRATCH_REASON,
            hint="Build with --libc bundled for a scratch image, or on a base image with glibc, pulled once with skopeo: "
            "skopeo copy docker://gcr.io/distroless/base-debian12 oci:distroless:latest, then --base oci:distroless:latest.",
        )
    return read_base(image.base, machine)


# -- which file goes into which layer ---------------------------------------------------------


def split(root: Path, image_root: PurePosixPath, mtime: int) -> tuple[LayerPlan, ...]:
    """The tree's members split into the interpreter, packages and app layers (empty ones left out)."""
    meta = manifest.read(root)
    site = meta.python.site_packages
    owners = _owners(root, site, {canonicalize_name(d.name) for d in meta.distributions if d.source == "project"})
    arcname = image_root.as_posix().strip("/")
    entries = list(archive.plan(root, arcname, mtime))
    bad = [e.name for e in entries if e.kind == "other"]
    if bad:
        raise ArchiveError(
            f"Cannot pack {listing(bad)}: only files, directories and symlinks go into an image.",
            hint="Remove sockets, FIFOs and device files from the tree.",
        )
    rels = [e.name[len(arcname) + 1 :] for e in entries]
    interpreter = meta.python.executable
    # A file goes into its own layer; a directory into every layer that holds something under it,
    # or its own when it is empty. Children come after their parents, so walk backwards.
    below: dict[str, set[str]] = {}
    layers_of: list[set[str]] = []
    for entry, rel in zip(reversed(entries), reversed(rels)):
        layers = below.get(rel) if entry.kind == "dir" else None
        if not layers:
            layers = {_classify(rel, owners, site, interpreter)}
        layers_of.append(layers)
        if rel:
            below.setdefault(posixpath.dirname(rel), set()).update(layers)
    layers_of.reverse()
    above = [archive.Entry(p, "dir", 0o755, mtime) for p in _parents(arcname)]
    plans = []
    for name in LAYERS:
        chosen = [e for e, layers in zip(entries, layers_of) if name in layers]
        if any(e.kind != "dir" or e.name != arcname for e in chosen):
            plans.append(LayerPlan(name, (*above, *chosen)))
    return tuple(plans)


def _parents(arcname: str) -> list[str]:
    parts = arcname.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _owners(root: Path, site: str, app_names: set[str]) -> dict[str, str]:
    """Tree path → "app" or "packages", from the RECORD of every distribution in site-packages."""
    owners: dict[str, str] = {}
    for record in sorted((root / site).glob("*.dist-info/RECORD")):
        dist = canonicalize_name(record.parent.name[: -len(".dist-info")].rsplit("-", 1)[0])
        layer = "app" if dist in app_names else "packages"
        with record.open(newline="", errors="replace") as f:
            for row in csv.reader(f):
                if row:
                    rel = posixpath.normpath(posixpath.join(site, row[0]))
                    if not rel.startswith("../"):
                        owners[rel] = layer
    return owners


def _classify(rel: str, owners: dict[str, str], site: str, interpreter: str) -> str:
    if rel == manifest.META_DIR.as_posix() or rel.startswith(f"{manifest.META_DIR}/"):
        return "app"
    owner = owners.get(rel) or owners.get(_pyc_source(rel))
    if owner is not None:
        return owner
    if rel.startswith("bin/") and rel != interpreter:
        return "app"
    if rel == site or rel.startswith(f"{site}/"):
        return "packages"
    return "interpreter"


def _pyc_source(rel: str) -> str:
    """``pkg/__pycache__/mod.cpython-312.pyc`` → ``pkg/mod.py``: byte-code goes where its source goes."""
    parent, name = posixpath.split(rel)
    if posixpath.basename(parent) != "__pycache__" or not name.endswith(".pyc"):
        return rel
    return posixpath.join(posixpath.dirname(parent), name.split(".", 1)[0] + ".py")


# -- writing ---------------------------------------------------------------------------------


class _Hashing:
    """An encoder that hashes the uncompressed tar on its way in: the layer's diff_id."""

    def __init__(self, inner: codecs.Encoder) -> None:
        self.inner = inner
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        self.inner.write(data)

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


def write_layer(plan: LayerPlan, blobs: Path, *, level: int, threads: int, progress: Progress | None = None) -> Layer:
    """One layer tar, gzip-compressed, into ``blobs`` under its digest."""
    part = blobs / f".{plan.name}.part"
    gz: codecs.Gzip | None = None
    try:
        with part.open("xb") as f:
            sink = archive.FileSink(f, part)
            gz = codecs.Gzip(sink, level, threads)
            raw = _Hashing(gz)
            tar = archive.TarStream(raw, progress)
            for entry in plan.entries:
                tar.add(entry, entry.name)
            tar.finish()
            gz.close()
            gz = None
    except BaseException:
        if gz is not None:
            gz.abort()
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    digest = sink.sha256.hexdigest()
    os.replace(part, blobs / digest)
    return Layer(plan.name, Descriptor(MEDIA_LAYER_GZIP, f"sha256:{digest}", sink.size), f"sha256:{raw.sha256.hexdigest()}")


def _put_json(blobs: Path, media_type: str, document: dict[str, Any]) -> Descriptor:
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return Descriptor(media_type, f"sha256:{digest}", len(data))


def entrypoint(
    root: Path, image: ImageOptions, python: str, entry: str | None, *, native: bool = False
) -> tuple[list[str] | None, list[str] | None]:
    """(Entrypoint, Cmd): ``--cmd`` as given, else the ``--entry`` command, else the interpreter.

    With native launchers (static ELF files) the command is the launcher itself,
    ``/app/bin/app``: no shell and no loader needed, which a scratch image has not.
    sh launchers are sh/Python polyglots, so there the real interpreter runs them
    without a shell (distroless bases have none): ``/app/bin/python3.12 -E -s /app/bin/app``.
    """
    prefix = image.root.as_posix().rstrip("/")
    if image.cmd is not None:
        argv0 = PurePosixPath(image.cmd[0])
        if argv0.is_relative_to(image.root):
            inside = root / argv0.relative_to(image.root)
            if not (inside.is_file() or inside.is_symlink()):
                raise UsageError(
                    f"--cmd runs {argv0}, which is not in the bundle.",
                    hint=f"Name a file of the bundle (under {prefix}/bin), or leave --cmd out to run the --entry command.",
                )
        return None, list(image.cmd)
    interpreter = [f"{prefix}/bin/python"] if native else [f"{prefix}/{python}", "-E", "-s"]
    if entry is None:
        return interpreter, None
    if not (root / "bin" / entry).is_file():
        raise UsageError(f"The entry point bin/{entry} is not in the bundle.", hint="Check --entry / [tool.shipenv] entry.")
    return ([f"{prefix}/bin/{entry}"] if native else [*interpreter, f"{prefix}/bin/{entry}"]), None


def image_config(
    meta: manifest.Manifest, image: ImageOptions, base: BaseImage, layers: Iterable[Layer], command: tuple[list[str] | None, list[str] | None], epoch: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """The image config (the base's, merged) and the manifest's annotations."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    prefix = image.root.as_posix().rstrip("/")
    annotations = {
        "org.opencontainers.image.title": meta.name,
        "org.opencontainers.image.version": meta.version,
        "org.opencontainers.image.created": created,
    }
    if image.revision:
        annotations["org.opencontainers.image.revision"] = image.revision
    if image.source:
        annotations["org.opencontainers.image.source"] = image.source
    parent = base.config
    settings: dict[str, Any] = dict(parent.get("config") or {})
    env = [e for e in settings.get("Env") or [] if isinstance(e, str)]
    path = next((e[5:] for e in env if e.startswith("PATH=")), DEFAULT_PATH)
    settings["Env"] = [f"PATH={prefix}/bin:{path}", *(e for e in env if not e.startswith("PATH="))]
    base_user = str(settings.get("User") or "")
    settings["User"] = image.user or (base_user if base_user not in ("", "0", "root", "0:0") else DEFAULT_USER)
    settings["Entrypoint"], settings["Cmd"] = command
    settings["WorkingDir"] = prefix
    settings["Labels"] = {**(settings.get("Labels") or {}), **annotations}
    goarch, variant = platform(meta.platform.arch)
    history = list(parent.get("history") or [])
    ours = list(layers)
    history += [{"created": created, "created_by": f"shipenv {__version__} build: {layer.name} layer"} for layer in ours]
    config: dict[str, Any] = {
        "created": created,
        "architecture": goarch,
        "os": "linux",
        "config": {k: v for k, v in settings.items() if v is not None},
        "rootfs": {"type": "layers", "diff_ids": [*parent["rootfs"]["diff_ids"], *(layer.diff_id for layer in ours)]},
        "history": history,
    }
    if variant:
        config["variant"] = variant
    if base is not SCRATCH:
        annotations["org.opencontainers.image.base.digest"] = base.manifest.digest
    return config, annotations


def write(
    root: Path,
    dest: Path,
    fmt: str,
    *,
    image: ImageOptions,
    base: BaseImage,
    entry: str | None,
    mtime: int,
    level: int | None = None,
    threads: int = 0,
    progress: Progress | None = None,
) -> Image:
    """Write the image of the bundle tree ``root`` to ``dest`` (a layout directory, or a tar for ``oci-archive``)."""
    gz = archive.codec("tar.gz", level, threads)
    assert gz.level is not None
    meta = manifest.read(root)
    command = entrypoint(root, image, meta.python.executable, entry, native=meta.launchers == "native")
    layout = dest if fmt == "oci" else dest.with_name(dest.name + ".layout")
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    copy_layers(base, blobs)
    layers = tuple(write_layer(plan, blobs, level=gz.level, threads=gz.threads, progress=progress) for plan in split(root, image.root, mtime))
    config, annotations = image_config(meta, image, base, layers, command, mtime)
    config_desc = _put_json(blobs, MEDIA_CONFIG, config)
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_desc.as_json(),
        "layers": [d.as_json() for d in (*base.layers, *(layer.blob for layer in layers))],
        "annotations": annotations,
    }
    manifest_desc = _put_json(blobs, MEDIA_MANIFEST, manifest_doc)
    goarch, variant = platform(meta.platform.arch)
    entry_json = dict(manifest_desc.as_json(), platform={"architecture": goarch, "os": "linux", **({"variant": variant} if variant else {})})
    entry_json["annotations"] = {REF_NAME: f"{meta.name}:{meta.version}"}
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [entry_json]}
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True, separators=(",", ":")))
    if fmt == "oci":
        return Image(dest, manifest_desc.digest, layers)
    try:
        packed = _tar_layout(layout, dest, mtime)
    finally:
        shutil.rmtree(layout, ignore_errors=True)
    return Image(dest, manifest_desc.digest, layers, packed.sha256)


def _tar_layout(layout: Path, dest: Path, mtime: int) -> archive.Packed:
    """The layout as one uncompressed tar with the layout's own names: ``oci-layout``, ``index.json``, ``blobs/...``."""
    names = ["oci-layout", "index.json", "blobs", "blobs/sha256", *(f"blobs/sha256/{p.name}" for p in sorted((layout / "blobs" / "sha256").iterdir()))]
    with dest.open("xb") as f:
        sink = archive.FileSink(f, dest)
        tar = archive.TarStream(codecs.Plain(sink), None)
        for name in names:
            full = layout / name
            if full.is_dir():
                tar.add(archive.Entry(name, "dir", 0o755, mtime), name)
            else:
                tar.add(archive.Entry(name, "file", 0o644, mtime, size=full.stat().st_size, source=str(full)), name)
        tar.finish()
    return archive.Packed(dest, sink.sha256.hexdigest(), sink.size)

