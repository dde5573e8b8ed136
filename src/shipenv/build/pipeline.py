"""``shipenv build``: the pipeline, stage by stage.

resolve → interpreter → install → relocate → byte-compile → audit → manifest → pack

Each stage is one short function below, in that order. Everything is built in
a staging directory beside the output (:mod:`shipenv.build.output`), on the same
file system, and moved into place only when every stage has succeeded: a failed
or interrupted build leaves nothing half-written where the artifact would go.
With a cache, the tree in it starts as the last build's (:mod:`shipenv.build.warm`),
which is kept in the cache again when the build succeeds.
Every tree or layer is made relocatable through the one
:func:`shipenv.build.relocate.relocate` (plan as data, then apply).

It runs past the house's 400 lines because it holds every stage's function (and the
SBOM's and the output cache's small adapters to the layers) and nothing else; the
threads of the layers live in :mod:`shipenv.build.layering`.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shipenv.build.install import Sources
    from shipenv.build.resolver import Resolution
    from shipenv.bundle import sshsig

from shipenv import __version__, data, templates
from shipenv.build import (
    audit,
    bytecode,
    cache,
    interpreter,
    launchers,
    layering,
    layers,
    libc,
    output,
    outputs,
    policy,
    relocate,
    venv,
    warm,
)
from shipenv.build.runner import REAL, Runner
from shipenv.bundle import archive, elf, manifest, sbom
from shipenv.errors import PolicyError, ShipenvError, UsageError, listing
from shipenv.model import IMAGE_FORMATS, AuditFinding, BuildOptions, BuildResult, Distribution, PythonInfo, Scheme

log = logging.getLogger(__name__)

Step = Callable[[str], None]
Progress = Callable[[int, int], None]


def build(options: BuildOptions, step: Step | None = None, progress: Progress | None = None, runner: Runner = REAL) -> BuildResult:
    """Build a bundle as ``options`` say and return where it is.

    ``step`` hears about each stage and ``progress`` about downloads and
    packing (files, bytes); neither is needed. ``runner`` runs pip, uv, the probe and the
    byte-compiler (tests pass a fake). A disk that fills up or an output directory that
    cannot be written is reported in one sentence, with nothing left behind.
    """
    # Without the cyclic garbage collector: a build holds some 100,000 long-lived objects (every
    # layer's facts, the ledger, the archive's members), which each full collection walks again,
    # and makes few reference cycles. perf put the collector at 3 % of a rebuild's CPU; memory
    # is still freed by reference counting.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _build(options, step or (lambda _msg: None), progress, runner)
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
    finally:
        if collecting:
            gc.enable()


@dataclass(frozen=True)
class Build:
    """What every stage of one build shares."""

    options: BuildOptions
    py: PythonInfo
    sources: Sources
    root: Path
    libs: policy.LibraryPolicy  #: which libraries the target provides
    store: cache.BuildCache | None
    say: Step
    runner: Runner
    ledger: layers.Ledger  #: which files of the tree came from which layer
    #: The interpreter layer's key, computed once (the output cache's key needs it first; it hashes the executable).
    interpreter_key: Callable[[], str]
    pins: Resolution | None = None  #: uv's resolution, made before the tree existed (:func:`outputs.plan`)
    progress: Progress | None = None  #: hears about downloads (files, bytes)

    @property
    def python(self) -> Path:
        """The copied interpreter, which runs pip, reports the scheme and byte-compiles."""
        return self.root / "bin" / f"python{self.py.xy}"


@dataclass(frozen=True)
class TreeResult:
    """What the finished tree is, for the build's report."""

    floor: tuple[int, int] | None
    audit: tuple[AuditFinding, ...]
    vendored: tuple[str, ...]
    libc: str | None = None  #: with --libc bundled, what inspect says about it
    walked: archive.Listing | None = None  #: the tree as its last walk saw it, for the packer (only ``.shipenv/`` changed since)


def _build(options: BuildOptions, say: Step, progress: Progress | None, runner: Runner) -> BuildResult:
    from shipenv.build import install  # the package stage; imported late to keep the core light

    threading.Thread(target=sbom.preload, name="shipenv-preload", daemon=True).start()  # while uv and the probes run

    sources = install.resolve_sources(options)
    py = interpreter.inspect(options.python or sources.python, runner)
    name, version = options.name or sources.name or "python", options.version or sources.version or py.version_str
    target = output.target(options, name, version, py.machine)
    if options.sign_key is not None and (target.fmt == "dir" or target.fmt in IMAGE_FORMATS):
        made = "a directory" if target.fmt == "dir" else "a container image"
        raise UsageError(f"--sign-key signs an archive, and --format {target.fmt} makes {made}.", hint="Build a .tar.zst or .tar.gz to sign it.")
    signer = None
    if options.sign_key is not None:
        from shipenv.bundle import sshsig

        signer = sshsig.load_signer(options.sign_key)  # a bad key fails now
    store = cache.open_cache(options.cache_dir, options.use_cache)
    layer_key = _once(lambda: _interpreter_key(py, options))
    _start_early(store, layer_key)
    kept = outputs.plan(options, sources, py, target, store, layer_key, runner)
    with output.staging(target) as staging:
        hit = outputs.lookup(store, kept.key) if store is not None and kept.key is not None else None
        if hit is not None:
            say(f"Reusing {target.artifact.name} from the cache (nothing it is made from changed)")
            outputs.copy(hit.archive, staging / target.artifact.name)
            signature = _publish(staging / target.artifact.name, hit.result.sha256 or "", hit.sbom, staging, target.artifact, say, signer)
            return dataclasses.replace(hit.result, path=target.artifact, signature=signature,
                                       signer=signer.public_key.fingerprint if signer else None)
        root = staging / target.tree_name
        root.mkdir()
        ledger = layers.Ledger(audit.needles(py, sources, root), str(root))
        b = Build(options, py, sources, root, policy.load(options.system_libs, options.libc), store, say, runner, ledger, layer_key, kept.pins,
                  progress)
        tree = _build_tree(b, target)
        if target.fmt == "dir":
            output.place(root, target.artifact)
            return BuildResult(target.artifact, target.tree_name, tree.floor, None, tree.audit, tree.vendored, libc=tree.libc)
        if target.fmt in IMAGE_FORMATS:
            sha256, digest = _image(root, staging, target, options, say, progress)
            return BuildResult(target.artifact, target.tree_name, tree.floor, sha256, tree.audit, tree.vendored, digest, libc=tree.libc)
        sha256, signature = _pack(root, staging, target, options, say, progress, signer, b.ledger, tree.walked)
        result = BuildResult(target.artifact, target.tree_name, tree.floor, sha256, tree.audit, tree.vendored,
                             libc=tree.libc, signature=signature, signer=signer.public_key.fingerprint if signer else None)
        key = outputs.key_after(kept, options, sources, py, target, store, layer_key) if store is not None else None
        if store is not None and key is not None:
            outputs.keep(store, key, result, root / sbom.SBOM, b.ledger.layers, b.ledger.fresh)
        if store is not None:
            warm.keep(store, layer_key(), root, b.ledger.layers)  # for the next build, instead of removing 10,000 links now
        return result


def _start_early(store: cache.BuildCache | None, layer_key: Callable[[], str]) -> None:
    """On a thread, while the requirements resolve: the interpreter layer's key (a digest of the
    executable, a walk of the standard library), which every build needs, then with a cache the
    checks of the last build's entries (:func:`shipenv.build.warm.prefetch`).

    What fails here fails again where the build needs it, and is reported there.
    """
    def run() -> None:
        try:
            key = layer_key()
        except Exception as exc:  # see above
            log.debug("the interpreter's key, computed early, failed (%s)", exc)
            return
        if store is not None:
            warm.prefetch(store, key)

    threading.Thread(target=run, name="shipenv-early", daemon=True).start()


def _once(compute: Callable[[], str]) -> Callable[[], str]:
    """``compute()`` once, on the first call from any thread; a call meanwhile waits for that value."""
    lock = threading.Lock()
    value: list[str] = []

    def get() -> str:
        with lock:
            if not value:
                value.append(compute())
            return value[0]

    return get


def _build_tree(b: Build, target: output.Target) -> TreeResult:
    """Every stage that writes the tree, in order.

    The layers overlap: one compile.py process (:class:`bytecode.Compiler`)
    byte-compiles the standard library while the wheels are resolved and
    installed, and each wheel's layer as soon as it is installed; the wheels
    install on a few threads (:mod:`shipenv.build.layering`), and each layer's
    facts are read as soon as it is compiled. Only the merge into the tree is in order.
    """
    wheel_digests: dict[str, str] = {}  # for the SBOM
    # Left in this order: the threads end (the compiler stopped first, on an error) before their stages are removed.
    with tempfile.TemporaryDirectory(prefix="shipenv-stage-", dir=b.root.parent) as work, \
            bytecode.Compiler(b.python, runner=b.runner) as compiler, layering.Workers(compiler) as workers:
        layer_key, scheme, interpreter_layer, reused = _interpreter_layer(b, workers)
        distributions = _install_wheels(b, layer_key, scheme, wheel_digests, workers, interpreter_layer, Path(work), reused)
        compiler.finish()
    if reused is not None:  # what the last build had and this one has not
        warm.sweep(b.root, b.ledger.placed())
    distributions += _copy_venv(b, scheme)
    launchers.write(launchers.entry_launchers(b.options.entries, b.py, scheme), b.root)
    bundled = libc.finish(b.root, b.libs, b.py, scheme, b.options.max_glibc)
    templates.install_bundle_files(b.root)  # before the walk: after it, only .shipenv/ changes
    dirs: list[manifest.Stat] = []
    walked = list(manifest.walk_stat(b.root, dirs))  # the tree as the audit, the floor, RECORD and the packer see it: one walk for all
    findings = _audit(b, walked)
    floor = None if bundled else _glibc_floor(b.root, b.options.max_glibc, b.ledger, walked)
    vendored = sorted(p.name for p in (b.root / relocate.LIB_DIR).iterdir() if p.is_file() and elf.is_elf(p))
    b.say("Writing the manifest")
    distributions.sort(key=lambda d: d.name)
    platform_extra = bundled.as_platform() if bundled else {}
    metadata = _manifest(target, b.py, scheme, floor, distributions, vendored, platform_extra)
    b.say("Writing the SBOM")
    host_libs = policy.host_libraries(b.py.machine)
    libdir = [str(b.py.libdir)] if b.py.libdir else []
    sbom.write(b.root, metadata.to_dict(), epoch=target.epoch, wheel_digests=wheel_digests,
               find_library=lambda soname: host_libs.find(soname, libdir), origins=lambda paths: _origins(b, paths),
               digest=lambda path: _vouched_digest(b, path), interpreter=lambda: _python_build(b, layer_key))
    manifest.write(b.root, metadata, known=b.ledger.record, walked=walked)
    return TreeResult(floor, tuple(findings), tuple(vendored), bundled.summary(b.py.machine) if bundled else None,
                      archive.Listing(walked + dirs, (manifest.META_DIR.as_posix(),)))


def _origins(b: Build, paths: list[Path]) -> dict[Path, sbom.PackageOrigin]:
    """Which Debian package each vendored library came from (``dpkg -S``), kept in the cache while the files and dpkg's database stay as they were."""
    if b.store is None:
        return sbom.debian_origins(paths)
    found = b.store.remember("origins", [cache.host_files_state(paths), cache.host_files_state(outputs.DPKG_STATE)],
                             lambda: {str(p): dataclasses.asdict(o) for p, o in sbom.debian_origins(paths).items()})
    try:
        return {Path(p): sbom.PackageOrigin(**o) for p, o in found.items()}
    except (TypeError, AttributeError):  # not what remember() stored: ask dpkg again
        return sbom.debian_origins(paths)


def _vouched_digest(b: Build, path: Path) -> str | None:
    """The sha256 a layer vouches for (the SBOM's libraries are layer files: no byte read), or None."""
    entry = b.ledger.record(path.relative_to(b.root).as_posix(), os.lstat(path))
    return entry.sha256 if entry is not None else None


def _python_build(b: Build, layer_key: str) -> tuple[str | None, str | None]:
    """What the copied interpreter says of its build, kept in the cache under the interpreter layer's key (no process then)."""
    if b.store is None:
        return sbom.python_build(b.root, f"bin/python{b.py.xy}")
    found = b.store.remember("python-build", [layer_key], lambda: list(sbom.python_build(b.root, f"bin/python{b.py.xy}")))
    if isinstance(found, list) and len(found) == 2 and all(v is None or isinstance(v, str) for v in found):
        return found[0], found[1]
    return sbom.python_build(b.root, f"bin/python{b.py.xy}")


def _interpreter_key(py: PythonInfo, options: BuildOptions) -> str:
    """Everything that changes the bytes of the interpreter layer."""
    return cache.key(
        "interpreter",
        cache.file_digest(py.executable),
        cache.tree_fingerprint(py.stdlib, skip=interpreter.NOT_COPIED),
        cache.tree_fingerprint(py.dynload) if py.dynload and not interpreter.is_within(py.dynload, py.stdlib) else None,
        sorted(options.keep_stdlib),
        sorted(options.system_libs),
        options.libc,
        data.path("policy", "linux.json").read_text(),
        cache.content_fingerprint(templates.directory()),
        cache.content_fingerprint(data.path("launcher")),
    )


def _interpreter_layer(b: Build, workers: layering.Workers) -> tuple[str, Scheme, Future[layers.Layer] | None, warm.Warm | None]:
    """Copy and relocate the base interpreter, or reuse it from the cache; return its key, the scheme, and the layer to come.

    A fresh interpreter is copied straight into the tree (nothing is there
    yet to merge with) and its standard library is byte-compiled while the
    wheels are resolved and installed: only the relocated interpreter is
    needed for that (the scheme probe and uv run it with ``-B``; pip, which
    would write bytecode into the standard library, first waits for it).
    Its facts are read and its cache entry stored on a worker once it is
    compiled; the returned future gives that layer, which joins the ledger
    before any wheel is merged (it is the first layer, and owns its files).

    A cached interpreter is merged into the last build's tree when the cache
    kept one (:mod:`shipenv.build.warm`), returned last: swept down to the
    interpreter's files, its site-packages aside until the wheels are merged.
    """
    py = b.py
    layer_key = b.interpreter_key()
    hit = b.store.get_layer("interpreter", layer_key) if b.store else None
    if hit is not None and hit.entry is not None:
        b.say(f"Reusing Python {py.version_str} from the cache")
        site = f"lib/python{py.xy}/site-packages"
        reused = warm.take(b.store, layer_key, b.root, site) if b.store is not None else None
        layering.merge_cached(hit, b.root, b.ledger, "the interpreter", reused is not None)
        if reused is not None:
            warm.sweep(b.root, b.ledger.placed(), spare={warm.ASIDE})
        scheme = _scheme(b)
        if reused is not None and {scheme.purelib.as_posix(), scheme.platlib.as_posix()} != {site}:
            warm.sweep(b.root, b.ledger.placed())  # not the layout it was put aside for: start from the interpreter alone
            reused = None
        return layer_key, scheme, None, reused
    b.say(f"Copying Python {py.version_str} from {py.executable}")
    interpreter.apply_copy(interpreter.plan_copy(py, b.options.keep_stdlib), b.root)
    b.say("Making the interpreter relocatable")
    plan = relocate.relocate(b.root, py, b.libs)
    scheme = _scheme(b)
    launchers.write(launchers.python_launchers(py, scheme, b.options.libc), b.root)
    b.say("Byte-compiling the standard library")
    workers.compiler.add(b.root)
    host_files = [v.src for v in plan.vendor] + [py.executable]

    def finish() -> layers.Layer:
        facts = layering.read(workers.compiler, b.root, b.ledger.needles)  # with or without a cache: the archive's fragments follow the layers
        entry = b.store.put("interpreter", layer_key, b.root, host_files=host_files, facts=facts) if b.store is not None else None
        return layers.Layer("the interpreter", facts, entry)

    return layer_key, scheme, workers.layers.submit(finish), None


def _scheme(b: Build) -> Scheme:
    from shipenv.build import install

    return install.tree_scheme(b.python, b.root, b.runner)


def _install_wheels(b: Build, layer_key: str, scheme: Scheme, wheel_digests: dict[str, str], workers: layering.Workers,
                    interpreter_layer: Future[layers.Layer] | None, work: Path, reused: warm.Warm | None) -> list[Distribution]:
    """Install, relocate and byte-compile each wheel in a layer of its own (or reuse it), then merge, in order.

    Every wheel is relocated against ``lib/`` as the interpreter left it
    (``provided``): no layer is merged before the last wheel is relocated, so
    what a layer vendors never depends on which other layers came first, or
    how the threads ran. The merge is in requirement order, which decides who
    owns a file (and so which fragment of the archive it goes into).
    """
    from shipenv.build import install

    options = b.options
    distributions = []
    compiler = workers.compiler
    store = b.store.root / "wheels" if b.store else None
    before_pip = (lambda: compiler.wait(b.root)) if interpreter_layer is not None else None
    wheels = install.collect_wheels(b.sources, options, b.py, b.python, work / "wheels", b.say, store=store, runner=b.runner,
                                    pins=b.pins, before_pip=before_pip, progress=b.progress)
    if wheels:
        b.say(f"Installing {len(wheels)} wheels")
    keys = [cache.key("wheel", layer_key, install.wheel_content_key(w), sorted(options.system_libs)) for w, _ in wheels]
    order: list[tuple[str, layers.Layer | layering.Fresh]] = []
    # Cache entries are checked, and (without a cache) the wheels hashed for the SBOM, on threads
    # (file system latency, and hashlib releases the GIL); with a cache the output key's digests serve.
    def start(index: int) -> layering.Fresh:
        (wheel, source), wheel_key = wheels[index], keys[index]
        return layering.start(workers, wheel.name, wheel_key, wheel, work / f"stage-{index}", scheme, b.py, b.libs,
                              b.root / relocate.LIB_DIR, source)

    store_ = b.store
    # A wheel with no entry at all is installed now, not once the entries of the wheels before it are checked.
    early = {i: start(i) for i, k in enumerate(keys) if store_ is None or not store_.has("wheel", k)}
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="shipenv-cache") as pool:
        found = pool.map(lambda k: store_.get_layer("wheel", k) if store_ is not None and k is not None else None,
                         [None if i in early else k for i, k in enumerate(keys)])
        digests = (outputs.wheel_digests(store_, [w for w, _ in wheels]) if store_ is not None
                   else pool.map(lambda w: manifest.hash_file(w[0])[0], wheels))
        for index, ((wheel, source), hit) in enumerate(zip(wheels, found)):
            distributions.append(install.wheel_distribution(wheel, source))
            if hit is not None and hit.entry is not None:
                order.append((wheel.name, hit))
                continue
            order.append((wheel.name, early[index] if index in early else start(index)))
        fresh = [layer for _name, layer in order if isinstance(layer, layering.Fresh)]
        for layer in fresh:
            layer.compiled(workers, b.ledger.needles)
        wheel_digests.update({d.name: digest for d, digest in zip(distributions, digests)})
    if fresh:
        b.say(f"Byte-compiling {len(fresh)} packages (finishing: it began with the first install)")
    if interpreter_layer is not None:
        b.ledger.add(interpreter_layer.result(), b.root)
    if reused is not None:  # once the byte-compiler, which runs in the tree, is done with every fresh layer
        for layer in fresh:
            assert layer.facts is not None
            layer.facts.result()
        warm.restore_site(reused)
    for name, made in order:
        if isinstance(made, layers.Layer):
            layering.merge_cached(made, b.root, b.ledger, name, reused is not None)
        else:
            layering.merge_fresh(made, b.store, b.root, b.ledger, reused is not None)
    return distributions


def _copy_venv(b: Build, scheme: Scheme) -> list[Distribution]:
    """Copy what ``--venv`` holds, then relocate and byte-compile the tree it went into."""
    if b.options.venv is None or b.sources.venv_site is None:
        return []
    b.say(f"Copying packages from {b.options.venv}")
    copied = venv.copy_venv(b.sources.venv_site, b.root, scheme, b.py)
    relocate.relocate(b.root, b.py, b.libs)
    bytecode.byte_compile(b.python, [b.root / scheme.purelib], relative_to=b.root, runner=b.runner)
    return copied


def _audit(b: Build, walked: list[tuple[str, str, os.stat_result]]) -> list[AuditFinding]:
    """Every remaining build-host path, classified; one in a file that runs fails the build."""
    b.say("Auditing for build-host paths")
    findings = audit.audit(b.root, b.ledger.needles, known=b.ledger.findings, entries=walked)
    audit.verdict(findings)
    return findings


def _glibc_floor(root: Path, max_glibc: tuple[int, int] | None, ledger: layers.Ledger,
                 walked: list[tuple[str, str, os.stat_result]]) -> tuple[int, int] | None:
    """The highest ``GLIBC_x.y`` any ELF in the tree needs; above ``--max-glibc`` it fails, naming the files.

    ELF facts come from the layers where they vouch for a file; only the rest is read.
    """
    infos = layers.glibc_infos(root, ledger, walked)
    floor = elf.glibc_floor(i for i in infos.values() if i is not None)
    if max_glibc is not None and floor is not None and floor > max_glibc:
        over = sorted(
            f"{rel} (GLIBC_{manifest.format_version(max(i.glibc_versions))})"
            for rel, i in infos.items()
            if i is not None and i.glibc_versions and max(i.glibc_versions) > max_glibc
        )
        raise PolicyError(
            f"The bundle needs glibc {manifest.format_version(floor)}, above --max-glibc {manifest.format_version(max_glibc)}, "
            f"because of {listing(over)}.",
            hint="Build on an older distribution (or a manylinux image), or drop the packages that need a newer glibc.",
        )
    return floor


def _manifest(
    target: output.Target,
    py: PythonInfo,
    scheme: Scheme,
    floor: tuple[int, int] | None,
    distributions: list[Distribution],
    vendored: list[str],
    bundled_libc: dict[str, str],
) -> manifest.Manifest:
    """What ``.shipenv/manifest.json`` (and ``.shipenv/facts``) will say about the tree: the one place it is put together."""
    return manifest.Manifest(
        name=target.name,
        version=target.version,
        python=manifest.ManifestPython(
            version=py.version_str, implementation=py.implementation, abi=py.abi_tag, soabi=py.soabi,
            executable=f"bin/python{py.xy}", site_packages=scheme.purelib.as_posix(),
        ),
        platform=manifest.ManifestPlatform(
            py.machine, manifest.format_version(floor), _platform_tag(floor, py.machine), bundled_libc.get("libc"),
            bundled_libc.get("glibc"), bundled_libc.get("kernel_floor"), bundled_libc.get("loader"),
        ),
        distributions=tuple(manifest.ManifestDistribution(d.name, d.version, d.source) for d in distributions),
        vendored_libraries=tuple(vendored),
        build=manifest.ManifestBuild(__version__, target.epoch, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(target.epoch))),
        launchers=launchers.kind(py),
    )  # fmt: skip


def _platform_tag(floor: tuple[int, int] | None, machine: str) -> str:
    if floor is None:
        return f"linux_{machine}"
    return f"manylinux_{floor[0]}_{floor[1]}_{machine}"


def _pack(
    root: Path, staging: Path, target: output.Target, options: BuildOptions, say: Step, progress: Progress | None,
    signer: sshsig.Signer | None, ledger: layers.Ledger, walked: archive.Listing | None = None,
) -> tuple[str, Path | None]:
    """Write the archive, its ``.sha256``, its SBOM and (with a key) its ``.sig``; return the digest and the signature.

    A ``.tar.zst`` or ``.tar.gz`` is assembled from one fragment per layer
    (:mod:`shipenv.bundle.fragments`), each kept compressed in its layer's cache entry
    when there is a cache: with or without one, the same inputs give the same bytes.
    """
    from shipenv.bundle import fragments

    artifact = target.artifact
    say(f"Packing {artifact.name}")
    if ledger.layers and target.fmt in fragments.FORMATS:
        parts = []
        stats = {rel: st for rel, _full, st in walked.rows} if walked is not None else None
        for index, layer in enumerate(ledger.layers):
            mine, _others = ledger.owned(index, root, stats)
            parts.append(fragments.Fragment(frozenset(mine), layer.entry / "fragments" if layer.entry is not None else None))
        packed = fragments.write(
            root, staging / artifact.name, target.fmt, level=options.compress_level, threads=options.threads,
            mtime=target.epoch, arcname=target.tree_name, fragments=parts, progress=progress, listing=walked,
        )
    else:
        packed = archive.write(
            root, staging / artifact.name, target.fmt, level=options.compress_level, threads=options.threads,
            mtime=target.epoch, arcname=target.tree_name, progress=progress,
        )
    return packed.sha256, _publish(packed.path, packed.sha256, root / sbom.SBOM, staging, artifact, say, signer)


def _publish(built: Path, sha256: str, sbom_file: Path, staging: Path, artifact: Path, say: Step, signer: sshsig.Signer | None) -> Path | None:
    """Move a finished archive from the staging directory into place with its ``.sha256``, its SBOM and (with a key) its ``.sig``.

    Signed in the staging directory: a failure to sign leaves no unsigned archive behind.
    Returns the signature's path.
    """
    signature = None
    if signer is not None:
        from shipenv.bundle import sshsig

        say(f"Signing {artifact.name} with {signer.public_key.fingerprint}")
        (staging / f"{artifact.name}.sig").write_text(sshsig.sign_file(built, signer))
        signature = artifact.with_name(artifact.name + ".sig")
    os.replace(built, artifact)
    artifact.with_name(artifact.name + ".sha256").write_text(f"{sha256}  {artifact.name}\n")
    artifact.with_name(artifact.name + ".cdx.json").write_bytes(sbom_file.read_bytes())
    if signature is not None:
        os.replace(staging / f"{artifact.name}.sig", signature)
    return signature


def _image(
    root: Path, staging: Path, target: output.Target, options: BuildOptions, say: Step, progress: Progress | None
) -> tuple[str | None, str]:
    """Write the OCI image (layout or ``.oci.tar``); return the tar's sha256 (if one) and the manifest digest."""
    from shipenv.bundle import oci

    assert target.base is not None  # read by output.target for the image formats
    say(f"Writing the image {target.artifact.name}")
    image = oci.write(
        root, staging / target.artifact.name, target.fmt, image=options.image, base=target.base,
        entry=options.entries[0][0] if options.entries else None,
        mtime=target.epoch, level=options.compress_level, threads=options.threads, progress=progress,
    )
    output.place(image.path, target.artifact)
    if image.sha256 is not None:
        target.artifact.with_name(target.artifact.name + ".sha256").write_text(f"{image.sha256}  {target.artifact.name}\n")
    return image.sha256, image.digest
