from setuptools import setup

raise SystemExit("badsdist: this package fails to build on purpose")
setup(name="badsdist", version="1.0")
