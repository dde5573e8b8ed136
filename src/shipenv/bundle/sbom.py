"""The bundle's bill of materials: ``.shipenv/sbom.cdx.json`` in CycloneDX 1.6 JSON.

What a security team asks when the next CVE lands, answered from the finished
tree (so the SBOM describes exactly what ships, cache hits included):

- the bundle itself (``metadata.component``);
- the CPython interpreter: version, build, compiler, and any SBOM the base
  interpreter ships beside its standard library, linked as an external BOM;
- every Python distribution: ``pkg:pypi`` purl, version, the sha256 of the
  wheel it was installed from, its licence from the core metadata, the
  dependency edges its ``Requires-Dist`` draws between the bundled
  distributions, and the SBOMs it carries in ``.dist-info/sboms/`` (PEP 770),
  linked with their hashes;
- every shared library in ``lib/`` (vendored from the build host): the file,
  its sha256, and the system package it came from, asked of dpkg
  (``pkg:deb/debian/libssl3@3.0.17-1~deb12u2?arch=amd64&distro=bookworm``).

The same tree, wheels and ``SOURCE_DATE_EPOCH`` give the same bytes: the
timestamp is the epoch, every ``bom-ref`` is derived from names, and the
serial number is a UUID made from the document's own content.
"""

from __future__ import annotations

import datetime
import email.parser
import hashlib
import importlib
import json
import logging
import os
import subprocess
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from shipenv.bundle import elf
from shipenv.bundle.manifest import META_DIR, hash_file

if TYPE_CHECKING:
    from cyclonedx.model import HashType
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression

# cyclonedx (0.3 s to import) is imported by the functions that render an SBOM, not by
# every build that imports this module: a build reused from the cache writes none.

log = logging.getLogger(__name__)

SBOM = META_DIR / "sbom.cdx.json"
_ZERO = uuid.UUID(int=0)
_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "armv7l": "armhf", "ppc64le": "ppc64el", "s390x": "s390x"}
#: Where a base interpreter's own SBOM may sit relative to its stdlib (CPython's build writes SPDX).
_PYTHON_SBOM_NAMES = ("sbom.spdx.json", "sbom.cdx.json")

FindLibrary = Callable[[str], Path | None]
#: The sha256 of a file of the tree when something already knows it (a cache layer's facts), else None.
Digest = Callable[[Path], str | None]
#: (build, compiler) of the tree's interpreter, as :func:`python_build` reports them.
PythonBuild = Callable[[], tuple[str | None, str | None]]


@dataclass(frozen=True)
class PackageOrigin:
    """The system package a host file belongs to."""

    package: str
    version: str
    arch: str


def debian_origins(paths: list[Path]) -> dict[Path, PackageOrigin]:
    """Which dpkg package owns each host file (one ``dpkg -S`` and one ``dpkg-query`` for all)."""
    if not paths:
        return {}
    # dpkg's database names a file by the path its package shipped: /usr/lib/... or /lib/...
    # (merged /usr); ask for both spellings of each.
    asked: dict[str, Path] = {}
    for path in paths:
        for spelling in {str(path), str(path.resolve())}:
            asked[spelling] = path
            if spelling.startswith("/usr/lib/"):
                asked[spelling[4:]] = path
            elif spelling.startswith("/lib/"):
                asked["/usr" + spelling] = path
    owners = _run(["dpkg", "-S", *sorted(asked)])
    owner_of: dict[Path, str] = {}
    for line in owners.splitlines():
        pkgs, sep, file = line.partition(": ")
        if sep and file in asked and "diversion" not in pkgs:
            owner_of.setdefault(asked[file], pkgs.split(",")[0].strip())
    if not owner_of:
        return {}
    versions: dict[str, tuple[str, str]] = {}
    for line in _run(["dpkg-query", "-W", "-f", "${binary:Package}\t${Version}\t${Architecture}\n", *sorted(set(owner_of.values()))]).splitlines():
        name, version, arch = (line.split("\t") + ["", ""])[:3]
        versions[name] = (version, arch)
        versions.setdefault(name.split(":")[0], (version, arch))
    return {p: PackageOrigin(pkg.split(":")[0], *versions[pkg]) for p, pkg in owner_of.items() if pkg in versions}


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""  # no dpkg: not a Debian-based build host; origins stay unknown


def _os_release() -> dict[str, str]:
    try:
        lines = Path("/etc/os-release").read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.partition("=") for line in lines if "=" in line)
    return {k: v.strip().strip('"') for k, _, v in pairs}


def python_build(root: Path, executable: str) -> tuple[str | None, str | None]:
    """(build, compiler) as the bundled interpreter reports them."""
    launcher = root / "bin" / "python"
    argv = [str(launcher if launcher.exists() else root / executable), "-I", "-c",
            "import platform; print(' '.join(platform.python_build())); print(platform.python_compiler())"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    lines = done.stdout.splitlines()
    return (lines[0], lines[1]) if done.returncode == 0 and len(lines) >= 2 else (None, None)


def _sha256(path: Path, digest: Digest | None) -> HashType:
    from cyclonedx.model import HashAlgorithm, HashType

    return HashType(alg=HashAlgorithm.SHA_256, content=(digest(path) if digest else None) or hash_file(path)[0])


#: What :func:`build` imports: 0.2 s of a rebuild's 3, which :func:`preload` moves off its path.
_LIBRARY_MODULES = ("cyclonedx.model", "cyclonedx.model.bom", "cyclonedx.model.component", "cyclonedx.model.license",
                    "cyclonedx.output.json", "cyclonedx.contrib.license.factories", "packageurl", "packaging.requirements")


def preload() -> None:
    """Import the libraries :func:`build` uses, for a caller's thread to do while the build waits on processes (uv, pip).

    What cannot be imported is left for :func:`build` to report.
    """
    for name in _LIBRARY_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue


def _licenses(meta: email.message.Message) -> list[LicenseExpression | DisjunctiveLicense]:
    try:
        from cyclonedx.contrib.license.factories import LicenseFactory
    except ImportError:  # cyclonedx-python-lib before 11.x kept it here
        from cyclonedx.factory.license import LicenseFactory  # type: ignore[assignment,no-redef,unused-ignore]
    from cyclonedx.model.license import DisjunctiveLicense

    factory = LicenseFactory()
    expression = meta.get("License-Expression")
    if expression:
        return [factory.make_from_string(expression.strip())]
    from_classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if from_classifiers:
        return [DisjunctiveLicense(name=name) for name in sorted(set(from_classifiers))]
    text = (meta.get("License") or "").strip()
    if text and text.upper() != "UNKNOWN":
        first = text.splitlines()[0].strip()
        return [factory.make_from_string(first) if len(first) <= 100 else DisjunctiveLicense(name=first[:100])]
    return []


def _dist_infos(root: Path, site: str, wanted: set[str]) -> dict[str, Path]:
    """The ``.dist-info`` directory of each ``wanted`` distribution (canonical names).

    Installers put them directly in the site directory (``site``, relative to
    ``root``): one ``listdir``. Only a distribution not found there is looked
    for under the whole of ``lib/`` (thousands of directories).
    """
    found = _dist_infos_in([Path(root, site, n) for n in sorted(os.listdir(root / site))] if site and (root / site).is_dir() else [])
    if not wanted <= found.keys():
        walked = _dist_infos_in([Path(d, name) for d, dirs, _ in os.walk(root / "lib") for name in dirs])  # os.walk: pathlib's ** is slow on big trees
        for name, path in walked.items():
            found.setdefault(name, path)
    return found


def _dist_infos_in(candidates: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for info in sorted(c for c in candidates if c.name.endswith(".dist-info") and (c / "METADATA").is_file()):
        found.setdefault(canonicalize_name(info.name.removesuffix(".dist-info").rpartition("-")[0]), info)
    return found


def build(root: Path, metadata: Mapping[str, Any], *, epoch: int, wheel_digests: Mapping[str, str] | None = None,
          find_library: FindLibrary | None = None, origins: Callable[[list[Path]], dict[Path, PackageOrigin]] = debian_origins,
          digest: Digest | None = None, interpreter: PythonBuild | None = None) -> bytes:
    """The SBOM of the tree at ``root`` (manifest ``metadata`` not yet written) as JSON bytes.

    ``wheel_digests`` maps a distribution's name to its wheel's sha256;
    ``find_library(soname)`` says where a library in ``lib/`` came from on the
    build host (the same lookup the relocation used); ``origins`` asks the
    package manager who owns those files. ``digest`` and ``interpreter`` answer
    from what the caller knows (the cache) instead of reading every library and
    running the interpreter.
    """
    from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL
    from packaging.requirements import InvalidRequirement, Requirement

    name, version = str(metadata["name"]), str(metadata["version"])
    py = metadata["python"]
    digests = {canonicalize_name(k): v for k, v in (wheel_digests or {}).items()}
    bundle = Component(type=ComponentType.APPLICATION, name=name, version=version, bom_ref="bundle",
                       purl=PackageURL("generic", None, name, version),
                       properties=[Property(name=f"shipenv:{k}", value=str(v)) for k, v in sorted(metadata["platform"].items()) if v])
    bom = Bom(metadata=BomMetaData(component=bundle, timestamp=datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)))
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name="shipenv", version=str(metadata["build"]["shipenv_version"])))

    build_str, compiler = interpreter() if interpreter else python_build(root, py["executable"])
    python_props = [("abi", py.get("abi")), ("build", build_str), ("compiler", compiler), ("executable", py["executable"])]
    python_refs = []
    stdlib = root / "lib" / f"python{'.'.join(str(py['version']).split('.')[:2])}"
    for candidate in (stdlib.parent / n for n in _PYTHON_SBOM_NAMES):
        if candidate.is_file():
            python_refs.append(ExternalReference(type=ExternalReferenceType.BOM, url=XsUri(candidate.relative_to(root).as_posix()),
                                                 comment="the interpreter's own SBOM", hashes=[_sha256(candidate, digest)]))
    exe = root / py["executable"]
    cpython = Component(type=ComponentType.APPLICATION, name="cpython", version=str(py["version"]), bom_ref="cpython",
                        purl=PackageURL("generic", None, "cpython", str(py["version"])), hashes=[_sha256(exe, digest)] if exe.is_file() else [],
                        properties=[Property(name=f"shipenv:python:{k}", value=str(v)) for k, v in python_props if v],
                        external_references=python_refs)
    bom.components.add(cpython)
    bom.register_dependency(bundle, [cpython])

    # -- Python distributions
    infos = _dist_infos(root, str(py.get("site_packages") or ""),
                        {canonicalize_name(d["name"]) for d in metadata.get("distributions", [])}) if metadata.get("distributions") else {}
    dists: dict[str, Component] = {}
    requires: dict[str, list[Requirement]] = {}
    environment = {"python_version": ".".join(str(py["version"]).split(".")[:2]), "python_full_version": str(py["version"]), "extra": ""}
    for dist in metadata.get("distributions", []):
        key = canonicalize_name(dist["name"])
        info = infos.get(key)
        meta = email.parser.Parser().parsestr((info / "METADATA").read_text(errors="replace"), headersonly=True) if info else None
        refs = []
        for sbom_file in sorted((info / "sboms").glob("*")) if info and (info / "sboms").is_dir() else []:
            refs.append(ExternalReference(type=ExternalReferenceType.BOM, url=XsUri(sbom_file.relative_to(root).as_posix()),
                                          comment="SBOM shipped in the wheel (PEP 770)", hashes=[_sha256(sbom_file, digest)]))
        props = [Property(name="shipenv:source", value=str(dist["source"]))]
        if info:
            props.append(Property(name="shipenv:dist-info", value=info.relative_to(root).as_posix()))
        purl = PackageURL("pypi", None, key, str(dist["version"]))
        component = Component(name=str(dist["name"]), version=str(dist["version"]), bom_ref=purl.to_string(), purl=purl,
                              hashes=[HashType(alg=HashAlgorithm.SHA_256, content=digests[key])] if key in digests else [],
                              licenses=_licenses(meta) if meta else [], external_references=refs, properties=props)
        dists[key] = component
        requires[key] = []
        for text in (meta.get_all("Requires-Dist") or []) if meta else []:
            try:
                requires[key].append(Requirement(text))
            except InvalidRequirement:
                log.debug("unreadable Requires-Dist %r of %s", text, dist["name"])
        bom.components.add(component)
    for dist_key, component in dists.items():
        needs = [dists[canonicalize_name(r.name)] for r in requires[dist_key]
                 if canonicalize_name(r.name) in dists and (r.marker is None or r.marker.evaluate(environment))]
        bom.register_dependency(component, needs)
    bom.register_dependency(bundle, list(dists.values()))

    # -- shared libraries in lib/
    libs = sorted(p for p in (root / "lib").iterdir() if p.is_file() and not p.is_symlink() and elf.is_elf(p)) if (root / "lib").is_dir() else []
    hosts = {lib: find_library(lib.name) if find_library else None for lib in libs}
    owners = origins([h for h in hosts.values() if h is not None])
    release = _os_release()
    distro = release.get("ID", "debian")
    arch = _DEB_ARCH.get(str(metadata["platform"].get("arch")), str(metadata["platform"].get("arch")))
    lib_components = []
    for lib in libs:
        rel = lib.relative_to(root).as_posix()
        host = hosts[lib]
        origin = owners.get(host) if host is not None else None
        props = [Property(name="shipenv:file", value=rel)]
        if origin is not None and host is not None:
            # A packaged file's path is the package's, not this machine's (a pyenv path would name the build host).
            props.append(Property(name="shipenv:host-path", value=str(host)))
        if origin is not None:
            qualifiers = {"arch": origin.arch or arch}
            if release.get("VERSION_CODENAME"):
                qualifiers["distro"] = release["VERSION_CODENAME"]
            purl = PackageURL("deb", distro, origin.package, origin.version, qualifiers)
            component = Component(name=origin.package, version=origin.version, bom_ref=rel, purl=purl, hashes=[_sha256(lib, digest)], properties=props)
        elif lib.name.startswith("libpython"):
            props.append(Property(name="shipenv:origin", value="part of the CPython build (not from a system package)"))
            component = Component(name=lib.name, version=str(py["version"]), bom_ref=rel, hashes=[_sha256(lib, digest)], properties=props,
                                  purl=PackageURL("generic", None, "cpython", str(py["version"]), {"file": lib.name}))
        else:
            props.append(Property(name="shipenv:origin", value="not owned by a system package on the build host"))
            component = Component(name=lib.name, bom_ref=rel, hashes=[_sha256(lib, digest)], properties=props)
        lib_components.append(component)
        bom.components.add(component)
    bom.register_dependency(cpython, lib_components)
    return _render(bom)


def _render(bom: Bom) -> bytes:
    """JSON with a serial number derived from the rest of the document.

    Rendered once (0.3 s for the reference stack): the serial number is put in
    place of the zero one in the text, which is what a second rendering gives.
    """
    from cyclonedx.output.json import JsonV1Dot6

    bom.serial_number = _ZERO
    first = JsonV1Dot6(bom).output_as_string(indent=2)
    bom.serial_number = uuid.uuid5(uuid.NAMESPACE_URL, "shipenv-sbom:" + hashlib.sha256(first.encode()).hexdigest())
    zero = f'"serialNumber": "{_ZERO.urn}"'
    if first.count(zero) != 1:  # not the layout this expects: render again
        return (JsonV1Dot6(bom).output_as_string(indent=2) + "\n").encode()
    return (first.replace(zero, f'"serialNumber": "{bom.serial_number.urn}"') + "\n").encode()


def write(root: Path, metadata: Mapping[str, Any], **kwargs: Any) -> Path:
    """Write ``.shipenv/sbom.cdx.json`` into the tree (before RECORD, which then lists it)."""
    path = root / SBOM
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(build(root, metadata, **kwargs))
    return path


def read(root: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((root / SBOM).read_text())
    except FileNotFoundError:
        return None
    return data
