"""bundle/oci.py and bundle/ocibase.py on small hand-made trees and images (no build, no tools)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from shipenv.bundle import manifest, oci, ocibase
from shipenv.config import parse_command
from shipenv.errors import UsageError
from shipenv.model import ImageOptions

SITE = "lib/python3.12/site-packages"
EPOCH = 1577836800


def make_tree(root: Path) -> Path:
    files = {
        "bin/python3.12": "ELF",
        "bin/python": "launcher",
        "bin/app": "entry launcher",
        "bin/foo": "foo's console script",
        "lib/libpython3.12.so.1.0": "lib",
        "lib/python3.12/os.py": "stdlib",
        "lib/python3.12/__pycache__/os.cpython-312.pyc": "pyc",
        f"{SITE}/foo/__init__.py": "foo",
        f"{SITE}/foo/__pycache__/__init__.cpython-312.pyc": "pyc",
        f"{SITE}/foo-1.0.dist-info/RECORD": "foo/__init__.py,,\nfoo-1.0.dist-info/RECORD,,\n../../../bin/foo,,\n",
        f"{SITE}/my_app/__init__.py": "app",
        f"{SITE}/my_app/__pycache__/__init__.cpython-312.opt-1.pyc": "pyc",
        f"{SITE}/my_app-0.1.dist-info/RECORD": "my_app/__init__.py,,\nmy_app-0.1.dist-info/RECORD,,\n",
        f"{SITE}/_shipenv_runtime.pth": "import _shipenv_runtime",
        ".shipenv/RECORD": "",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "bin" / "python3").symlink_to("python")
    (root / "share" / "empty").mkdir(parents=True)
    meta = {
        "name": "my-app",
        "version": "0.1",
        "python": {"version": "3.12.1", "executable": "bin/python3.12", "site_packages": SITE},
        "platform": {"arch": "x86_64"},
        "distributions": [{"name": "foo", "version": "1.0", "source": "requirements"}, {"name": "My.App", "version": "0.1", "source": "project"}],
    }
    (root / ".shipenv" / "manifest.json").write_text(json.dumps(meta))
    return root


def layer_names(root: Path, image_root: str = "/app") -> dict[str, list[str]]:
    return {plan.name: [e.name for e in plan.entries] for plan in oci.split(root, PurePosixPath(image_root), EPOCH)}


def test_split_puts_each_file_where_its_change_rate_says(tmp_path: Path) -> None:
    layers = layer_names(make_tree(tmp_path / "tree"))
    assert list(layers) == ["interpreter", "packages", "app"]
    interpreter, packages, app = layers["interpreter"], layers["packages"], layers["app"]
    assert {"app/bin/python3.12", "app/lib/libpython3.12.so.1.0", "app/lib/python3.12/__pycache__/os.cpython-312.pyc", "app/share/empty"} <= set(interpreter)
    assert {f"app/{SITE}/foo/__init__.py", f"app/{SITE}/foo/__pycache__/__init__.cpython-312.pyc", "app/bin/foo", f"app/{SITE}/_shipenv_runtime.pth"} <= set(packages)
    assert {f"app/{SITE}/my_app/__init__.py", f"app/{SITE}/my_app/__pycache__/__init__.cpython-312.opt-1.pyc", "app/bin/app", "app/bin/python", "app/bin/python3", "app/.shipenv/manifest.json"} <= set(app)
    # Each file in exactly one layer; directories only where something under them is.
    everything = interpreter + packages + app
    files = [n for n in everything if not (tmp_path / "tree" / n[4:]).is_dir() and n != "app"]
    assert len(files) == len(set(files))
    assert f"app/{SITE}/my_app" not in packages and f"app/{SITE}/foo" not in app
    assert f"app/{SITE}/my_app/__pycache__" in app and f"app/{SITE}/my_app/__pycache__" not in packages
    for names in layers.values():  # parents before children, as tar wants
        assert names[0] == "app"
        for name in names[1:]:
            assert name.rsplit("/", 1)[0] in names[: names.index(name)]


def test_a_deeper_image_root_gets_its_parent_directories(tmp_path: Path) -> None:
    layers = layer_names(make_tree(tmp_path / "tree"), "/opt/srv/app")
    for names in layers.values():
        assert names[:3] == ["opt", "opt/srv", "opt/srv/app"]


def test_layers_are_the_same_bytes_whatever_the_thread_count(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    (tree / "lib" / "big.bin").write_bytes(bytes(range(256)) * 20000)  # several gzip blocks
    plan = oci.split(tree, PurePosixPath("/app"), EPOCH)[0]
    results = []
    for threads in (1, 3):
        blobs = tmp_path / f"blobs-{threads}"
        blobs.mkdir()
        results.append(oci.write_layer(plan, blobs, level=5, threads=threads))
        blob = (blobs / results[-1].blob.digest.split(":")[1]).read_bytes()
        assert results[-1].diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
        assert blob[4:8] == b"\0\0\0\0", "gzip mtime 0"
    assert results[0] == results[1]


def layer_blob(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def make_base(layout: Path, *, arch: str = "amd64", config: dict[str, Any] | None = None, images: int = 1) -> Path:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer = layer_blob({"etc/os-release": b"ID=test\n"})
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    doc = {"architecture": arch, "os": "linux", "config": config or {}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": ocibase.MEDIA_CONFIG, **put(json.dumps(doc).encode())},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", **put(layer)}],
    }
    entry = {"mediaType": ocibase.MEDIA_MANIFEST, **put(json.dumps(manifest).encode())}
    index = {"schemaVersion": 2, "manifests": [dict(entry, annotations={ocibase.REF_NAME: f"tag{i}"}) for i in range(images)]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def test_a_base_layout_and_its_archive_read_the_same(tmp_path: Path) -> None:
    layout = make_base(tmp_path / "base")
    from_dir = ocibase.read_base(f"oci:{layout}", "x86_64")
    archive = tmp_path / "base.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(layout / name, arcname=name)
    from_tar = ocibase.read_base(f"oci-archive:{archive}", "x86_64")
    assert from_dir.layers == from_tar.layers
    assert from_dir.layers[0].media_type == ocibase.MEDIA_LAYER_GZIP  # Docker's name for the same bytes
    copied = tmp_path / "copied"
    copied.mkdir()
    ocibase.copy_layers(from_tar, copied)
    assert [p.name for p in copied.iterdir()] == [from_tar.layers[0].digest.split(":")[1]]


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        ("missing", "does not exist"),
        ("empty-dir", "is not an OCI image: it has no oci-layout"),
        ("not-tar", "is not an OCI image: it is not a tar file"),
        ("arm64", "is for linux/arm64, but the bundle is for linux/amd64"),
        ("two-images", "holds 2 images"),
        ("unknown-ref", "has no image named 'nope'"),
        ("corrupt-layer", "does not match its digest"),
    ],
)
def test_bad_bases_are_refused_in_one_sentence(setup: str, expect: str, tmp_path: Path) -> None:
    spec = f"oci:{tmp_path / 'base'}"
    if setup == "empty-dir":
        (tmp_path / "base").mkdir()
    elif setup == "not-tar":
        (tmp_path / "base.tar").write_text("hello")
        spec = f"oci-archive:{tmp_path / 'base.tar'}"
    elif setup == "arm64":
        make_base(tmp_path / "base", arch="arm64")
    elif setup == "two-images":
        make_base(tmp_path / "base", images=2)
    elif setup == "unknown-ref":
        make_base(tmp_path / "base")
        spec += ":nope"
    elif setup == "corrupt-layer":
        make_base(tmp_path / "base")
        blob = max((tmp_path / "base" / "blobs" / "sha256").iterdir(), key=lambda p: p.read_bytes()[:2] == b"\x1f\x8b")
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    with pytest.raises(UsageError) as err:
        base = ocibase.read_base(spec, "x86_64")
        ocibase.copy_layers(base, tmp_path)
    assert expect in err.value.message
    assert err.value.message.count(". ") == 0 and err.value.hint


def test_no_base_needs_a_bundled_libc() -> None:
    for base in (None, "scratch"):
        with pytest.raises(UsageError, match=r"scratch") as err:
            oci.prepare(ImageOptions(base=base), "x86_64")
        assert "--libc bundled" in (err.value.hint or "")
        assert oci.prepare(ImageOptions(base=base), "x86_64", libc="bundled") is oci.SCRATCH


def test_native_launchers_are_the_entry_point_themselves(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    (tree / "bin" / "web").write_bytes(b"\x7fELF")
    assert oci.entrypoint(tree, ImageOptions(), "bin/python3.12", "web", native=True) == (["/app/bin/web"], None)
    assert oci.entrypoint(tree, ImageOptions(), "bin/python3.12", None, native=True) == (["/app/bin/python"], None)


def config_for(tmp_path: Path, image: ImageOptions, base_config: dict[str, Any], entry: str | None = "app") -> dict[str, Any]:
    tree = make_tree(tmp_path / "tree")
    base = ocibase.read_base(f"oci:{make_base(tmp_path / 'base', config=base_config)}", "x86_64")
    meta = manifest.read(tree)
    command = oci.entrypoint(tree, image, "bin/python3.12", entry)
    config, _ = oci.image_config(meta, image, base, [], command, EPOCH)
    settings: dict[str, Any] = config["config"]
    return settings


def test_config_merges_the_base_and_runs_the_entry_without_a_shell(tmp_path: Path) -> None:
    base = {"Env": ["PATH=/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/cert.pem"], "User": "nonroot", "Labels": {"a": "b"}, "Entrypoint": ["/bin/sh"]}
    settings = config_for(tmp_path, ImageOptions(), base)
    assert settings["Entrypoint"] == ["/app/bin/python3.12", "-E", "-s", "/app/bin/app"]
    assert settings["Env"] == ["PATH=/app/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/cert.pem"]
    assert settings["User"] == "nonroot"  # the base's non-root user
    assert settings["Labels"]["a"] == "b" and settings["Labels"]["org.opencontainers.image.title"] == "my-app"
    assert settings["WorkingDir"] == "/app"


def test_cmd_replaces_the_entry_point_and_root_bases_get_a_non_root_user(tmp_path: Path) -> None:
    settings = config_for(tmp_path, ImageOptions(cmd=("/app/bin/foo", "--x")), {"User": "root", "Entrypoint": ["/bin/sh", "-c"]})
    assert "Entrypoint" not in settings, "the base's entrypoint must not prefix --cmd"
    assert settings["Cmd"] == ["/app/bin/foo", "--x"]
    assert settings["User"] == oci.DEFAULT_USER


def test_a_cmd_or_entry_missing_from_the_bundle_is_refused(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    with pytest.raises(UsageError, match="--cmd runs /app/bin/nope, which is not in the bundle"):
        oci.entrypoint(tree, ImageOptions(cmd=("/app/bin/nope",)), "bin/python3.12", None)
    with pytest.raises(UsageError, match="bin/missing is not in the bundle"):
        oci.entrypoint(tree, ImageOptions(), "bin/python3.12", "missing")
    assert oci.entrypoint(tree, ImageOptions(cmd=("/bin/busybox", "sh")), "bin/python3.12", None) == (None, ["/bin/busybox", "sh"])


def test_cmd_is_a_json_array_or_a_command_line() -> None:
    assert parse_command('["/app/bin/app", "--a b"]') == ("/app/bin/app", "--a b")
    assert parse_command("/app/bin/gunicorn 'app:wsgi()' -w 2") == ("/app/bin/gunicorn", "app:wsgi()", "-w", "2")
    for bad in ("bin/app", "[1]", "", '["/x"'):
        with pytest.raises(UsageError):
            parse_command(bad)


def test_the_container_example_builds_an_image_with_options_shipenv_knows() -> None:
    import shlex

    from shipenv.cli import _parser
    from tests.helpers import REPO

    lines = [shlex.split(line) for line in (REPO / "examples" / "container" / "oci.sh").read_text().splitlines() if line.startswith("shipenv build")]
    assert len(lines) == 1
    args = _parser().parse_args(lines[0][1:])
    assert (args.fmt, args.base) == ("oci", "oci:distroless:latest")


def test_image_options_come_from_flags_and_are_refused_for_other_formats(tmp_path: Path) -> None:
    from shipenv import config
    from shipenv.cli import _parser

    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "p"\nversion = "1"\n[project.urls]\nRepository = "https://example.com/p.git"\n'
        '[tool.shipenv]\nbase = "oci:images/base:latest"\nuser = "1000"\n'
    )
    options = config.build_options(_parser().parse_args(["build", str(project), "--format", "oci", "--cmd", "/app/bin/p -v", "--image-root", "/srv/p"]))
    assert options.image == ImageOptions(
        root=PurePosixPath("/srv/p"), base=f"oci:{project}/images/base:latest", cmd=("/app/bin/p", "-v"), user="1000",
        revision=None, source="https://example.com/p.git",
    )  # fmt: skip
    with pytest.raises(UsageError, match="--user only applies to container images"):
        config.build_options(_parser().parse_args(["build", str(project), "--format", "tar.gz", "--user", "1"]))
    with pytest.raises(UsageError, match="--image-root"):
        config.build_options(_parser().parse_args(["build", str(project), "--format", "oci", "--image-root", "/"]))
