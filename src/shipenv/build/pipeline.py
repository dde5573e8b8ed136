"""``shipenv build``: the pipeline, stage by stage.

resolve → interpreter → install → relocate → byte-compile → audit → manifest → pack

Everything is built in a staging directory beside the output, on the same file
system, and moved into place only when every stage has succeeded: a failed or
interrupted build leaves nothing half-written where the artifact would go.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shipenv.build.install import Sources

from shipenv import __version__, data, templates
from shipenv.build import bytecode, cache, interpreter, launchers, libc, patch, policy, relocate, venv
from shipenv.bundle import elf, manifest, sbom, sshsig
from shipenv.errors import InstallError, PolicyError, RelocateError, ShipenvError, UsageError, listing
from shipenv.model import IMAGE_FORMATS, AuditFinding, BuildOptions, BuildResult, Distribution, PythonInfo

log = logging.getLogger(__name__)

Step = Callable[[str], None]
Progress = Callable[[int, int], None]

STAGING_SUFFIX = ".shipenv-tmp"

#: Used when SOURCE_DATE_EPOCH is not set: 2020-01-01T00:00:00Z.
DEFAULT_EPOCH = 1577836800
_SUFFIXES = {".oci.tar": "oci-archive", ".tar.zst": "tar.zst", ".tzst": "tar.zst", ".tar.gz": "tar.gz", ".tgz": "tar.gz", ".tar.xz": "tar.xz", ".txz": "tar.xz"}


def source_date_epoch(options: BuildOptions) -> int:
    if options.source_date_epoch is not None:
        return options.source_date_epoch
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError as exc:
            raise UsageError(f"SOURCE_DATE_EPOCH={env!r} is not a whole number of seconds.") from exc
    return DEFAULT_EPOCH


def format_for(options: BuildOptions) -> tuple[str, Path | None]:
    """(format, explicit file) from ``--format`` and whether ``-o`` names a file."""
    out = options.output
    suffix_fmt = next((f for s, f in _SUFFIXES.items() if out.name.endswith(s)), None)
    if suffix_fmt is not None and not out.is_dir():
        if options.fmt not in (None, suffix_fmt):
            raise UsageError(f"-o {out} says {suffix_fmt} but --format says {options.fmt}.")
        return suffix_fmt, out
    return options.fmt or "tar.zst", None


def artifact_path(options: BuildOptions, tree_name: str) -> tuple[str, Path]:
    fmt, explicit = format_for(options)
    if explicit is not None:
        return fmt, explicit
    suffix = {"dir": "", "oci-archive": ".oci.tar"}.get(fmt, f".{fmt}")
    return fmt, options.output / f"{tree_name}{suffix}"


def _check_destination(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        if path.is_file() and not path.is_symlink():
            raise UsageError(f"{path} already exists.", hint="Remove it or choose another -o.")
        raise UsageError(f"{path} exists and is not a directory.", hint="Choose another -o.")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"The output {path} exists and is not empty.", hint="Remove it or choose another -o.")


def build(options: BuildOptions, step: Step | None = None, progress: Progress | None = None) -> BuildResult:
    """Build a bundle as ``options`` say and return where it is.

    ``step`` hears about each stage and ``progress`` about packing (files,
    bytes); neither is needed. A disk that fills up or an output directory that
    cannot be written is reported in one sentence, with nothing left behind.
    """
    try:
        return _build(options, step or (lambda _msg: None), progress)
    except OSError as exc:
        where = exc.filename or options.output
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ShipenvError(
                f"The disk holding {where} is full; nothing was written.",
                hint="Free some space (or choose another -o or --cache-dir) and build again.",
            ) from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UsageError(f"Cannot write to {where} ({exc.strerror}).", hint="Choose an -o you can write to.") from exc
        raise


def _build(options: BuildOptions, say: Step, progress: Progress | None) -> BuildResult:
    from shipenv.build import install  # the package stage; imported late to keep the core light

    sources = install.resolve_sources(options)
    name = options.name or sources.name or "python"
    py = interpreter.inspect(options.python or sources.python)
    version = options.version or sources.version or py.version_str
    tree_name = f"{name}-{version}"
    fmt, artifact = artifact_path(options, tree_name)
    if fmt in IMAGE_FORMATS:
        from shipenv.bundle import oci

        base = oci.prepare(options.image, py.machine, options.compress_level, options.threads, libc=options.libc)  # fails now
    elif fmt != "dir":
        from shipenv.bundle import archive

        archive.codec(fmt, options.compress_level, options.threads)  # a bad --level fails now, not after the build
    _check_destination(artifact)
    if options.sign_key is not None and (fmt == "dir" or fmt in IMAGE_FORMATS):
        made = "a directory" if fmt == "dir" else "a container image"
        raise UsageError(f"--sign-key signs an archive, and --format {fmt} makes {made}.", hint="Build a .tar.zst or .tar.gz to sign it.")
    signer = sshsig.load_signer(options.sign_key) if options.sign_key is not None else None  # a bad key fails now
    artifact.parent.mkdir(parents=True, exist_ok=True)
    epoch = source_date_epoch(options)

    _remove_stale_staging(artifact.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{tree_name}.", suffix=STAGING_SUFFIX, dir=artifact.parent))
    lock = (staging / ".lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # held while this build runs; see _remove_stale_staging
    try:
        root = staging / tree_name
        root.mkdir()
        tree = _build_tree(options, py, sources, root, name, version, epoch, say)
        if fmt == "dir":
            if artifact.is_dir():
                artifact.rmdir()
            os.replace(root, artifact)
            return BuildResult(artifact, tree_name, tree.floor, None, tree.audit, tree.vendored, libc=tree.libc)
        if fmt in IMAGE_FORMATS:
            say(f"Writing the image {artifact.name}")
            image = oci.write(
                root, staging / artifact.name, fmt, image=options.image, base=base, entry=options.entries[0][0] if options.entries else None,
                mtime=epoch, level=options.compress_level, threads=options.threads, progress=progress,
            )
            if artifact.is_dir():
                artifact.rmdir()
            os.replace(image.path, artifact)
            if image.sha256 is not None:
                artifact.with_name(artifact.name + ".sha256").write_text(f"{image.sha256}  {artifact.name}\n")
            return BuildResult(artifact, tree_name, tree.floor, image.sha256, tree.audit, tree.vendored, image.digest, libc=tree.libc)
        from shipenv.bundle import archive

        say(f"Packing {artifact.name}")
        packed = archive.write(
            root, staging / artifact.name, fmt, level=options.compress_level, threads=options.threads,
            mtime=epoch, arcname=tree_name, progress=progress,
        )
        # Signed in the staging directory: a failure to sign leaves no unsigned archive behind.
        signature = None
        if signer is not None:
            say(f"Signing {artifact.name} with {signer.public_key.fingerprint}")
            (staging / f"{artifact.name}.sig").write_text(sshsig.sign_file(packed.path, signer))
            signature = artifact.with_name(artifact.name + ".sig")
        os.replace(packed.path, artifact)
        sha_file = artifact.with_name(artifact.name + ".sha256")
        sha_file.write_text(f"{packed.sha256}  {artifact.name}\n")
        artifact.with_name(artifact.name + ".cdx.json").write_bytes((root / sbom.SBOM).read_bytes())
        if signature is not None:
            os.replace(staging / f"{artifact.name}.sig", signature)
        return BuildResult(artifact, tree_name, tree.floor, packed.sha256, tree.audit, tree.vendored,
                           libc=tree.libc, signature=signature, signer=signer.public_key.fingerprint if signer else None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.close()


def _remove_stale_staging(directory: Path) -> None:
    """Remove what builds killed with SIGKILL left behind (their lock is no longer held)."""
    for candidate in directory.glob(f".*{STAGING_SUFFIX}"):
        try:
            with (candidate / ".lock").open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(candidate, ignore_errors=True)
        except OSError:
            continue  # another build is using it, or it is not ours


@dataclass(frozen=True)
class TreeResult:
    """What the finished tree is, for the build's report."""

    floor: tuple[int, int] | None
    audit: tuple[AuditFinding, ...]
    vendored: tuple[str, ...]
    libc: str | None = None  #: with --libc bundled, what inspect says about it


def _interpreter_key(py: PythonInfo, options: BuildOptions) -> str:
    """Everything that changes the bytes of the interpreter layer."""
    return cache.key(
        "interpreter",
        cache.file_digest(py.executable),
        cache.tree_fingerprint(py.stdlib),
        cache.tree_fingerprint(py.dynload) if py.dynload and not interpreter.is_within(py.dynload, py.stdlib) else None,
        sorted(options.keep_stdlib),
        sorted(options.system_libs),
        options.libc,
        data.path("policy", "linux.json").read_text(),
        cache.tree_fingerprint(templates.directory()),
        cache.tree_fingerprint(data.path("launcher")),
    )


def _interpreter_layer(
    py: PythonInfo, options: BuildOptions, root: Path, lib_policy: policy.LibraryPolicy, store: cache.BuildCache | None, say: Step
) -> str:
    """Copy, relocate and byte-compile the base interpreter, or reuse it from the cache."""
    from shipenv.build import install

    layer_key = _interpreter_key(py, options)
    hit = store.get("interpreter", layer_key) if store else None
    if hit is not None:
        say(f"Reusing Python {py.version_str} from the cache")
        cache.merge_tree(hit, root)
        return layer_key
    say(f"Copying Python {py.version_str} from {py.executable}")
    interpreter.apply_copy(interpreter.plan_copy(py, options.keep_stdlib), root)
    say("Making the interpreter relocatable")
    plan = relocate.plan(root, lib_policy, machine=py.machine)
    relocate.apply(plan, root, patch.LiefPatcher())
    python = root / "bin" / f"python{py.xy}"
    scheme = install.tree_scheme(python, root)
    launchers.prepare_tree(py, root, scheme, options.libc)
    say("Byte-compiling the standard library")
    bytecode.byte_compile(python, [root])
    if store is not None:
        store.put("interpreter", layer_key, root, host_files=[v.src for v in plan.vendor] + [py.executable])
    return layer_key


def _build_tree(
    options: BuildOptions,
    py: PythonInfo,
    sources: Sources,
    root: Path,
    name: str,
    version: str,
    epoch: int,
    say: Step,
) -> TreeResult:
    from shipenv.build import audit, install

    store = cache.open_cache(options.cache_dir, options.use_cache)
    lib_policy = policy.load(options.system_libs, options.libc)
    layer_key = _interpreter_layer(py, options, root, lib_policy, store, say)
    python = root / "bin" / f"python{py.xy}"
    scheme = install.tree_scheme(python, root)

    distributions = []
    with tempfile.TemporaryDirectory(prefix="shipenv-stage-", dir=root.parent) as tmp:
        work = Path(tmp)
        wheels = install.collect_wheels(
            sources, options, py, python, work / "wheels", say, store=store.root / "wheels" if store else None
        )
        if wheels:
            say(f"Installing {len(wheels)} wheels")
        staged: list[tuple[Path, str, list[Path], str]] = []
        for index, (wheel, source) in enumerate(wheels):
            wheel_key = cache.key("wheel", layer_key, install.wheel_content_key(wheel), sorted(options.system_libs))
            hit = store.get("wheel", wheel_key) if store else None
            distributions.append(install.wheel_distribution(wheel, source))
            if hit is not None:
                _merge(hit, root, wheel.name)
                continue
            stage = work / f"stage-{index}"
            install.install_wheel(wheel, stage, scheme, py, source)
            plan = relocate.plan(stage, lib_policy, machine=py.machine, provided=root / relocate.LIB_DIR)
            relocate.apply(plan, stage, patch.LiefPatcher())
            staged.append((stage, wheel_key, [v.src for v in plan.vendor], wheel.name))
        wheel_digests = {d.name: manifest.hash_file(w)[0] for d, (w, _) in zip(distributions, wheels)}  # for the SBOM
        if staged:
            say(f"Byte-compiling {len(staged)} packages")
            bytecode.byte_compile(python, [stage for stage, _, _, _ in staged])
        for stage, wheel_key, host_files, wheel_name in staged:
            if store is not None:
                store.put("wheel", wheel_key, stage, host_files=host_files)
            _merge(stage, root, wheel_name, move=True)

    if options.venv is not None and sources.venv_site is not None:
        say(f"Copying packages from {options.venv}")
        copied = venv.copy_venv(sources.venv_site, root, scheme, py)
        distributions += copied
        plan = relocate.plan(root, lib_policy, machine=py.machine)
        relocate.apply(plan, root, patch.LiefPatcher())
        bytecode.byte_compile(python, [root / scheme.purelib], relative_to=root)
    launchers.write_entries(options, py, root, scheme)
    launchers.relocate_shebangs(root, scheme, py)
    distributions.sort(key=lambda d: d.name)

    bundled = libc.finish(root, lib_policy, py, scheme, options.max_glibc)

    say("Auditing for build-host paths")
    findings = audit.audit(root, audit.needles(py, sources, root))
    runs = [f for f in findings if f.kind == "runs"]
    if runs:
        raise RelocateError(
            f"The bundle still names the build host in files that run: {listing([f'{f.path} ({f.needle})' for f in runs])}.",
            hint="Run with --report to see every finding; please report this as a shipenv bug.",
        )

    infos = {rel: elf.try_read(root / rel) for rel in relocate.iter_elves(root)}
    floor = None if bundled else elf.glibc_floor(i for i in infos.values() if i is not None)
    if options.max_glibc is not None and floor is not None and floor > options.max_glibc:
        limit = manifest.format_version(options.max_glibc)
        over = sorted(
            (f"{rel} (GLIBC_{manifest.format_version(max(i.glibc_versions))})")
            for rel, i in infos.items()
            if i is not None and i.glibc_versions and max(i.glibc_versions) > options.max_glibc
        )
        raise PolicyError(
            f"The bundle needs glibc {manifest.format_version(floor)}, above --max-glibc {limit}, because of {listing(over)}.",
            hint="Build on an older distribution (or a manylinux image), or drop the packages that need a newer glibc.",
        )
    vendored = sorted(p.name for p in (root / "lib").iterdir() if p.is_file() and elf.is_elf(p))
    metadata = _manifest(name, version, py, scheme.purelib.as_posix(), floor, distributions, vendored, epoch, launchers.kind(py),
                         bundled.as_platform() if bundled else {})
    say("Writing the manifest")
    templates.install_bundle_files(root)
    say("Writing the SBOM")
    host_libs = relocate.host_libraries(py.machine)
    sbom.write(root, metadata.to_dict(), epoch=epoch, wheel_digests=wheel_digests,
               find_library=lambda soname: host_libs.find(soname, [str(py.libdir)] if py.libdir else []))
    manifest.write(root, metadata)
    return TreeResult(floor, tuple(findings), tuple(vendored), bundled.summary(py.machine) if bundled else None)


def _merge(layer: Path, root: Path, what: str, *, move: bool = False) -> None:
    clashes = cache.merge_tree(layer, root, move=move)
    if clashes:
        raise InstallError(
            f"{what} would overwrite files that another package installed: {listing(clashes)}.",
            hint="Two requirements ship the same files; drop one of them.",
        )


def _manifest(name: str, version: str, py: PythonInfo, site_packages: str, floor: tuple[int, int] | None,
              distributions: list[Distribution], vendored: list[str], epoch: int, launcher_kind: str,
              bundled_libc: dict[str, str]) -> manifest.Manifest:
    """What ``.shipenv/manifest.json`` (and ``.shipenv/facts``) will say about the tree."""
    return manifest.Manifest(
        name=name,
        version=version,
        python=manifest.ManifestPython(
            version=py.version_str, implementation=py.implementation, abi=py.abi_tag, soabi=py.soabi,
            executable=f"bin/python{py.xy}", site_packages=site_packages,
        ),
        platform=manifest.ManifestPlatform(
            py.machine, manifest.format_version(floor), _platform_tag(floor, py.machine), bundled_libc.get("libc"),
            bundled_libc.get("glibc"), bundled_libc.get("kernel_floor"), bundled_libc.get("loader"),
        ),
        distributions=tuple(manifest.ManifestDistribution(d.name, d.version, d.source) for d in distributions),
        vendored_libraries=tuple(vendored),
        build=manifest.ManifestBuild(__version__, epoch, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))),
        launchers=launcher_kind,
    )  # fmt: skip


def _platform_tag(floor: tuple[int, int] | None, machine: str) -> str:
    if floor is None:
        return f"linux_{machine}"
    return f"manylinux_{floor[0]}_{floor[1]}_{machine}"

