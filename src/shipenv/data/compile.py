# Run by the *bundled* interpreter (any CPython >= 3.8), never imported by shipenv.
#
#   python -I -B compile.py ROOT[::SUBDIR] [ROOT[::SUBDIR] ...]
#   python -I -B compile.py -        (the same specs, one a line on stdin, until EOF)
#
# Byte-compiles every .py file under each ROOT (but the ones SKIP names: the
# test suites of installed packages, test data), recording paths relative to
# that ROOT (so no build path ends up in a .pyc), as unchecked-hash pycs that
# stay valid whatever the files' mtimes become. One process pool serves all
# roots: a build compiles the stdlib and each wheel's files in one go. With
# "-", a root's files go to the pool as soon as its line arrives, so the
# build installs the next wheel while this one compiles; and as soon as every
# file of a root is compiled, "=N" is printed (N counts the roots from 0, in
# the order they came), so the build goes on with that layer while the others
# compile. At the end, prints the files that could not be compiled, one a
# line, in the order they were found.
import compileall
import os
import py_compile
import re
import sys
import threading
from concurrent.futures import ProcessPoolExecutor

# Not compiled: test data, old bytecode, and the test suites that installed
# packages ship (a "tests" directory anywhere under site-packages, e.g.
# pandas/tests, numpy/*/tests). Those stay in the bundle as sources but are
# never imported by an application: compiling them was a third of the
# compile time and 40% of the pycs' bytes. The stdlib's own test suite, kept
# with --keep-stdlib test, is still compiled; so is a package's "test" module
# (django.test is a runtime API).
SKIP = re.compile(r"(^|/)(tests?/data|__pycache__)/|(^|/)(site|dist)-packages/(.+/)?tests/")
CHUNK = 64  # files per task: few round trips, and still work for every core


def compile_one(job):
    path, rel_dir = job
    ok = compileall.compile_file(
        path,
        ddir=rel_dir,
        force=True,
        quiet=2,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    return None if ok else path


def compile_many(batch):
    return [p for p in map(compile_one, batch) if p]


def jobs(arg):
    # ROOT, or ROOT::SUBDIR to compile only SUBDIR with paths relative to ROOT.
    root, _, sub = arg.partition("::")
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, sub) if sub else root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        if SKIP.search(rel_dir.replace(os.sep, "/") + "/"):
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name), rel_dir


def specs(argv):
    if argv != ["-"]:
        yield from argv
        return
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.rstrip("\n")


class Root:
    """Counts a root's batches still compiling; says "=N" when the last one is done."""

    lock = threading.Lock()

    def __init__(self, index, announce):
        self.index = index
        self.announce = announce
        self.pending = 1  # until every batch is submitted

    def add(self, future):
        with self.lock:
            self.pending += 1
        future.add_done_callback(self.done)

    def done(self, future=None):
        if future is not None and (future.cancelled() or future.exception() is not None):
            return  # never announced: the process fails at the end and says why
        with self.lock:
            self.pending -= 1
            if self.pending == 0 and self.announce:
                sys.stdout.write("=%d\n" % self.index)
                sys.stdout.flush()


def main():
    futures = []
    announce = sys.argv[1:] == ["-"]
    with ProcessPoolExecutor() as pool:
        for index, spec in enumerate(specs(sys.argv[1:])):
            root = Root(index, announce)
            batch = []
            for job in jobs(spec):
                batch.append(job)
                if len(batch) == CHUNK:
                    futures.append(pool.submit(compile_many, batch))
                    root.add(futures[-1])
                    batch = []
            if batch:
                futures.append(pool.submit(compile_many, batch))
                root.add(futures[-1])
            root.done()
        failed = [p for f in futures for p in f.result()]
    for path in failed:
        print(path)


if __name__ == "__main__":
    main()
