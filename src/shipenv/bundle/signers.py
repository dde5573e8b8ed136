"""OpenSSH ``allowed_signers`` files: which keys may sign, as whom, for what, until when.

The format is the one ``ssh-keygen -Y verify -f FILE`` reads (ssh-keygen(1),
"ALLOWED SIGNERS"), one key per line::

    # principals     [options]                                   keytype  base64-key  [comment]
    ci@example.com   namespaces="shipenv"                         ssh-ed25519 AAAAC3...
    "ops,release"    valid-after="20260101",valid-before="20270101Z" ecdsa-sha2-nistp256 AAAAE2...

Options: ``namespaces="LIST"`` (patterns; the signature's namespace must match
one), ``valid-after``/``valid-before`` (``YYYYMMDD[HHMM[SS]]``, ``Z`` for UTC,
otherwise local time; checked against the time of the check, as ssh-keygen
does). ``cert-authority`` lines are refused when the file is read: a
certificate-based trust chain is not something shipenv verifies, and a line
that ``shipenv deploy`` ignored but ``ssh-keygen`` honoured would make the two
implementations disagree. Principals are kept as written and recorded in the
history as who signed a release; they must be letters, digits and ``@._+,*?!:=/-``,
so ``deploy.sh`` can write them into JSON unescaped.
"""

from __future__ import annotations

import calendar
import fnmatch
import re
import time
from dataclasses import dataclass
from pathlib import Path

from shipenv.bundle import sshsig
from shipenv.bundle.sshsig import NAMESPACE, PublicKey
from shipenv.errors import SignatureError

_KEYTYPE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+|ssh-dss|[a-z0-9-]+-cert-v01@openssh\.com)$")
_TIME = re.compile(r"^(\d{8})(\d{4}(\d{2})?)?(Z)?$")
_PRINCIPALS = re.compile(r"^[A-Za-z0-9@._+,*?!:=/-]+$")  #: the same set deploy.sh accepts


@dataclass(frozen=True)
class AllowedSigner:
    """One line of an allowed_signers file."""

    principals: str  #: as written, comma-separated patterns
    key: PublicKey
    namespaces: tuple[str, ...] | None  #: None: any namespace
    valid_after: float | None  #: epoch seconds
    valid_before: float | None
    line: int

    def allows_namespace(self, namespace: str) -> bool:
        return self.namespaces is None or match_patterns(namespace, self.namespaces)

    def valid_at(self, when: float) -> bool:
        return (self.valid_after is None or when >= self.valid_after) and (self.valid_before is None or when <= self.valid_before)


def match_patterns(text: str, patterns: tuple[str, ...]) -> bool:
    """OpenSSH pattern lists: ``*`` and ``?`` wildcards, a ``!`` pattern that matches vetoes."""
    matched = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if fnmatch.fnmatchcase(text, pattern[1:]):
                return False
        elif fnmatch.fnmatchcase(text, pattern):
            matched = True
    return matched


def _split(line: str) -> list[str]:
    """Whitespace-separated fields; double quotes keep spaces (and commas) inside one field."""
    fields, current, quoted, any_char = [], [], False, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
            current.append(ch)
            any_char = True
        elif ch in " \t" and not quoted:
            if any_char:
                fields.append("".join(current))
                current, any_char = [], False
        else:
            current.append(ch)
            any_char = True
    if quoted:
        raise ValueError("an unterminated quote")
    if any_char:
        fields.append("".join(current))
    return fields


def _options(text: str) -> dict[str, str | None]:
    """``a,b="x,y",c`` to {"a": None, "b": "x,y", "c": None}."""
    result: dict[str, str | None] = {}
    pos = 0
    while pos < len(text):
        m = re.compile(r'([A-Za-z-]+)(="([^"]*)")?(,|$)').match(text, pos)
        if m is None:
            raise ValueError(f"cannot read the options {text!r}")
        name = m.group(1).lower()
        if name in result:
            raise ValueError(f"the option {name} is given twice")
        result[name] = m.group(3) if m.group(2) else None
        pos = m.end()
    return result


def parse_time(text: str) -> float:
    """``YYYYMMDD[HHMM[SS]][Z]`` to epoch seconds (local time unless ``Z``)."""
    m = _TIME.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a time such as 20260131 or 202601311200Z")
    digits = m.group(1) + (m.group(2) or "0000")
    digits += "" if m.group(3) else "00"
    parsed = time.strptime(digits, "%Y%m%d%H%M%S")
    return float(calendar.timegm(parsed)) if m.group(4) else time.mktime(parsed)


def parse(text: str, *, source: str = "allowed_signers") -> tuple[AllowedSigner, ...]:
    """Every key line of an allowed_signers file; SignatureError naming the first bad line."""
    signers = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            signers.append(_parse_line(line, number))
        except ValueError as exc:
            raise SignatureError(f"Line {number} of {source} cannot be read: {exc}.",
                                 hint="Each line is: principals [options] keytype base64-key, as ssh-keygen(1) describes under ALLOWED SIGNERS.") from None
    if not signers:
        raise SignatureError(f"{source} lists no keys.", hint="Add a line such as: ci@example.com ssh-ed25519 AAAAC3... (the CI key's .pub).")
    return tuple(signers)


def _parse_line(line: str, number: int) -> AllowedSigner:
    fields = _split(line)
    if len(fields) < 3:
        raise ValueError("it needs principals, a key type and a key")
    principals = fields[0].strip('"') if fields[0].startswith('"') and fields[0].endswith('"') else fields[0]
    if not _PRINCIPALS.match(principals):
        raise ValueError(f"the principals {fields[0]!r} hold characters other than letters, digits and @._+,*?!:=/-, which shipenv does not accept")
    options: dict[str, str | None] = {}
    rest = fields[1:]
    if not _KEYTYPE.match(rest[0]):
        options = _options(rest[0])
        rest = rest[1:]
    if len(rest) < 2 or not _KEYTYPE.match(rest[0]):
        raise ValueError("no key type such as ssh-ed25519 where one belongs")
    if "cert-authority" in options:
        raise ValueError("cert-authority (certificate) lines are not supported; list the signing keys themselves")
    unknown = sorted(set(options) - {"namespaces", "valid-after", "valid-before"})
    if unknown:
        raise ValueError(f"unknown option {unknown[0]}")
    for name in ("namespaces", "valid-after", "valid-before"):
        if name in options and options[name] is None:
            raise ValueError(f'{name} needs a quoted value ({name}="...")')
    if rest[0] not in sshsig.KEYTYPES:
        raise ValueError(f"{rest[0]} keys are not supported (use ed25519, ECDSA or RSA keys)")
    try:
        key = PublicKey.parse(rest[0], rest[1])
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"the key is not valid base64 {rest[0]} data ({exc})") from None
    spaces = options.get("namespaces")
    after, before = options.get("valid-after"), options.get("valid-before")
    return AllowedSigner(
        principals, key,
        tuple(p.strip() for p in spaces.split(",") if p.strip()) if spaces is not None else None,
        parse_time(after) if after is not None else None,
        parse_time(before) if before is not None else None,
        number,
    )


def read(path: Path) -> tuple[AllowedSigner, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SignatureError(f"Cannot read the allowed signers file {path} ({getattr(exc, 'strerror', None) or exc}).") from None
    return parse(text, source=str(path))


def check(signers: tuple[AllowedSigner, ...], key: PublicKey, *, namespace: str = NAMESPACE, now: float | None = None,
          source: str = "the allowed signers") -> AllowedSigner:
    """The line that lets ``key`` sign for ``namespace`` now, or SignatureError saying why none does."""
    when = time.time() if now is None else now
    listed = [s for s in signers if s.key.blob == key.blob]
    if not listed:
        raise SignatureError(f"The signature is by the key {key.fingerprint}, which {source} does not list.",
                             hint="Deploy an archive signed by a listed key, or add this key there (shipenv trust --allowed-signers).")
    for_space = [s for s in listed if s.allows_namespace(namespace)]
    if not for_space:
        raise SignatureError(f"{source} lists the key {key.fingerprint} ({listed[0].principals}) but not for the namespace {namespace!r}.",
                             hint=f'Add {namespace} to its namespaces="..." option.')
    for signer in for_space:
        if signer.valid_at(when):
            return signer
    raise SignatureError(f"The key {key.fingerprint} ({for_space[0].principals}) is outside its valid-after/valid-before dates in {source}.",
                         hint="Sign with a key that is valid now, or update its dates.")


def verify_archive(archive: Path, allowed: tuple[AllowedSigner, ...], *, source: str = "the allowed signers") -> tuple[AllowedSigner, PublicKey]:
    """Check ``ARCHIVE.sig`` over ``archive`` against ``allowed``: the line that allows it and the key that signed."""
    sig_path = archive.with_name(archive.name + ".sig")
    try:
        text = sig_path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise SignatureError(f"There is no {sig_path.name} beside {archive.name}.",
                             hint="Publish the .sig that 'shipenv build --sign-key' writes next to the archive.") from None
    except OSError as exc:
        raise SignatureError(f"Cannot read {sig_path} ({exc.strerror}).") from None
    key = sshsig.verify_file(archive, sshsig.parse(text, source=sig_path.name), source=sig_path.name)
    return check(allowed, key, source=source), key
