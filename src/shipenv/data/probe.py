# Run by the *base* interpreter (any CPython >= 3.8), never imported by shipenv:
# it prints what the interpreter knows about itself as JSON on stdout.
import json
import os
import platform
import sys
import sysconfig


def main():  # type: () -> None
    cv = sysconfig.get_config_var
    dynload = None
    for entry in sys.path:
        if os.path.basename(entry) == "lib-dynload" and os.path.isdir(entry):
            dynload = entry
            break
    if dynload is None and cv("DESTSHARED") and os.path.isdir(cv("DESTSHARED")):
        dynload = cv("DESTSHARED")
    base_exe = getattr(sys, "_base_executable", None) or sys.executable
    info = {
        "implementation": sys.implementation.name,
        "version": list(sys.version_info[:3]),
        "executable": sys.executable,
        "base_executable": base_exe,
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
        "stdlib": sysconfig.get_paths()["stdlib"],
        "dynload": dynload,
        "libdir": cv("LIBDIR"),
        "ldlibrary": cv("LDLIBRARY"),
        "shared": bool(cv("Py_ENABLE_SHARED")),
        "soabi": cv("SOABI") or "",
        "ext_suffix": cv("EXT_SUFFIX") or "",
        "abiflags": getattr(sys, "abiflags", ""),
        "multiarch": cv("MULTIARCH"),
        "machine": platform.machine(),
        "paths": sysconfig.get_paths(),
        "sys_path": sys.path,
    }
    sys.stdout.write(json.dumps(info))


main()
