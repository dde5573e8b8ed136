"""SSHSIG signatures and allowed_signers files against the real OpenSSH ssh-keygen.

Keys are made with ``ssh-keygen -t ed25519`` and ``-t ecdsa`` (and RSA); every
signature shipenv writes must pass ``ssh-keygen -Y verify``, and every one
``ssh-keygen -Y sign`` writes must pass shipenv, in both directions, with the
key file and with a real ssh-agent.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from shipenv.bundle import signers, sshsig
from shipenv.errors import SignatureError
from tests.sshkeys import KINDS, allowed_line, keygen_sign, keygen_verify, make_key


@pytest.fixture
def message(tmp_path: Path) -> Path:
    path = tmp_path / "app-1.0.tar.gz"
    path.write_bytes(os.urandom(3000) + b"the archive's bytes")
    return path


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_shipenv_signatures_verify_with_ssh_keygen(kind: str, tmp_path: Path, message: Path) -> None:
    key = make_key(tmp_path, kind)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(allowed_line(key))
    sig = tmp_path / "ours.sig"
    sig.write_text(sshsig.sign_file(message, sshsig.load_signer(key)))
    done = keygen_verify(allowed, sig, message)
    assert done.returncode == 0, done.stderr
    fingerprint = sshsig.load_signer(key).public_key.fingerprint
    assert done.stdout.strip().endswith(f"key {fingerprint}")
    assert 'Good "shipenv" signature for ci@example.com' in done.stdout
    # ssh-keygen refuses it for another namespace, and for other bytes.
    assert keygen_verify(allowed, sig, message, namespace="git").returncode != 0
    other = tmp_path / "other"
    other.write_bytes(message.read_bytes()[:-1] + b"!")
    assert keygen_verify(allowed, sig, other).returncode != 0


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ssh_keygen_signatures_verify_with_shipenv(kind: str, tmp_path: Path, message: Path) -> None:
    key = make_key(tmp_path, kind)
    allowed = signers.parse(allowed_line(key))
    sig = sshsig.parse(keygen_sign(key, message).read_text())
    signed_by = sshsig.verify_file(message, sig)
    assert signed_by.fingerprint == sshsig.load_signer(key).public_key.fingerprint
    assert signers.check(allowed, signed_by).principals == "ci@example.com"
    line, found = signers.verify_archive(message, allowed)
    assert (line.principals, found) == ("ci@example.com", signed_by)

    flipped = tmp_path / "flipped"
    data = bytearray(message.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="does not match the archive's bytes"):
        sshsig.verify_file(flipped, sig)


def test_wrong_namespace_and_unlisted_key_are_refused(tmp_path: Path, message: Path) -> None:
    key, other = make_key(tmp_path, "ed25519"), make_key(tmp_path, "ed25519", "other")
    sig = sshsig.parse(keygen_sign(key, message, namespace="git").read_text())
    with pytest.raises(SignatureError, match="made for the namespace 'git', not 'shipenv'"):
        sshsig.verify_file(message, sig)
    good = sshsig.verify_file(message, sshsig.parse(sshsig.sign_file(message, sshsig.load_signer(key))))
    with pytest.raises(SignatureError, match=re.escape(f"by the key {good.fingerprint}, which the allowed signers does not list")):
        signers.check(signers.parse(allowed_line(other)), good)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_signing_through_the_ssh_agent(kind: str, agent: str, tmp_path: Path, message: Path) -> None:
    key = make_key(tmp_path, kind)
    pub = key.with_name(key.name + ".pub")
    with pytest.raises(SignatureError, match="it does not hold that key"):
        sshsig.sign_file(message, sshsig.load_signer(pub, agent_socket=agent))
    subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": agent}, check=True, capture_output=True)
    signer = sshsig.load_signer(pub, agent_socket=agent)
    assert signer.origin.startswith("ssh-agent")
    sig = tmp_path / "agent.sig"
    sig.write_text(sshsig.sign_file(message, signer))
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(allowed_line(key))
    assert keygen_verify(allowed, sig, message).returncode == 0


def test_key_errors_are_sentences(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(locked)], check=True)
    with pytest.raises(SignatureError, match="protected by a passphrase") as info:
        sshsig.load_signer(locked)
    assert info.value.hint is not None and "ssh-add" in info.value.hint
    with pytest.raises(SignatureError, match="no ssh-agent is running"):
        sshsig.load_signer(locked.with_name("locked.pub"), agent_socket="")
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    with pytest.raises(SignatureError, match="neither an OpenSSH private key nor a public key"):
        sshsig.load_signer(junk)
    with pytest.raises(SignatureError, match="Cannot read the signing key"):
        sshsig.load_signer(tmp_path / "missing")
    with pytest.raises(SignatureError, match="not an SSH signature"):
        sshsig.parse("hello")
    with pytest.raises(SignatureError, match="damaged SSH signature"):
        sshsig.parse(f"{sshsig.BEGIN}\nU1NIU0lHAAAAAQ==\n{sshsig.END}\n")


def test_allowed_signers_options(tmp_path: Path, message: Path) -> None:
    key = make_key(tmp_path, "ecdsa")
    public = sshsig.load_signer(key).public_key
    now = time.time()
    only_git = signers.parse(allowed_line(key, options='namespaces="git,*.example"'))
    with pytest.raises(SignatureError, match="not for the namespace 'shipenv'"):
        signers.check(only_git, public)
    assert signers.check(signers.parse(allowed_line(key, options='namespaces="git,ship*"')), public).line == 1
    assert not signers.parse(allowed_line(key, options='namespaces="*,!shipenv"'))[0].allows_namespace("shipenv")
    expired = signers.parse("# ops\n\n" + allowed_line(key, "ops,release", 'valid-after="20200101",valid-before="20210101Z"'))
    assert (expired[0].principals, expired[0].line) == ("ops,release", 3)
    with pytest.raises(SignatureError, match="outside its valid-after/valid-before dates"):
        signers.check(expired, public, now=now)
    assert signers.check(expired, public, now=signers.parse_time("20200601Z")).principals == "ops,release"
    assert signers.parse_time("202001011230Z") == signers.parse_time("20200101123000Z") == 1577881800.0

    # ssh-keygen reads the same file the same way.
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(allowed_line(key, options='namespaces="git"'))
    sig = tmp_path / "m.sig"
    sig.write_text(sshsig.sign_file(message, sshsig.load_signer(key)))
    assert keygen_verify(allowed, sig, message).returncode != 0


@pytest.mark.parametrize(("line", "error"), [
    ("ci@example.com", "needs principals, a key type and a key"),
    ("ci@example.com cert-authority ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGw=", "cert-authority"),
    ("ci@example.com frobnicate ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGw=", "unknown option frobnicate"),
    ('ci@example.com valid-after="yesterday" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGw=', "not a time"),
    ("ci@example.com ssh-ed25519 not-base64!", "not valid base64"),
    ("ci@example.com sk-ssh-ed25519@openssh.com AAAA", "not supported"),
    ('"ci example" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGw=', "does not accept"),
])
def test_unreadable_lines_name_their_line(line: str, error: str) -> None:
    with pytest.raises(SignatureError, match="Line 2 of allowed_signers cannot be read") as info:
        signers.parse("# header\n" + line + "\n")
    assert error in info.value.message


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(SignatureError, match="lists no keys"):
        signers.parse("# nobody\n")
