"""Issue 12 end to end: signed builds, the SBOM of the reference stack, and deploy.sh under a trust policy.

- ``shipenv build --sign-key`` writes ARCHIVE.sig that ``ssh-keygen -Y verify``
  accepts and ARCHIVE.cdx.json; a second build gives the same bytes.
- The reference service stack's SBOM (the bundle tests/integration/test_packages
  builds) validates strictly against CycloneDX 1.6 and names the Debian
  packages of the libraries it vendored.
- deploy.sh in the Debian 12 root (with ssh-keygen) refuses what the root's
  policy did not sign, leaving every file of the root as it was; in the
  Debian 11 root (no ssh-keygen) it says so in a sentence.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from shipenv.bundle import sshsig
from shipenv.deploy import releases as deploy
from tests.chroots import OverlayRoot
from tests.helpers import PACKAGES_DIR as PACKAGES
from tests.helpers import STACK, BuildFn, pyenv_python, run_shipenv, snapshot
from tests.helpers import requirements_file as _requirements
from tests.sshkeys import Setup, allowed_line, keygen_verify, make_key

REQUIREMENTS = ["six==1.16.0", "certifi==2024.8.30"]


@pytest.fixture(scope="session")
def ci_key(shared_dir: Path) -> Path:
    """The CI's signing key, made once per run by ssh-keygen (shared by xdist workers)."""
    directory = shared_dir / "ci-key"
    directory.mkdir(exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / "ci.pub").is_file():
            make_key(directory, "ed25519", "ci")
    return directory / "ci"


def _signed_build_args(shared_dir: Path, ci_key: Path, version: str) -> list[str]:
    req_dir = shared_dir / "trust-req"
    req_dir.mkdir(exist_ok=True)
    req = _requirements(req_dir, REQUIREMENTS)
    return ["-r", str(req), "--python", str(pyenv_python("3.12")), "--name", "app", "--version", version,
            "--format", "tar.gz", "--sign-key", str(ci_key)]


@pytest.fixture(scope="module")
def signed_v1(built_bundle: BuildFn, shared_dir: Path, ci_key: Path) -> Path:
    return built_bundle("trust-app-1.0", *_signed_build_args(shared_dir, ci_key, "1.0"))


def test_signed_build_verifies_with_ssh_keygen_and_is_reproducible(signed_v1: Path, shared_dir: Path, ci_key: Path, tmp_path: Path) -> None:
    sig, cdx = signed_v1.with_name(signed_v1.name + ".sig"), signed_v1.with_name(signed_v1.name + ".cdx.json")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(allowed_line(ci_key))
    done = keygen_verify(allowed, sig, signed_v1)
    assert done.returncode == 0, done.stderr
    out = run_shipenv("verify", signed_v1, "--allowed-signers", allowed).stdout
    fingerprint = sshsig.load_signer(ci_key).public_key.fingerprint
    assert out.splitlines()[0] == f"OK: app-1.0.tar.gz.sig is a good signature by ci@example.com ({fingerprint})"
    stranger = make_key(tmp_path, "ecdsa", "stranger")
    other = tmp_path / "other_signers"
    other.write_text(allowed_line(stranger))
    refused = run_shipenv("verify", signed_v1, "--allowed-signers", other, check=False)
    assert refused.returncode == 1 and f"by the key {fingerprint}, which {other} does not list" in refused.stderr

    # The SBOM beside the archive is the one inside it; inspect --sbom prints it.
    assert run_shipenv("inspect", "--sbom", signed_v1).stdout.encode() == cdx.read_bytes()
    sbom = json.loads(cdx.read_text())
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(cdx.read_text()) is None
    assert {c["purl"] for c in sbom["components"] if c["purl"].startswith("pkg:pypi/")} == {
        "pkg:pypi/six@1.16.0", "pkg:pypi/certifi@2024.8.30"}

    # Same inputs, same SOURCE_DATE_EPOCH: the same archive, SBOM and (ed25519) signature.
    again = tmp_path / "again"
    run_shipenv("build", "-o", again, *_signed_build_args(shared_dir, ci_key, "1.0"))
    for suffix in ("", ".cdx.json", ".sig", ".sha256"):
        assert (again / (signed_v1.name + suffix)).read_bytes() == signed_v1.with_name(signed_v1.name + suffix).read_bytes(), suffix


def test_a_build_that_cannot_sign_leaves_nothing(shared_dir: Path, agent: str, tmp_path: Path) -> None:
    """The ssh-agent does not hold the key: one sentence, and no unsigned archive where the signed one would go."""
    key = make_key(tmp_path, "ed25519", "not-in-agent")
    args = _signed_build_args(shared_dir, key.with_name(key.name + ".pub"), "1.0")
    out = tmp_path / "out"
    done = run_shipenv("build", "-o", out, *args, check=False, env={**os.environ, "SSH_AUTH_SOCK": agent})
    assert done.returncode == 1
    assert "error: The ssh-agent refused to sign with SHA256:" in done.stderr and "it does not hold that key" in done.stderr
    assert not out.exists() or [p.name for p in out.iterdir()] == []
    dir_args = [a for a in args if a != "tar.gz"]
    dir_args[dir_args.index("--format") + 1:dir_args.index("--format") + 1] = ["dir"]
    done = run_shipenv("build", "-o", out, *dir_args, check=False)
    assert (done.returncode, done.stderr.splitlines()[0]) == (2, "error: --sign-key signs an archive, and --format dir makes a directory.")


@pytest.fixture(scope="module")
def stack_311(built_bundle: BuildFn, shared_dir: Path) -> Path:
    """The reference service stack on 3.11: the very bundle test_packages.py builds (same key, same arguments)."""
    req_dir = shared_dir / "stack-req-3.11"
    req_dir.mkdir(exist_ok=True)
    req = _requirements(req_dir, [*STACK, str(PACKAGES / "stackapp")])
    return built_bundle("stack-3.11", "-r", req, "--python", pyenv_python("3.11"), "--name", "app", "--version", "2.0.0",
                        "--entry", "serve=stackapp:serve", "--format", "dir")


def _deb_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, check=True).stdout


def test_reference_stack_sbom_is_complete_and_valid(stack_311: Path) -> None:
    text = (stack_311 / ".shipenv" / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    manifest = json.loads((stack_311 / ".shipenv" / "manifest.json").read_text())
    assert sbom["metadata"]["component"]["name"] == "app" and sbom["metadata"]["component"]["version"] == "2.0.0"
    by_file = {p["value"]: c for c in sbom["components"] for p in c.get("properties", []) if p["name"] == "shipenv:file"}
    for rel, package in [("lib/libssl.so.3", "libssl3"), ("lib/libcrypto.so.3", "libssl3"),
                         ("lib/libffi.so.8", "libffi8"), ("lib/libsqlite3.so.0", "libsqlite3-0")]:
        component = by_file[rel]
        version = _deb_version(package)
        assert (component["name"], component["version"]) == (package, version), rel
        assert component["purl"].startswith(f"pkg:deb/debian/{package}@"), component["purl"]
        assert component["hashes"][0]["alg"] == "SHA-256" and len(component["hashes"][0]["content"]) == 64
    libpython = by_file["lib/libpython3.11.so.1.0"]
    assert libpython["version"] == manifest["python"]["version"]
    assert str(pyenv_python("3.11").parent.parent) not in text, "the SBOM names the build host's pyenv"
    assert sorted(manifest["vendored_libraries"]) == sorted(Path(f).name for f in by_file)
    cpython = next(c for c in sbom["components"] if c["bom-ref"] == "cpython")
    assert cpython["version"] == manifest["python"]["version"]

    pypi = {c["purl"]: c for c in sbom["components"] if c.get("purl", "").startswith("pkg:pypi/")}
    for dist in manifest["distributions"]:
        name = dist["name"].lower().replace("_", "-").replace(".", "-")
        component = pypi[f"pkg:pypi/{name}@{dist['version']}"]
        assert component["hashes"][0]["alg"] == "SHA-256", dist
    assert len(pypi) == len(manifest["distributions"])
    edges = {d["ref"]: set(d.get("dependsOn", [])) for d in sbom["dependencies"]}
    django = next(p for p in pypi if p.startswith("pkg:pypi/django@"))
    assert {e.split("@")[0] for e in edges[django]} >= {"pkg:pypi/asgiref", "pkg:pypi/sqlparse"}
    assert any(c.get("licenses") for c in pypi.values())


# -- deploy.sh under a trust policy ---------------------------------------------------------------


def test_deploy_sh_trust_table_in_debian_12(signed_v1: Path, ci_key: Path, tmp_path: Path) -> None:
    setup = Setup(tmp_path / "in")
    (setup.tmp / "real").mkdir()
    for suffix in ("", ".sig"):
        shutil.copy(signed_v1.with_name(signed_v1.name + suffix), setup.tmp / "real")
    setup.allowed.write_text(allowed_line(ci_key, options='namespaces="shipenv"') + allowed_line(setup.key))
    v0 = setup.archive("0.9")  # unsigned, deployed before the root had a policy
    v2 = setup.archive("2.0")
    other = setup.archive("3.0", key=setup.key, where="other")
    unlisted = setup.archive("2.0", key=setup.stranger, where="unlisted")
    git = setup.archive("2.0", key=setup.key, namespace="git", where="git")
    flipped = setup.archive("2.0", key=setup.key, where="flipped")
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped.write_bytes(bytes(data))
    inside = {p: "/in/" + p.relative_to(setup.tmp).as_posix() for p in (v0, v2, other, unlisted, git, flipped)}

    with OverlayRoot("bookworm") as server:
        def sh(*argv: str) -> subprocess.CompletedProcess[str]:
            return server.run(["sh", "/in/deploy.sh", *argv], binds={setup.tmp: "/in"})

        shutil.copy(Path(__file__).resolve().parents[2] / "templates" / "deploy.sh", setup.tmp / "deploy.sh")
        assert sh("deploy", inside[v0], "/srv/app").returncode == 0
        root = server.upper_path("/srv/app")
        run_shipenv("trust", "--root", root, "--allowed-signers", setup.allowed)  # shipenv and deploy.sh take turns on one root

        done = sh("deploy", "/in/real/app-1.0.tar.gz", "/srv/app")
        assert done.returncode == 0, done.stderr
        fingerprint = sshsig.load_signer(ci_key).public_key.fingerprint
        assert f"app-1.0.tar.gz is signed by ci@example.com ({fingerprint}), whom /srv/app trusts" in done.stderr
        assert done.stdout.startswith("Deployed app-1.0 and switched /srv/app/current from app-0.9 to app-1.0")

        shutil.copy(trust_sig(other), trust_sig(v2))
        cases = [
            (v2, "no .sig", "/srv/app accepts only signed archives (/srv/app/allowed_signers), and there is no app-2.0.tar.gz.sig beside it"),
            (unlisted, "unlisted key", "app-2.0.tar.gz.sig is not a signature by a key that /srv/app/allowed_signers lists"),
            (flipped, "flipped byte", "app-2.0.tar.gz.sig does not match the archive's bytes: the archive was changed or the signature is for another one"),
            (git, "wrong namespace", "app-2.0.tar.gz.sig was made for another namespace than 'shipenv'"),
        ]
        before = snapshot(root)
        trust_sig(v2).unlink()
        for archive, what, sentence in cases:
            done = sh("deploy", inside[archive], "/srv/app")
            assert done.returncode == 3, what  # a refused archive, as shipenv deploy exits
            assert done.stderr == f"error: Refused app-2.0.tar.gz: {sentence}; nothing was deployed.\n", what
            assert snapshot(root) == before, what
        shutil.copy(trust_sig(other), trust_sig(v2))  # another archive's signature
        done = sh("deploy", inside[v2], "/srv/app")
        assert (done.returncode, done.stderr) == (3, "error: Refused app-2.0.tar.gz: app-2.0.tar.gz.sig does not match the archive's bytes: "
                                                     "the archive was changed or the signature is for another one; nothing was deployed.\n")
        assert snapshot(root) == before
        assert os.readlink(root / "current") == "releases/app-1.0"

        trust_sig(v2).write_text(sshsig.sign_file(v2, sshsig.load_signer(setup.key)))
        # Bytes swapped in after the signature check (here by --check, which runs just before the switch).
        swap = f"cp {inside[v2]} /tmp/swap && mv /tmp/swap {inside[v2]}"
        done = sh("deploy", inside[v2], "/srv/app", "--check", swap)
        assert done.returncode == 3 and done.stderr.endswith(
            f"error: {inside[v2]} changed while it was being deployed, after its signature was checked; "
            "nothing was deployed and /srv/app/current still points to app-1.0.\n"), done.stderr
        assert snapshot(root) == before
        trust_sig(v2).write_text(sshsig.sign_file(v2, sshsig.load_signer(setup.key)))
        assert sh("deploy", inside[v2], "/srv/app").returncode == 0
        history = deploy.history(root)
        assert [(e.to, e.signer, e.key is not None) for e in history] == [
            ("app-0.9", None, False), ("app-1.0", "ci@example.com", True), ("app-2.0", "ci@example.com", True)]
        listing = server.run(["sh", "/in/deploy.sh", "releases", "/srv/app"], binds={setup.tmp: "/in"}).stdout.splitlines()
        assert listing[0].startswith("* app-2.0") and listing[0].endswith(f"signed by ci@example.com ({setup_fp(setup)})"), listing
        assert listing[1].endswith(f"signed by ci@example.com ({fingerprint})") and "signed" not in listing[2], listing
        # shipenv reads the same signers from what deploy.sh wrote.
        assert [(r.name, r.signer) for r in deploy.releases(root)] == [
            ("app-2.0", "ci@example.com"), ("app-1.0", "ci@example.com"), ("app-0.9", None)]

        # Rollback: to the signed app-1.0, then not to app-0.9, which nobody signed.
        assert sh("rollback", "/srv/app").stdout == "Switched /srv/app/current from app-2.0 to app-1.0.\n"
        before = snapshot(root)
        done = sh("rollback", "/srv/app")
        assert done.returncode == 1
        assert done.stderr == ("error: Cannot roll back to app-0.9: app-0.9 was deployed without a verified signature, and /srv/app now "
                               "accepts only signed releases; /srv/app/current still points to app-1.0.\n")
        assert snapshot(root) == before
        # A policy without the CI key: its release is no longer a rollback target, for deploy.sh as for shipenv.
        only_setup = tmp_path / "only_setup"
        only_setup.write_text(allowed_line(setup.key))
        run_shipenv("trust", "--root", root, "--allowed-signers", only_setup)
        assert sh("rollback", "/srv/app", "--to", "2.0").returncode == 0
        done = sh("rollback", "/srv/app", "--to", "1.0")
        assert done.returncode == 1 and done.stderr.startswith(
            f"error: Cannot roll back to app-1.0: app-1.0 was signed by ci@example.com ({fingerprint}), whom /srv/app/allowed_signers no longer allows")
        refused = run_shipenv("rollback", "--root", root, "--to", "1.0", check=False)
        assert refused.returncode == 1 and "whom" in refused.stderr and "no longer allows" in refused.stderr


def trust_sig(archive: Path) -> Path:
    return archive.with_name(archive.name + ".sig")


def setup_fp(setup: Setup) -> str:
    return sshsig.load_signer(setup.key).public_key.fingerprint


def test_deploy_sh_without_ssh_keygen_says_so(tmp_path: Path) -> None:
    setup = Setup(tmp_path / "in")
    v1 = setup.archive("1.0", key=setup.key)
    shutil.copy(Path(__file__).resolve().parents[2] / "templates" / "deploy.sh", setup.tmp / "deploy.sh")
    with OverlayRoot("bullseye") as server:
        assert server.run(["sh", "-c", "command -v ssh-keygen"]).returncode != 0
        root = server.upper_path("/srv/app")
        run_shipenv("trust", "--root", root, "--allowed-signers", setup.allowed)
        before = snapshot(root)
        done = server.run(["sh", "/in/deploy.sh", "deploy", "/in/dist/app-1.0.tar.gz", "/srv/app"], binds={setup.tmp: "/in"})
        assert done.returncode == 4  # the host cannot do what the root requires
        assert done.stderr == ("error: /srv/app accepts only signed archives (/srv/app/allowed_signers), and this host has no ssh-keygen "
                               "that can check app-1.0.tar.gz.sig (OpenSSH 8.2 or newer); install openssh-client (apt-get install "
                               "openssh-client) or deploy with shipenv deploy.\n")
        assert snapshot(root) == before
        assert v1.is_file()
