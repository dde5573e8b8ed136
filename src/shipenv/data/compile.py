# Run by the *bundled* interpreter (any CPython >= 3.8), never imported by shipenv.
#
#   python -I -B compile.py ROOT[::SUBDIR] [ROOT[::SUBDIR] ...]
#
# Byte-compiles every .py file under each ROOT, recording paths relative to
# that ROOT (so no build path ends up in a .pyc), as unchecked-hash pycs that
# stay valid whatever the files' mtimes become. One process pool serves all
# roots: a build compiles the stdlib and each wheel's files in one go.
import compileall
import os
import py_compile
import re
import sys
from concurrent.futures import ProcessPoolExecutor

SKIP = re.compile(r"(^|/)(tests?/data|__pycache__)/")


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


def jobs(roots):
    for arg in roots:
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


def main():
    work = list(jobs(sys.argv[1:]))
    with ProcessPoolExecutor() as pool:
        failed = [p for p in pool.map(compile_one, work, chunksize=64) if p]
    for path in failed:
        print(path)


if __name__ == "__main__":
    main()
