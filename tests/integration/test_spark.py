"""examples/spark: a real PySpark job whose executors run a shipenv bundle.

The bundle (examples/spark, built as ``.tar.gz`` with the driver's Python
X.Y) goes to ``spark-submit --archives PATH#env``; Spark, and nothing else,
unpacks it in the executor's working directory, and ``spark.pyspark.python``
points into it. The UDFs import ``sparkjob``, which only the bundle has, and
report their ``sys.executable``, which must be inside the unpacked archive.

The command is the one examples/spark/README.md gives for one machine
(``local-cluster``: a separate executor JVM with its own working directory,
as on YARN or Kubernetes), so the README cannot drift from what runs; the
README's YARN and Kubernetes lines are checked to ship the bundle the same way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import REPO, BuildFn

EXAMPLE = REPO / "examples" / "spark"
README = EXAMPLE / "README.md"


def spark_submit_lines() -> list[list[str]]:
    """Every ``spark-submit`` command in the README's sh blocks, as argv."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.lstrip().startswith("#"):
                continue
            words = shlex.split(command)
            if words and words[0] == "spark-submit":
                commands.append(words)
    return commands


def options(argv: list[str]) -> dict[str, list[str]]:
    """``--flag value`` pairs (and each ``--conf KEY=VALUE`` as ``KEY``)."""
    found: dict[str, list[str]] = {}
    i = 1
    while i < len(argv) and argv[i].startswith("--"):
        flag, value = argv[i], argv[i + 1]
        if flag == "--conf":
            flag, _, value = value.partition("=")
        found.setdefault(flag, []).append(value)
        i += 2
    return found


@pytest.fixture(scope="module")
def spark_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SPARK_HOME for pip's PySpark that keeps executor work dirs out of the venv.

    A standalone worker (which ``local-cluster`` starts) puts each executor's
    working directory under ``$SPARK_HOME/work``; a directory of symlinks to
    the installed package gives it a throw-away place instead.
    """
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("Spark needs Java 17 or newer: apt-get install openjdk-17-jre-headless")
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        pytest.fail(f"PySpark is not installed in the test venv: {sys.executable} -m pip install pyspark (the test extra has it)")
    package = Path(spec.origin).parent
    home = tmp_path_factory.mktemp("spark-home")
    for entry in package.iterdir():
        if entry.name != "work":
            (home / entry.name).symlink_to(entry)
    return home


@pytest.fixture(scope="module")
def archive(built_bundle: BuildFn) -> Path:
    """examples/spark built as its pyproject says (Python 3.11, .tar.gz)."""
    return built_bundle("spark-sparkjob", EXAMPLE)


#: The Python each build mode gives Spark: the interpreter, or with --libc bundled the loader's launcher.
SPARK_PYTHON = {"host": "python3.11", "bundled": "python-env"}


def bundle_manifest(archive: Path) -> dict[str, object]:
    with tarfile.open(archive) as tar:
        top = archive.name.removesuffix(".tar.gz")
        member = tar.extractfile(f"{top}/.shipenv/manifest.json")
        assert member is not None
        data: dict[str, object] = json.load(member)
        return data


def test_readme_ships_the_bundle_the_same_way_everywhere() -> None:
    lines = spark_submit_lines()
    masters = [options(argv)["--master"][0] for argv in lines]
    assert "local-cluster[1,2,1024]" in masters
    assert "yarn" in masters
    assert any(m.startswith("k8s://") for m in masters), masters
    for argv in lines:
        opts = options(argv)
        assert opts["--archives"] == ["dist/sparkjob-1.0.0.tar.gz#env"], argv
        assert opts["spark.pyspark.python"][0] in [f"./env/sparkjob-1.0.0/bin/{p}" for p in SPARK_PYTHON.values()], argv
        assert argv[-1] == "examples/spark/job.py" or argv[-2] == "examples/spark/job.py", argv
        cluster = opts.get("--deploy-mode") == ["cluster"]
        # In cluster mode the driver runs the bundle too; elsewhere it is local.
        assert ("spark.pyspark.driver.python" in opts) != cluster, argv


def test_bundle_matches_the_driver_and_only_it_has_the_package(archive: Path) -> None:
    assert archive.name == "sparkjob-1.0.0.tar.gz"
    manifest = bundle_manifest(archive)
    python = manifest["python"]
    assert isinstance(python, dict)
    bundle_xy = ".".join(str(python["version"]).split(".")[:2])
    driver_xy = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert bundle_xy == driver_xy, (
        f"PySpark needs the driver's Python ({driver_xy}) and the bundle's ({bundle_xy}) to match: "
        "set python in examples/spark/pyproject.toml to the test venv's X.Y"
    )
    assert importlib.util.find_spec("sparkjob") is None, "the driver must not have sparkjob, or the test proves nothing"
    distributions = manifest["distributions"]
    assert isinstance(distributions, list)
    assert "sparkjob" in {d["name"] for d in distributions}


@pytest.mark.parametrize("libc", ["host", "bundled"])
def test_executors_run_the_archives_python(libc: str, built_bundle: BuildFn, spark_home: Path, tmp_path: Path) -> None:
    archive = built_bundle("spark-sparkjob", EXAMPLE) if libc == "host" else built_bundle("spark-sparkjob-bundled-libc", EXAMPLE, "--libc", "bundled")
    python = f"./env/sparkjob-1.0.0/bin/{SPARK_PYTHON[libc]}"
    (argv,) = [
        a for a in spark_submit_lines()
        if options(a)["--master"] == ["local-cluster[1,2,1024]"] and options(a)["spark.pyspark.python"] == [python]
    ]
    # The README's command, with its relative paths made real and the
    # driver's Python being this test's own (PySpark installed, same X.Y).
    submit = Path(sys.executable).with_name("spark-submit")
    if not submit.is_file():
        pytest.fail(f"{submit} is missing: {sys.executable} -m pip install pyspark (the test extra has it)")
    argv = [str(submit), *argv[1:]]
    argv = [
        a.replace("dist/sparkjob-1.0.0.tar.gz", str(archive))
        .replace("spark.pyspark.driver.python=python3.11", f"spark.pyspark.driver.python={sys.executable}")
        .replace("examples/spark/job.py", str(EXAMPLE / "job.py"))
        for a in argv
    ]
    argv[1:1] = ["--conf", "spark.ui.enabled=false"]  # no web UI port in a test
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK", "SPARK", "PYTHON"))},
        "SPARK_HOME": str(spark_home),
    }
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"spark-submit failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-6000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])

    # The UDF ran sparkjob.normalize from the bundle: accents and case folded.
    assert result["counts"] == {"elan": 3, "spark": 1}

    executors = result["executors"]
    assert len(executors) == 2
    version = str(bundle_manifest(archive)["python"]["version"])  # type: ignore[index]
    for place in executors:
        workdir = Path(place["cwd"])
        unpacked = workdir / "env" / "sparkjob-1.0.0"
        # Spark unpacked the archive into the executor's own working directory...
        assert workdir.is_relative_to(spark_home / "work"), place
        assert place["spark_files"] == "."
        # ... and the UDF ran on the interpreter inside it, with its packages.
        assert place["executable"] == str(unpacked / "bin" / SPARK_PYTHON[libc]), place
        assert place["prefix"] == str(unpacked), place
        assert Path(place["module"]).is_relative_to(unpacked), place
        assert place["python"] == version
