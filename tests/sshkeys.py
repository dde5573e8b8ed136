"""OpenSSH keys and signatures for the tests: made and checked by the real ssh-keygen and ssh-agent."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipenv.bundle import sshsig
from shipenv.deploy import trust
from tests.helpers import make_tree, pack

KINDS = {"ed25519": ["-t", "ed25519"], "ecdsa": ["-t", "ecdsa", "-b", "256"], "rsa": ["-t", "rsa", "-b", "2048"]}


def make_key(directory: Path, kind: str, name: str | None = None) -> Path:
    """A new OpenSSH key pair made by ssh-keygen (no passphrase); returns the private key's path."""
    path = directory / (name or f"id_{kind}")
    subprocess.run(["ssh-keygen", "-q", *KINDS[kind], "-N", "", "-C", f"{kind}@test", "-f", str(path)], check=True)
    return path


def allowed_line(key: Path, principal: str = "ci@example.com", options: str = "") -> str:
    keytype, b64 = key.with_name(key.name + ".pub").read_text().split()[:2]
    return " ".join(p for p in (principal, options, keytype, b64) if p) + "\n"


def keygen_verify(allowed: Path, sig: Path, message: Path, principal: str = "ci@example.com", namespace: str = "shipenv") -> subprocess.CompletedProcess[str]:
    with message.open("rb") as stdin:
        return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", principal, "-n", namespace, "-s", str(sig)],
                              stdin=stdin, capture_output=True, text=True, check=False)


def keygen_sign(key: Path, message: Path, namespace: str = "shipenv") -> Path:
    subprocess.run(["ssh-keygen", "-Y", "sign", "-n", namespace, "-f", str(key), str(message)], check=True, capture_output=True)
    return message.with_name(message.name + ".sig")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[str]:
    """A real ssh-agent on a socket of its own; killed afterwards by its pid."""
    sock = tmp_path / "agent.sock"
    out = subprocess.run(["ssh-agent", "-a", str(sock), "-s"], capture_output=True, text=True, check=True).stdout
    pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        yield str(sock)
    finally:
        os.kill(pid, signal.SIGTERM)


class Setup:
    """Keys, an allowed_signers file, and signed archives of app 1.0 to 3.0."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.key = make_key(tmp, "ed25519", "ci")
        self.stranger = make_key(tmp, "ecdsa", "stranger")
        self.allowed = tmp / "allowed_signers"
        self.allowed.write_text("# the CI's key\n" + allowed_line(self.key, options='namespaces="shipenv"'))
        self.root = tmp / "srv" / "app"

    def archive(self, version: str, *, key: Path | None = None, namespace: str = "shipenv", where: str = "dist") -> Path:
        path = pack(make_tree(self.tmp / f"tree-{version}-{where}", version), self.tmp / where)
        if key is not None:
            if namespace == "shipenv":
                trust.signature_path(path).write_text(sshsig.sign_file(path, sshsig.load_signer(key)))
            else:
                keygen_sign(key, path, namespace=namespace)
        return path
