"""``shipenv build``: the pipeline, stage by stage.

resolve → interpreter → install → relocate → byte-compile → audit → manifest → pack

Everything is built in a staging directory beside the output, on the same file
system, and moved into place only when every stage has succeeded: a failed or
interrupted build leaves nothing half-written where the artifact would go.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from shipenv import __version__, elf, interpreter, manifest, policy, relocate, templates
from shipenv.errors import PolicyError, ShipenvError, UsageError, listing
from shipenv.model import BuildOptions, BuildResult, PythonInfo

log = logging.getLogger(__name__)

Step = Callable[[str], None]

#: Used when SOURCE_DATE_EPOCH is not set: 2020-01-01T00:00:00Z.
DEFAULT_EPOCH = 1577836800
_SUFFIXES = {".tar.zst": "tar.zst", ".tzst": "tar.zst", ".tar.gz": "tar.gz", ".tgz": "tar.gz", ".tar.xz": "tar.xz", ".txz": "tar.xz"}


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
    return fmt, options.output / (tree_name if fmt == "dir" else f"{tree_name}.{fmt}")


def _check_destination(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        if path.is_file() and not path.is_symlink():
            raise UsageError(f"{path} already exists.", hint="Remove it or choose another -o.")
        raise UsageError(f"{path} exists and is not a directory.", hint="Choose another -o.")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"The output {path} exists and is not empty.", hint="Remove it or choose another -o.")


def build(options: BuildOptions, step: Step | None = None) -> BuildResult:
    """Build a bundle as ``options`` say and return where it is."""
    say = step or (lambda _msg: None)
    from shipenv import install  # the package stage; imported late to keep the core light

    sources = install.resolve_sources(options)
    name = options.name or sources.name or "python"
    py = interpreter.inspect(options.python or sources.python)
    version = options.version or sources.version or py.version_str
    tree_name = f"{name}-{version}"
    fmt, artifact = artifact_path(options, tree_name)
    _check_destination(artifact)
    artifact.parent.mkdir(parents=True, exist_ok=True)
    epoch = source_date_epoch(options)

    staging = Path(tempfile.mkdtemp(prefix=f".{tree_name}.", suffix=".shipenv-tmp", dir=artifact.parent))
    try:
        root = staging / tree_name
        root.mkdir()
        result = _build_tree(options, py, sources, root, name, version, epoch, say)
        if fmt == "dir":
            if artifact.is_dir():
                artifact.rmdir()
            os.replace(root, artifact)
            return BuildResult(artifact, tree_name, result["floor"], None, result["audit"], result["skipped"], result["vendored"])
        from shipenv import archive

        say(f"Packing {artifact.name}")
        packed = archive.write(root, staging / artifact.name, fmt, level=options.compress_level, threads=options.threads, mtime=epoch, arcname=tree_name)
        os.replace(packed.path, artifact)
        sha_file = artifact.with_name(artifact.name + ".sha256")
        sha_file.write_text(f"{packed.sha256}  {artifact.name}\n")
        return BuildResult(artifact, tree_name, result["floor"], packed.sha256, result["audit"], result["skipped"], result["vendored"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_tree(
    options: BuildOptions,
    py: PythonInfo,
    sources: Any,
    root: Path,
    name: str,
    version: str,
    epoch: int,
    say: Step,
) -> dict[str, Any]:
    from shipenv import audit, install

    say(f"Copying Python {py.version_str} from {py.executable}")
    plan = interpreter.plan_copy(py, options.keep_stdlib)
    interpreter.apply_copy(plan, root)

    say("Making the interpreter relocatable")
    lib_policy = policy.load(options.system_libs)
    patcher = elf.LiefPatcher()
    relocate.apply(relocate.plan(root, lib_policy, machine=py.machine), root, patcher)
    python = root / "bin" / f"python{py.xy}"
    scheme = install.tree_scheme(python, root)

    distributions = install.install(sources, options, py, root, scheme, say)

    say("Making packages relocatable")
    relocate.apply(relocate.plan(root, lib_policy, machine=py.machine), root, patcher)
    install.relocate_text(root, scheme, py, sources)

    say("Byte-compiling")
    byte_compile(python, root)

    findings = audit.audit(root, audit.needles(py, sources, root))
    runs = [f for f in findings if f.kind == "runs"]
    if runs:
        raise ShipenvError(
            f"The bundle still names the build host in files that run: {listing([f'{f.path} ({f.needle})' for f in runs])}.",
            hint="Run with --report to see every finding; please report this as a shipenv bug.",
        )

    infos = {rel: elf.try_read(root / rel) for rel in relocate.iter_elves(root)}
    floor = elf.glibc_floor(i for i in infos.values() if i is not None)
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
    metadata = {
        "name": name,
        "version": version,
        "python": {
            "implementation": py.implementation,
            "version": py.version_str,
            "abi": py.abi_tag,
            "soabi": py.soabi,
            "executable": f"bin/python{py.xy}",
            "site_packages": scheme.purelib.as_posix(),
        },
        "platform": {
            "arch": py.machine,
            "glibc_floor": manifest.format_version(floor),
            "tag": _platform_tag(floor, py.machine),
        },
        "distributions": [
            {"name": d.name, "version": d.version, "source": d.source} for d in distributions
        ],
        "vendored_libraries": vendored,
        "build": {
            "shipenv_version": __version__,
            "source_date_epoch": epoch,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
        },
    }
    say("Writing the manifest")
    templates.install_bundle_files(root)
    manifest.write(root, metadata)
    return {"floor": floor, "audit": tuple(findings), "skipped": (), "vendored": tuple(vendored)}


def _platform_tag(floor: tuple[int, int] | None, machine: str) -> str:
    if floor is None:
        return f"linux_{machine}"
    return f"manylinux_{floor[0]}_{floor[1]}_{machine}"


def byte_compile(python: Path, root: Path) -> None:
    """Compile every ``.py`` in the tree with the bundle's own interpreter.

    ``unchecked-hash`` pycs do not depend on file mtimes, so they stay valid
    after an archive clamps mtimes, and are identical from build to build;
    ``-s root`` keeps the build path out of them (tracebacks name the file
    where it is at run time).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [str(python), "-I", "-B", "-m", "compileall", "-f", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
         "-s", str(root), "-x", r"(/|^)(test|tests)/data/", str(root / "lib")],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        # A package may ship files that are not Python 3 (templates, py2 leftovers):
        # pip tolerates them too; they simply stay uncompiled.
        failed = [line for line in proc.stdout.splitlines() if line.startswith("***")]
        log.warning("byte-compilation skipped %d file(s): %s", len(failed), "; ".join(failed[:3]))


def rel(path: Path, root: Path) -> PurePosixPath:
    return PurePosixPath(path.relative_to(root).as_posix())
