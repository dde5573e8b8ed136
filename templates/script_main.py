# shipenv: the "${name}" command (${target}).
import sys

from ${module} import ${import_name}

if __name__ == "__main__":
    if sys.argv[0].endswith("-script.py"):
        sys.argv[0] = sys.argv[0][:-10]
    sys.exit(${call})
