"""A root's trust policy with ``shipenv deploy``: what is refused, and that a refusal changes nothing.

Small synthetic bundles (tests/helpers.make_tree) signed with keys
made by ssh-keygen; deploy.sh gets the same table in the bookworm root
(tests/integration/test_trust.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shipenv.bundle import sshsig
from shipenv.deploy import releases as deploy
from shipenv.deploy import trust
from shipenv.errors import DeployError, SignatureError
from tests.helpers import HOST, snapshot
from tests.sshkeys import Setup, allowed_line


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def refused(archive: Path, root: Path, match: str) -> None:
    before = snapshot(root)
    with pytest.raises(SignatureError, match=match) as info:
        deploy.deploy(archive, root, host=HOST)
    assert info.value.message.endswith("nothing was deployed."), info.value.message
    assert info.value.exit_code == 3  # a refused archive, as deploy.sh exits
    assert snapshot(root) == before


def test_trust_table(setup: Setup) -> None:
    v1 = setup.archive("1.0", key=setup.key)
    trust.set_policy(setup.root, setup.allowed)
    first = deploy.deploy(v1, setup.root, host=HOST)
    assert first.message.startswith("Deployed app-1.0")

    v2 = setup.archive("2.0")
    refused(v2, setup.root, r"accepts only signed archives .*allowed_signers\), and there is no app-2.0.tar.gz.sig beside app-2.0.tar.gz")

    trust.signature_path(v2).write_text(sshsig.sign_file(v2, sshsig.load_signer(setup.stranger)))
    refused(v2, setup.root, "Refused app-2.0.tar.gz: the signature is by the key SHA256:.*, which .*allowed_signers does not list")

    other = setup.archive("3.0", key=setup.key, where="other")  # another archive's signature
    shutil.copy(trust.signature_path(other), trust.signature_path(v2))
    refused(v2, setup.root, "app-2.0.tar.gz.sig does not match the archive's bytes")

    trust.signature_path(v2).write_text(sshsig.sign_file(v2, sshsig.load_signer(setup.key)))
    data = bytearray(v2.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped = setup.tmp / "flipped" / v2.name
    flipped.parent.mkdir()
    flipped.write_bytes(bytes(data))
    shutil.copy(trust.signature_path(v2), trust.signature_path(flipped))
    refused(flipped, setup.root, "does not match the archive's bytes")

    git = setup.archive("2.0", key=setup.key, namespace="git", where="git")
    refused(git, setup.root, "was made for the namespace 'git', not 'shipenv'")

    done = deploy.deploy(v2, setup.root, host=HOST)
    assert done.message.startswith("Deployed app-2.0 and switched")
    fingerprint = sshsig.load_signer(setup.key).public_key.fingerprint
    history = [json.loads(line) for line in (setup.root / "history.jsonl").read_text().splitlines()]
    assert [h["action"] for h in history] == ["trust", "deploy", "deploy"]
    assert history[0]["keys"] == "1"
    assert [(h.get("signer"), h.get("key")) for h in history[1:]] == [("ci@example.com", fingerprint)] * 2
    assert [(r.name, r.signer, r.key) for r in deploy.releases(setup.root)] == [
        ("app-2.0", "ci@example.com", fingerprint), ("app-1.0", "ci@example.com", fingerprint)]


def test_rollback_only_to_releases_signed_under_the_current_policy(setup: Setup) -> None:
    deploy.deploy(setup.archive("1.0"), setup.root, host=HOST)  # before the root had a policy
    trust.set_policy(setup.root, setup.allowed)
    deploy.deploy(setup.archive("2.0", key=setup.key), setup.root, host=HOST)
    deploy.deploy(setup.archive("3.0", key=setup.key), setup.root, host=HOST)

    assert deploy.rollback(setup.root).message.endswith("from app-3.0 to app-2.0.")
    before = snapshot(setup.root)
    with pytest.raises(DeployError, match="Cannot roll back to app-1.0: app-1.0 was deployed without a verified signature, "
                       r"and .* now accepts only signed releases; .*current still points to app-2.0\."):
        deploy.rollback(setup.root)
    with pytest.raises(DeployError, match="app-1.0 was deployed without a verified signature"):
        deploy.rollback(setup.root, to="1.0")
    assert snapshot(setup.root) == before

    # A new policy without the CI key: its releases can no longer be switched to.
    stranger_only = setup.tmp / "new_allowed"
    stranger_only.write_text(allowed_line(setup.stranger))
    trust.set_policy(setup.root, stranger_only)
    with pytest.raises(DeployError, match=r"app-3.0 was signed by ci@example.com \(SHA256:.*\), whom .*allowed_signers no longer allows"):
        deploy.rollback(setup.root, to="3.0")

    # Taking trust away is explicit and recorded; then rollback goes anywhere again.
    assert "unsigned archives can be deployed there again" in trust.remove_policy(setup.root).message
    assert deploy.rollback(setup.root, to="1.0").current == "app-1.0"
    actions = [json.loads(line)["action"] for line in (setup.root / "history.jsonl").read_text().splitlines()]
    assert actions == ["deploy", "trust", "deploy", "deploy", "rollback", "trust", "trust-remove", "rollback-to"]
    with pytest.raises(DeployError, match="has no trust policy to remove"):
        trust.remove_policy(setup.root)


def test_a_policy_is_checked_when_set(setup: Setup) -> None:
    bad = setup.tmp / "bad"
    bad.write_text("ci@example.com cert-authority " + allowed_line(setup.key).split(" ", 1)[1])
    with pytest.raises(SignatureError, match="cert-authority"):
        trust.set_policy(setup.root, bad)
    assert not setup.root.exists()
    trust.set_policy(setup.root, setup.allowed)
    assert (setup.root / "allowed_signers").read_bytes() == setup.allowed.read_bytes()
    assert (setup.root / "allowed_signers").stat().st_mode & 0o777 == 0o644
    # A symlink in its place is not followed.
    (setup.root / "allowed_signers").unlink()
    (setup.root / "allowed_signers").symlink_to(setup.allowed)
    with pytest.raises(DeployError, match=r"allowed_signers is not the plain file shipenv makes \(it is a symlink\)"):
        deploy.deploy(setup.archive("1.0", key=setup.key), setup.root, host=HOST)


def test_expired_key_is_refused(setup: Setup) -> None:
    expired = setup.tmp / "expired"
    expired.write_text(allowed_line(setup.key, options='valid-before="20200101Z"'))
    trust.set_policy(setup.root, expired)
    refused(setup.archive("1.0", key=setup.key), setup.root, "outside its valid-after/valid-before dates")


def test_an_archive_rewritten_after_its_check_is_not_switched_to(setup: Setup) -> None:
    trust.set_policy(setup.root, setup.allowed)
    deploy.deploy(setup.archive("1.0", key=setup.key), setup.root, host=HOST)
    v2 = setup.archive("2.0", key=setup.key)
    # --check runs after the signature check and before the switch: the moment to swap bytes in.
    swap = f"cp {v2} {v2}.new && mv {v2}.new {v2}"
    before = snapshot(setup.root)
    with pytest.raises(SignatureError, match="changed while it was being deployed, after its signature was checked"):
        deploy.deploy(v2, setup.root, host=HOST, check=swap)
    assert snapshot(setup.root) == before
    with pytest.raises(SignatureError, match="changed while it was being deployed"):
        deploy.deploy(v2, setup.root, host=HOST, check=f"cat {v2} > {v2}.copy && cat {v2}.copy > {v2}")  # written in place
    assert snapshot(setup.root) == before
