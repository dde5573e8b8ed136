"""The layers of one build: made on a few threads, byte-compiled by one process, merged into the tree in order.

A fresh layer (a wheel) is installed and relocated in a stage of its own on
an install thread, byte-compiled by the build's one :class:`bytecode.Compiler`
as soon as it is there, and its facts (:func:`layers.compute`) are read on
another thread as soon as compile.py says it is done. The pipeline merges the
layers in requirement order, which decides who owns a file (and so which
fragment of the archive it goes into), so the threads change how long a build
takes and nothing else.

Each directory tree is made once per layer. With a cache the stage itself
becomes the cache entry (one rename, :meth:`cache.BuildCache.put`) and is
merged into the tree exactly as a cached layer is: hard links, placed from
the facts (:func:`merge_cached`). Without one the stage is moved into the
tree, a directory the tree lacks with one rename (:func:`placing.move_layer`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from shipenv.build import bytecode, cache, layers, placing, relocate, warm
from shipenv.build.policy import LibraryPolicy
from shipenv.errors import InstallError, listing
from shipenv.model import PythonInfo, Scheme

#: Wheels installed at once: on two cores, with the byte-compiler's processes beside them, more gain nothing.
INSTALL_THREADS = 2


class Workers:
    """The threads of one build, and the compiler they wait on.

    Installs are independent (each wheel into a stage of its own) and spend
    their time creating files and inflating zip members, which release the
    GIL: a few run at once. Reading a layer's facts (hashing) waits for its
    compilation, on threads of its own. Leaving the block with an error
    stops the compiler first, so no thread is left waiting for it, then
    waits for the threads that are running (queued work is dropped): the
    staging directory is removed only when nothing writes into it any more.
    """

    def __init__(self, compiler: bytecode.Compiler) -> None:
        self.compiler = compiler
        self.installs = ThreadPoolExecutor(max_workers=INSTALL_THREADS, thread_name_prefix="shipenv-install")
        self.layers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shipenv-layer")

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None:
            self.compiler.stop()
        for pool in (self.installs, self.layers):
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Fresh:
    """A wheel installed into a stage of its own, on its way to the tree."""

    name: str
    stage: Path
    key: str
    installed: Future[list[Path]]  #: the host libraries it vendored, once installed and relocated
    facts: Future[layers.LayerFacts] | None = None  #: read once it is compiled

    def compiled(self, workers: Workers, needles: tuple[str, ...]) -> None:
        """Wait for the install, then hand the stage to the compiler, and its facts to a thread that waits for that."""
        self.installed.result()
        workers.compiler.add(self.stage)
        self.facts = workers.layers.submit(read, workers.compiler, self.stage, needles)


def start(workers: Workers, name: str, key: str, wheel: Path, stage: Path, scheme: Scheme, py: PythonInfo,
          libs: LibraryPolicy, provided: Path, source: str) -> Fresh:
    """Install and relocate ``wheel`` into ``stage`` on an install thread."""
    return Fresh(name, stage, key, workers.installs.submit(_install, wheel, stage, scheme, py, libs, provided, source))


def _install(wheel: Path, stage: Path, scheme: Scheme, py: PythonInfo, libs: LibraryPolicy, provided: Path, source: str) -> list[Path]:
    from shipenv.build import install  # the package stage: imported late, as the pipeline does

    install.install_wheel(wheel, stage, scheme, py, source)
    plan = relocate.relocate(stage, py, libs, provided=provided)
    return [v.src for v in plan.vendor]


def read(compiler: bytecode.Compiler, tree: Path, needles: tuple[str, ...]) -> layers.LayerFacts:
    """A layer's facts, once its byte-compilation is done."""
    compiler.wait(tree)
    return layers.compute(tree, needles)


def merge_fresh(layer: Fresh, store: cache.BuildCache | None, root: Path, ledger: layers.Ledger, reused: bool = False) -> None:
    """Store a fresh layer's stage as its cache entry (a rename) and merge it from there, or move it into the tree.

    ``reused``: the tree is the last build's (:mod:`shipenv.build.warm`).
    """
    assert layer.facts is not None
    facts = layer.facts.result()
    host_files = layer.installed.result()
    entry = store.put("wheel", layer.key, layer.stage, host_files=host_files, facts=facts, move=True) if store is not None else None
    if entry is not None and not layer.stage.exists():
        merge_cached(layers.Layer(layer.name, facts, entry), root, ledger, layer.name, reused)
        return
    if reused:  # the stage is moved in as into an empty tree: nothing of the last build may be in its way
        warm.sweep(root, ledger.placed())
    clashes, placed = placing.move_layer(layer.stage, facts, root)  # no cache, or one on another file system
    refuse_clashes(clashes, layer.name)
    ledger.add(layers.Layer(layer.name, facts, entry), root, placed)


def merge_cached(layer: layers.Layer, root: Path, ledger: layers.Ledger, what: str, reused: bool = False) -> None:
    """Link a cache entry's files into the tree and record them in the ledger (``reused``: the tree is the last build's)."""
    clashes, placed = placing.merge_layer(layer, root, ledger.placed() if reused else None)
    refuse_clashes(clashes, what)
    ledger.add(layer, root, placed)


def refuse_clashes(clashes: list[str], what: str) -> None:
    if clashes:
        raise InstallError(
            f"{what} would overwrite files that another package installed: {listing(clashes)}.",
            hint="Two requirements ship the same files; drop one of them.",
        )
