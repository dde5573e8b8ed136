"""``--format oci`` / ``oci-archive`` (issue 15), read, unpacked, pushed and run by the tools users have.

The base is made here: the glibc-only root (what a distroless base is) as a
one-layer OCI image, made with umoci, with an ENV and a label of its own to
see that they are merged. The image of examples/webapp is then inspected with
skopeo, unpacked with umoci and its entry point run in a chroot of the
unpacked rootfs as a runtime would (serving one HTTP request), pushed to a
real ``docker-registry`` on 127.0.0.1 and pulled back, loaded and run by
podman, and rebuilt to show which layers change.

podman needs two things on this machine (Debian 12 in a VM with a hybrid
cgroup v1/v2 hierarchy): crun refuses hybrid mode even with
``--cgroups=disabled``, so podman runs in a private mount namespace with the
cgroup2 mount taken out (the host keeps it), and crun may not raise rlimits
here, so the test passes ``--ulimit`` values below the hard limits.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chroots import OverlayRoot, root_path
from tests.containers import free_port, get, start_in_root
from tests.helpers import REPO, BuildFn, run_shipenv

PROJECT = REPO / "examples" / "webapp"
ENTRY = ["/app/bin/app"]  # the static native launcher: no shell, no loader needed
EPOCH = 1577836800


def run(*argv: str | os.PathLike[str], timeout: float = 300) -> str:
    done = subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True, check=False, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def inspect(ref: str, *flags: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run("skopeo", "inspect", *flags, ref))
    return data


def index_digest(layout: Path) -> str:
    manifests = json.loads((layout / "index.json").read_text())["manifests"]
    assert len(manifests) == 1, manifests
    return str(manifests[0]["digest"])


def layer_digests(layout: Path) -> list[str]:
    digest = index_digest(layout).split(":", 1)[1]
    return [d["digest"] for d in json.loads((layout / "blobs" / "sha256" / digest).read_bytes())["layers"]]


@pytest.fixture(scope="module")
def base_image(shared_dir: Path) -> Path:
    """The glibc-only root as a one-layer OCI image, with an ENV and a label of its own.

    Made once per run for every xdist worker, as the images built on it are
    (``built_bundle``): umoci stamps its config with the time, so a base made
    by each worker would have a digest of its own, and a worker's tests would
    compare the image another worker built with a base it never saw.
    """
    work = shared_dir / "oci-base"
    layout = work / "glibc-base"
    work.parent.mkdir(parents=True, exist_ok=True)
    with (shared_dir / "oci-base.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not (work / ".done").is_file():
            if work.exists():
                shutil.rmtree(work)
            work.mkdir()
            _make_base(work, layout)
            (work / ".done").write_text("")
    return layout


def _make_base(work: Path, layout: Path) -> None:
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:latest")
    unpacked = work / "unpacked"
    run("umoci", "unpack", "--image", f"{layout}:latest", unpacked)
    run("cp", "-a", f"{root_path('glibc')}/.", unpacked / "rootfs")
    run("umoci", "repack", "--image", f"{layout}:latest", unpacked)
    run("umoci", "config", "--image", f"{layout}:latest", "--config.env", "BASE_ENV=kept", "--config.label", "org.example.base=glibc")
    run("umoci", "gc", "--layout", layout)


@pytest.fixture(scope="module")
def image(base_image: Path, built_bundle: BuildFn) -> Path:
    return built_bundle("oci-webapp", "--format", "oci", "--base", f"oci:{base_image}:latest", PROJECT)


@pytest.fixture(scope="module")
def image_archive(base_image: Path, built_bundle: BuildFn) -> Path:
    return built_bundle("oci-webapp-archive", "--format", "oci-archive", "--base", f"oci:{base_image}:latest", PROJECT)


def test_skopeo_reads_arch_layers_entry_point_and_labels(image: Path, base_image: Path) -> None:
    assert image.name == "webapp-0.1.0.oci"
    info = inspect(f"oci:{image}")
    base = inspect(f"oci:{base_image}:latest")
    assert (info["Architecture"], info["Os"]) == ("amd64", "linux")
    assert info["Layers"][: len(base["Layers"])] == base["Layers"], "the base's layers are reused by digest"
    assert len(info["Layers"]) == len(base["Layers"]) + 3  # interpreter, packages, app
    labels = info["Labels"]
    assert labels["org.opencontainers.image.title"] == "webapp"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.created"] == "2020-01-01T00:00:00Z"
    assert labels["org.example.base"] == "glibc", "the base's labels are kept"
    assert info["Digest"] == index_digest(image)

    config = inspect(f"oci:{image}", "--config")["config"]
    assert config["Entrypoint"] == ENTRY
    assert "Cmd" not in config
    assert config["User"] == "65532:65532"
    assert config["WorkingDir"] == "/app"
    assert config["Env"][0].startswith("PATH=/app/bin:/usr/local/sbin:")
    assert "BASE_ENV=kept" in config["Env"]

    manifest = json.loads((image / "blobs" / "sha256" / info["Digest"].split(":")[1]).read_text())
    assert manifest["annotations"]["org.opencontainers.image.base.digest"] == base["Digest"]


def test_layer_tars_carry_nothing_of_the_build_host(image: Path, base_image: Path) -> None:
    ours = layer_digests(image)[len(layer_digests(base_image)) :]
    names: list[list[str]] = []
    for digest in ours:
        with tarfile.open(image / "blobs" / "sha256" / digest.split(":")[1], "r:gz") as tar:
            members = tar.getmembers()
        assert all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in members)
        assert all(m.mtime <= EPOCH for m in members)
        assert all(m.name == "app" or m.name.startswith("app/") for m in members)
        names.append([m.name for m in members])
    interpreter, packages, app = names
    assert "app/bin/python3.12" in interpreter and "app/lib/libpython3.12.so.1.0" in interpreter
    assert any(n.startswith("app/lib/python3.12/site-packages/gunicorn/") for n in packages)
    assert "app/lib/python3.12/site-packages/webapp/serve.py" in app and "app/.shipenv/manifest.json" in app
    assert "app/bin/app" in app
    assert not any("/webapp" in n for n in interpreter + packages)


def test_umoci_unpack_and_the_entry_point_serves_a_request(image: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{image}:webapp:0.1.0", bundle)
    process = json.loads((bundle / "config.json").read_text())["process"]
    assert process["args"] == ENTRY
    assert (process["user"]["uid"], process["user"]["gid"]) == (65532, 65532)
    assert process["cwd"] == "/app"
    port = free_port()
    env = dict(e.split("=", 1) for e in process["env"])
    env["PORT"] = str(port)
    with OverlayRoot("glibc", lower=bundle / "rootfs") as root, start_in_root(root, process["args"], binds={}, env=env, readonly=True) as container:
        status, body = get(f"http://127.0.0.1:{port}/", container)
        assert (status, body["app"], body["prefix"]) == (200, "webapp", "/app"), body
        os.kill(container.pid1(), signal.SIGTERM)
        assert container.proc.wait(timeout=60) == 0, container.output()


def test_a_scratch_image_of_a_bundled_libc_build_serves_a_request(built_bundle: BuildFn, tmp_path: Path) -> None:
    """No base at all: the image is the bundle, its loader and glibc, and its native launchers (FROM scratch)."""
    image = built_bundle("oci-webapp-scratch", "--format", "oci", "--libc", "bundled", PROJECT)
    config = inspect(f"oci:{image}:webapp:0.1.0", "--config")
    assert config["config"]["Entrypoint"] == ENTRY
    assert len(config["rootfs"]["diff_ids"]) == 3, "no base layers: only the interpreter, packages and app layers"
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{image}:webapp:0.1.0", bundle)
    rootfs = bundle / "rootfs"
    assert sorted(p.name for p in rootfs.iterdir()) == ["app"], "nothing but the bundle in the image"
    process = json.loads((bundle / "config.json").read_text())["process"]
    port = free_port()
    env = dict(e.split("=", 1) for e in process["env"])
    env["PORT"] = str(port)
    with OverlayRoot("glibc", lower=rootfs) as root, start_in_root(root, process["args"], binds={}, env=env, readonly=True) as container:
        status, body = get(f"http://127.0.0.1:{port}/", container)
        assert (status, body["app"], body["prefix"]) == (200, "webapp", "/app"), body
        os.kill(container.pid1(), signal.SIGTERM)
        assert container.proc.wait(timeout=60) == 0, container.output()


def test_the_archive_form_holds_the_same_image(image: Path, image_archive: Path) -> None:
    assert image_archive.name == "webapp-0.1.0.oci.tar"
    info = inspect(f"oci-archive:{image_archive}")
    assert info["Digest"] == index_digest(image)
    with tarfile.open(image_archive) as tar:
        assert tar.getnames()[:2] == ["oci-layout", "index.json"]
    sha = (image_archive.parent / f"{image_archive.name}.sha256").read_text().split()[0]
    assert run("sha256sum", image_archive).split()[0] == sha


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1, its own config and storage, stopped at the end."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (tmp_path / "registry.log").open("w")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None, (tmp_path / "registry.log").read_text()
            assert time.monotonic() < deadline, "the registry did not start within 60 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_push_to_a_registry_and_pull_back_gives_the_same_digest(image: Path, registry: str, tmp_path: Path) -> None:
    remote = f"docker://{registry}/webapp:0.1.0"
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{image}:webapp:0.1.0", remote)
    assert inspect(remote, "--tls-verify=false")["Digest"] == index_digest(image)
    pulled = tmp_path / "pulled"
    run("skopeo", "copy", "--src-tls-verify=false", remote, f"oci:{pulled}:webapp:0.1.0")
    assert index_digest(pulled) == index_digest(image)
    assert layer_digests(pulled) == layer_digests(image)


def test_podman_loads_and_runs_the_image(image_archive: Path, tmp_path: Path) -> None:
    store = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))  # podman wants a runroot under 50 characters
    podman = [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", "mountpoint -q /sys/fs/cgroup/unified && umount /sys/fs/cgroup/unified; exec \"$@\"", "sh",
        "podman", "--root", str(store / "root"), "--runroot", str(store / "run"), "--tmpdir", str(store / "tmp"),
        "--storage-driver", "vfs", "--events-backend", "none", "--log-level", "error",
    ]  # fmt: skip
    loaded = run(*podman, "load", "-i", image_archive)
    assert "localhost/webapp:0.1.0" in loaded, loaded
    port = free_port()
    argv = [
        *podman, "run", "--rm", "--cgroups=disabled", "--network", "host", "--ulimit", "nofile=1024:1024",
        "--ulimit", "nproc=4096:4096", "-e", f"PORT={port}", "webapp:0.1.0",
    ]  # fmt: skip
    log = tmp_path / "podman.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    body = json.loads(response.read())
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, f"podman exited with {proc.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        assert (body["app"], body["prefix"]) == ("webapp", "/app"), body
        proc.send_signal(signal.SIGTERM)  # podman run proxies it to the container, as `podman stop` would
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(store, ignore_errors=True)
    assert "Shutting down: Master" in log.read_text()


def test_layers_change_only_where_the_inputs_did(base_image: Path, tmp_path: Path) -> None:
    project = tmp_path / "webapp"
    shutil.copytree(PROJECT, project)
    base = ["--format", "oci", "--base", f"oci:{base_image}:latest"]

    def build(name: str) -> Path:
        run_shipenv("build", project, *base, "-o", tmp_path / name)
        return tmp_path / name / "webapp-0.1.0.oci"

    first, again = build("first"), build("again")
    assert index_digest(first) == index_digest(again), "same inputs, same manifest digest"
    n_base = len(layer_digests(base_image))
    before = layer_digests(first)

    serve = project / "src" / "webapp" / "serve.py"
    serve.write_text(serve.read_text() + "\n# a change to the app alone\n")
    changed = layer_digests(build("app-changed"))
    assert changed[:-1] == before[:-1], "only the app layer may change"
    assert changed[-1] != before[-1]

    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('dependencies = ["gunicorn>=23"]', 'dependencies = ["gunicorn>=23", "six"]'))
    more = layer_digests(build("requirement-added"))
    assert more[: n_base + 1] == before[: n_base + 1], "a new requirement leaves the base and interpreter layers alone"
    assert more[n_base + 1] != before[n_base + 1]


@pytest.mark.parametrize("case", ["scratch", "other-arch", "not-oci", "missing-cmd", "output-exists"])
def test_errors_are_one_sentence(case: str, base_image: Path, tmp_path: Path) -> None:
    args: list[str | os.PathLike[str]] = ["build", PROJECT, "--format", "oci", "-o", tmp_path / "out"]
    expect = {
        "scratch": "without a base (scratch) has no C library",
        "other-arch": "is for linux/arm64, but the bundle is for linux/amd64",
        "not-oci": "is not an OCI image",
        "missing-cmd": "--cmd runs /app/bin/nothing-here, which is not in the bundle",
        "output-exists": "exists and is not empty",
    }[case]
    if case == "other-arch":
        other = tmp_path / "arm64-base"
        shutil.copytree(base_image, other)
        run("umoci", "config", "--image", f"{other}:latest", "--architecture", "arm64")
        args += ["--base", f"oci:{other}:latest"]
    elif case == "not-oci":
        (tmp_path / "plain").mkdir()
        args += ["--base", f"oci:{tmp_path / 'plain'}"]
    elif case != "scratch":
        args += ["--base", f"oci:{base_image}:latest"]
    if case == "missing-cmd":
        args += ["--cmd", "/app/bin/nothing-here --flag"]
    if case == "output-exists":
        (tmp_path / "out" / "webapp-0.1.0.oci").mkdir(parents=True)
        (tmp_path / "out" / "webapp-0.1.0.oci" / "index.json").write_text("{}")
    done = run_shipenv(*args, check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], done.stderr
    if case == "output-exists":
        assert (tmp_path / "out" / "webapp-0.1.0.oci" / "index.json").read_text() == "{}", "the existing output is untouched"
    else:
        assert not (tmp_path / "out" / "webapp-0.1.0.oci").exists()
