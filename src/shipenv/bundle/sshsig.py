"""OpenSSH signatures (SSHSIG): what ``ssh-keygen -Y sign`` writes and ``ssh-keygen -Y verify`` checks.

The format is OpenSSH's ``PROTOCOL.sshsig``: an armored blob holding the
signer's public key, a namespace (``shipenv`` for bundles, so a signature made
for git or for a file elsewhere never passes as a deploy), the hash algorithm
and a signature over::

    "SSHSIG" string(namespace) string(reserved) string(hash_algorithm) string(H(message))

Signing takes an OpenSSH private key file, or a public key file whose private
half is held by the ssh-agent at ``$SSH_AUTH_SOCK`` (as ``ssh-keygen -Y sign
-f key.pub`` does). ed25519, ECDSA (P-256, P-384, P-521) and RSA (rsa-sha2-512)
keys work both ways; verifying needs only the ``cryptography`` library, no
ssh-keygen. Whether the key that signed is trusted is :mod:`shipenv.bundle.signers`.

    sig = sign_file(Path("app-2.0.0.tar.zst"), load_signer(Path("ci_key")))
    key = verify_file(Path("app-2.0.0.tar.zst"), parse(sig))   # the key that signed
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from shipenv.errors import SignatureError

NAMESPACE = "shipenv"
#: Key types shipenv signs and verifies (FIDO sk-* keys and certificates are not supported).
KEYTYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
MAGIC = b"SSHSIG"
VERSION = 1
BEGIN, END = "-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----"
HASHES = ("sha256", "sha512")
_CURVES: dict[str, tuple[ec.EllipticCurve, hashes.HashAlgorithm]] = {
    "nistp256": (ec.SECP256R1(), hashes.SHA256()),
    "nistp384": (ec.SECP384R1(), hashes.SHA384()),
    "nistp521": (ec.SECP521R1(), hashes.SHA512()),
}
_CHUNK = 1 << 20
# ssh-agent protocol (draft-miller-ssh-agent): request, answer, and "use rsa-sha2-512".
_AGENTC_SIGN_REQUEST, _AGENT_SIGN_RESPONSE, _AGENT_RSA_SHA2_512 = 13, 14, 4


# -- the SSH wire format -----------------------------------------------------------------


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b""
    return _string(raw)


class _Reader:
    """Reads SSH wire values; any short or malformed field is a ValueError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.uint32())

    def mpint(self) -> int:
        return int.from_bytes(self.string(), "big", signed=True)

    def done(self) -> bool:
        return self.pos == len(self.data)


# -- public keys ---------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """An SSH public key as its wire blob; ``str()`` is the ``authorized_keys`` form."""

    keytype: str
    blob: bytes

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` and ``ssh-keygen -Y verify`` print it."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    def __str__(self) -> str:
        return f"{self.keytype} {base64.b64encode(self.blob).decode()}"

    @classmethod
    def from_blob(cls, blob: bytes) -> PublicKey:
        try:
            keytype = _Reader(blob).string().decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise SignatureError("A public key in the signature is malformed.") from None
        return cls(keytype, blob)

    @classmethod
    def parse(cls, keytype: str, b64: str) -> PublicKey:
        """From the two fields of an ``authorized_keys``/``allowed_signers`` line; ValueError if they disagree."""
        blob = base64.b64decode(b64.encode("ascii"), validate=True)
        if _Reader(blob).string().decode("ascii") != keytype:
            raise ValueError(f"the key data is not a {keytype} key")
        return cls(keytype, blob)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` (an SSH signature blob) by this key is over ``data``."""
        try:
            return self._verify(_Reader(signature), _Reader(self.blob), data)
        except (ValueError, InvalidSignature, UnsupportedAlgorithm):
            return False

    def _verify(self, sig: _Reader, key: _Reader, data: bytes) -> bool:
        algorithm = sig.string().decode("ascii")
        raw = sig.string()
        if not sig.done() or key.string().decode("ascii") != self.keytype:
            return False
        if self.keytype == "ssh-ed25519" and algorithm == "ssh-ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(key.string()).verify(raw, data)
            return True
        if self.keytype.startswith("ecdsa-sha2-") and algorithm == self.keytype:
            curve_name = key.string().decode("ascii")
            if curve_name not in _CURVES or f"ecdsa-sha2-{curve_name}" != self.keytype:
                return False
            curve, digest = _CURVES[curve_name]
            point = ec.EllipticCurvePublicKey.from_encoded_point(curve, key.string())
            rs = _Reader(raw)
            r, s = rs.mpint(), rs.mpint()
            point.verify(encode_dss_signature(r, s), data, ec.ECDSA(digest))
            return True
        if self.keytype == "ssh-rsa" and algorithm in ("rsa-sha2-256", "rsa-sha2-512"):
            e, n = key.mpint(), key.mpint()
            rsa_digest: hashes.HashAlgorithm = hashes.SHA512() if algorithm == "rsa-sha2-512" else hashes.SHA256()
            rsa.RSAPublicNumbers(e, n).public_key().verify(raw, data, padding.PKCS1v15(), rsa_digest)
            return True
        return False  # ssh-rsa with SHA-1 is not allowed in SSHSIG; sk-* keys are not supported


# -- signatures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """A parsed SSHSIG blob: who claims to have signed, for what namespace, how."""

    public_key: PublicKey
    namespace: str
    reserved: bytes
    hash_algorithm: str
    signature: bytes

    def signed_data(self, digest: bytes) -> bytes:
        return _signed_data(self.namespace, self.hash_algorithm, digest, self.reserved)


def _signed_data(namespace: str, hash_algorithm: str, digest: bytes, reserved: bytes = b"") -> bytes:
    return MAGIC + _string(namespace.encode()) + _string(reserved) + _string(hash_algorithm.encode()) + _string(digest)


def parse(text: str, *, source: str = "the signature") -> Signature:
    """An armored SSHSIG (the text of a ``.sig`` file) to its fields; SignatureError if it is not one."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != BEGIN or lines[-1] != END:
        raise SignatureError(f"{source} is not an SSH signature (no '{BEGIN}' armor).",
                             hint="A signature is what 'shipenv build --sign-key' or 'ssh-keygen -Y sign -n shipenv' writes.")
    try:
        blob = base64.b64decode("".join(lines[1:-1]).encode("ascii"), validate=True)
        r = _Reader(blob)
        if r.take(6) != MAGIC:
            raise ValueError("magic")
        version = r.uint32()
        if version != VERSION:
            raise SignatureError(f"{source} is an SSH signature of version {version}; shipenv reads version {VERSION}.")
        key_blob, namespace, reserved = r.string(), r.string().decode("utf-8"), r.string()
        hash_algorithm, signature = r.string().decode("ascii"), r.string()
        if not r.done():
            raise ValueError("trailing data")
    except (ValueError, UnicodeDecodeError):
        raise SignatureError(f"{source} is a damaged SSH signature.", hint="Sign the archive again.") from None
    return Signature(PublicKey.from_blob(key_blob), namespace, reserved, hash_algorithm, signature)


def armor(blob: bytes) -> str:
    text = base64.b64encode(blob).decode()
    return "\n".join([BEGIN, *(text[i : i + 70] for i in range(0, len(text), 70)), END]) + "\n"


def file_digest(path: Path, algorithm: str) -> bytes:
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


def verify_digest(sig: Signature, digest: bytes, *, namespace: str = NAMESPACE, source: str = "the signature") -> PublicKey:
    """The key that made ``sig`` over a message with this digest, or SignatureError saying what is wrong."""
    if sig.namespace != namespace:
        raise SignatureError(f"{source} was made for the namespace {sig.namespace!r}, not {namespace!r}.",
                             hint=f"Sign with 'ssh-keygen -Y sign -n {namespace}' (or shipenv build --sign-key).")
    if sig.public_key.keytype not in KEYTYPES:
        raise SignatureError(f"{source} was made with a {sig.public_key.keytype} key, which shipenv does not verify.",
                             hint="Sign with an ed25519, ECDSA or RSA key.")
    if not sig.public_key.verify(sig.signature, sig.signed_data(digest)):
        raise SignatureError(f"{source} does not match the archive's bytes: the archive was changed or the signature is for another one.",
                             hint="Fetch the archive and its .sig again from where the build published them.")
    return sig.public_key


def verify_file(path: Path, sig: Signature, *, namespace: str = NAMESPACE, source: str | None = None) -> PublicKey:
    """Check ``sig`` over the bytes of ``path``; returns the key that signed."""
    if sig.hash_algorithm not in HASHES:
        raise SignatureError(f"{source or 'The signature'} uses the hash {sig.hash_algorithm!r}; SSHSIG allows sha256 and sha512.")
    return verify_digest(sig, file_digest(path, sig.hash_algorithm), namespace=namespace, source=source or f"{path.name}.sig")


# -- signing ---------------------------------------------------------------------------

SignRaw = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Signer:
    """A public key and a way to sign with its private half (a key in memory, or the agent)."""

    public_key: PublicKey
    sign_raw: SignRaw  #: data -> SSH signature blob (string algorithm, string signature)
    origin: str


def sign_digest(digest: bytes, signer: Signer, *, namespace: str = NAMESPACE, hash_algorithm: str = "sha512") -> str:
    signature = signer.sign_raw(_signed_data(namespace, hash_algorithm, digest))
    blob = (MAGIC + struct.pack(">I", VERSION) + _string(signer.public_key.blob) + _string(namespace.encode())
            + _string(b"") + _string(hash_algorithm.encode()) + _string(signature))
    return armor(blob)


def sign_file(path: Path, signer: Signer, *, namespace: str = NAMESPACE) -> str:
    """The armored SSHSIG over ``path``'s bytes (sha512, as ssh-keygen does)."""
    return sign_digest(file_digest(path, "sha512"), signer, namespace=namespace)


def load_signer(path: Path, *, agent_socket: str | None = None) -> Signer:
    """A signer from an OpenSSH private key file, or from a ``.pub`` whose key the ssh-agent holds."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"Cannot read the signing key {path} ({exc.strerror}).") from None
    first = text.lstrip().split(b"\n", 1)[0].decode("utf-8", "replace")
    if first.startswith("-----BEGIN"):
        return _key_signer(text, path)
    fields = first.split()
    if len(fields) >= 2:
        try:
            public = PublicKey.parse(fields[0], fields[1])
        except (ValueError, UnicodeError):
            pass
        else:
            return _agent_signer(public, path, agent_socket if agent_socket is not None else os.environ.get("SSH_AUTH_SOCK"))
    raise SignatureError(f"{path} is neither an OpenSSH private key nor a public key.",
                         hint="Pass the private key ssh-keygen made (or its .pub, with the key loaded in ssh-agent).")


def _key_signer(text: bytes, path: Path) -> Signer:
    try:
        key = serialization.load_ssh_private_key(text, password=None)
    except TypeError:
        raise SignatureError(f"The signing key {path} is protected by a passphrase.",
                             hint=f"Load it into ssh-agent (ssh-add {path}) and pass its public key: --sign-key {path}.pub") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"Cannot read the signing key {path}: {exc}.", hint="Use a key made by ssh-keygen -t ed25519 (or ecdsa).") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        ed = key

        def sign_raw(data: bytes) -> bytes:
            return _string(b"ssh-ed25519") + _string(ed.sign(data))

    elif isinstance(key, ec.EllipticCurvePrivateKey):
        curve = {v[0].name: k for k, v in _CURVES.items()}.get(key.curve.name)
        if curve is None:
            raise SignatureError(f"The signing key {path} is on the curve {key.curve.name}, which SSH does not use.")
        ecdsa, digest, keytype = key, _CURVES[curve][1], f"ecdsa-sha2-{curve}".encode()

        def sign_raw(data: bytes) -> bytes:
            r, s = decode_dss_signature(ecdsa.sign(data, ec.ECDSA(digest)))
            return _string(keytype) + _string(_mpint(r) + _mpint(s))

    elif isinstance(key, rsa.RSAPrivateKey):
        rsakey = key

        def sign_raw(data: bytes) -> bytes:
            return _string(b"rsa-sha2-512") + _string(rsakey.sign(data, padding.PKCS1v15(), hashes.SHA512()))

    else:
        raise SignatureError(f"The signing key {path} is of a type shipenv cannot sign with.", hint="Use an ed25519, ECDSA or RSA key.")
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode().split()
    return Signer(PublicKey.parse(line[0], line[1]), sign_raw, str(path))


def _agent_signer(public: PublicKey, path: Path, sock_path: str | None) -> Signer:
    if not sock_path:
        raise SignatureError(f"{path} is a public key, and no ssh-agent is running to sign with its private key (SSH_AUTH_SOCK is not set).",
                             hint="Start ssh-agent and ssh-add the key, or pass the private key file.")
    flags = _AGENT_RSA_SHA2_512 if public.keytype == "ssh-rsa" else 0

    def sign_raw(data: bytes) -> bytes:
        request = bytes([_AGENTC_SIGN_REQUEST]) + _string(public.blob) + _string(data) + struct.pack(">I", flags)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(sock_path)
                conn.sendall(_string(request))
                answer = _Reader(_recv(conn, _Reader(_recv(conn, 4)).uint32()))
        except OSError as exc:
            raise SignatureError(f"Cannot reach the ssh-agent at {sock_path} ({exc.strerror or exc}).",
                                 hint="Check SSH_AUTH_SOCK, or pass the private key file.") from None
        if answer.done() or answer.take(1)[0] != _AGENT_SIGN_RESPONSE:
            raise SignatureError(f"The ssh-agent refused to sign with {public.fingerprint} ({path}): it does not hold that key.",
                                 hint=f"ssh-add the private key of {path}, then build again.")
        return answer.string()

    return Signer(public, sign_raw, f"ssh-agent ({path})")


def _recv(conn: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = conn.recv(left)
        if not chunk:
            raise ConnectionError("the agent closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
