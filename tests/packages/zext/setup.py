# A C extension linked against the build host's zlib, with an absolute RPATH
# the way sdists built on a host often end up.
from setuptools import Extension, setup

setup(
    name="zext",
    version="1.0",
    packages=["zext"],
    ext_modules=[
        Extension(
            "zext._zext",
            ["zext/_zext.c"],
            libraries=["z"],
            runtime_library_dirs=["/usr/lib/x86_64-linux-gnu"],
        )
    ],
)
