"""The command line: parse, call the library, print, choose the exit code.

This is the only module that prints. Library errors (:class:`ShipenvError`)
become one red ``error:`` line plus an optional hint and a non-zero exit;
anything else is a bug and keeps its traceback.

It runs past the house's 400 lines because it declares every command's flags
in one table-like parser; each command's body is a few lines calling the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from shipenv import __version__
from shipenv.errors import ShipenvError, UsageError
from shipenv.model import FORMATS, LIBC_MODES, STDLIB_OPTIONAL, BuildPlan

EXAMPLES_BUILD = """\
examples:
  shipenv build --python python3.12 --name hello --version 1.0 --format dir -o out/
  shipenv build -r requirements.txt --python python3.11 --name app --version 2.0.0 -o dist/
  shipenv build . -o dist/app-2.0.0.tar.gz
  shipenv build --venv .venv --entry serve=app.main:run -o dist/
  shipenv build --wheels wheelhouse/ --name app --version 2.0.0 --format dir -o out/
  shipenv build . --format oci --base oci:distroless:latest -o dist/     # dist/NAME-VERSION.oci/
  shipenv build -r requirements.txt --python 3.12 --libc bundled -o dist/   # runs on any x86_64 Linux >= 3.2
"""


class Console:
    """Messages for people: steps and progress on a terminal, quiet in CI logs."""

    def __init__(self, stream: TextIO, *, quiet: bool = False, verbose: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.verbose = verbose
        self.tty = stream.isatty() and not os.environ.get("CI")
        self.color = self.tty and not os.environ.get("NO_COLOR")
        self._started = time.monotonic()
        self._progress_shown = False

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def step(self, message: str) -> None:
        if self.quiet or not (self.tty or self.verbose):
            return
        self.end_progress()
        elapsed = time.monotonic() - self._started
        print(f"{self._paint('•', '36')} {message} {self._paint(f'[{elapsed:.1f}s]', '2')}", file=self.stream)

    def progress(self, files: int, nbytes: int) -> None:
        if self.quiet or not self.tty:
            return
        elapsed = max(time.monotonic() - self._started, 1e-6)
        line = f"  {files:,} files, {nbytes / 1e6:,.1f} MB, {nbytes / 1e6 / elapsed:,.0f} MB/s"
        self.stream.write("\r" + line + "\033[K")
        self.stream.flush()
        self._progress_shown = True

    def end_progress(self) -> None:
        if self._progress_shown:
            self.stream.write("\r\033[K")
            self._progress_shown = False

    def error(self, message: str, hint: str | None) -> None:
        self.end_progress()
        print(f"{self._paint('error:', '1;31')} {message}", file=self.stream)
        if hint:
            print(f"{self._paint('hint:', '1;33')} {hint}", file=self.stream)


def _version_pair(text: str) -> tuple[int, int]:
    from shipenv.bundle.manifest import parse_version

    try:
        return parse_version(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a glibc version such as 2.31") from None


def _entry(text: str) -> tuple[str, str]:
    name, sep, target = text.partition("=")
    if not sep or not name.strip() or ":" not in target:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=module:function")
    return name.strip(), target.strip()


class _Parser(argparse.ArgumentParser):
    """argparse's own refusals (an unknown flag, a missing argument) in the house format, exit status 2."""

    commands: frozenset[str] = frozenset()  #: the top parser's commands
    command: str | None = None  #: the command named on the line, for the hint of an error the top parser finds

    def error(self, message: str) -> NoReturn:
        prog = f"{self.prog} {self.command}" if self.command and " " not in self.prog else self.prog
        Console(sys.stderr).error(message.rstrip(".") + ".", f"See '{prog} --help' for what it takes.")
        self.exit(2)


def _parser() -> _Parser:
    parser = _Parser(
        prog="shipenv",
        description="Relocatable, self-contained Python application bundles for Linux.",
        epilog="Run 'shipenv COMMAND --help' for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"shipenv {__version__}")
    common = _Parser(add_help=False)
    out = common.add_argument_group("output")
    out.add_argument("-v", "--verbose", action="store_true", help="show every step and debug logs")
    out.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    b = sub.add_parser(
        "build", parents=[common], help="build a bundle (a directory or an archive)",
        description="Build a relocatable bundle: a copy of a CPython interpreter, the application's "
        "packages and every shared library they need.",
        epilog=EXAMPLES_BUILD, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = b.add_argument_group("what goes in")
    src.add_argument("project", nargs="?", type=Path, help="a project directory with a pyproject.toml")
    src.add_argument("--python", metavar="PYTHON", help="base CPython: a path, a name on PATH, or a version (default: the one running shipenv)")
    src.add_argument("-r", "--requirement", dest="requirements", action="append", type=Path, default=[], metavar="FILE", help="install from a requirements file (repeatable)")
    src.add_argument("-c", "--constraint", dest="constraints", action="append", type=Path, default=[], metavar="FILE", help="constrain versions with a constraints file (repeatable)")
    src.add_argument("--wheels", type=Path, metavar="DIR", help="install every wheel in DIR, without the network")
    src.add_argument("--venv", type=Path, metavar="DIR", help="copy what is installed in an existing venv")
    src.add_argument("--entry", dest="entries", action="append", type=_entry, default=[], metavar="NAME=MOD:FUNC", help="add an app command to bin/ (repeatable)")
    src.add_argument("--keep-stdlib", action="append", default=[], choices=[*STDLIB_OPTIONAL, "all"], metavar="PART", help=f"keep a part of the stdlib left out by default: {', '.join(STDLIB_OPTIONAL)}, all")
    src.add_argument("--libc", choices=LIBC_MODES, help="host (default): the target's glibc, at least the bundle's floor; bundled: carry this machine's glibc and its loader, so the target needs only a Linux kernel")
    src.add_argument("--system-lib", dest="system_libs", action="append", default=[], metavar="SONAME", help="a library the target provides, so it is not vendored (e.g. libstdc++.so.6)")
    meta = b.add_argument_group("naming and output")
    meta.add_argument("--name", help="bundle name (default: the project's name)")
    meta.add_argument("--version", dest="bundle_version", metavar="VERSION", help="bundle version (default: the project's version)")
    meta.add_argument("-o", "--output", type=Path, default=Path("dist"), metavar="PATH", help="directory for NAME-VERSION[.EXT], or a file name ending in .tar.zst/.tar.gz/.tar.xz (default: dist/)")
    meta.add_argument("--format", dest="fmt", choices=FORMATS, help="tar.zst (default), tar.gz, tar.xz, dir for the unpacked tree, oci for an OCI image layout, oci-archive for the same as one .oci.tar")
    meta.add_argument("--level", type=int, metavar="N", help="compression level: zstd 1-22 (default 3), gzip 1-9 (default 5), xz 0-9 (default 6)")
    meta.add_argument("--threads", type=int, default=0, metavar="N", help="compression threads (default 0: all cores)")
    img = b.add_argument_group("container image (--format oci / oci-archive)")
    img.add_argument("--base", metavar="IMAGE", help="the base image: oci:DIR[:REF] or oci-archive:FILE[:REF], pulled beforehand with skopeo copy")
    img.add_argument("--cmd", metavar="CMD", help='what the image runs instead of the --entry command: "/app/bin/gunicorn app:wsgi" or a JSON array')
    img.add_argument("--user", metavar="USER", help="the user the image runs as (default: the base's non-root user, else 65532:65532)")
    img.add_argument("--image-root", metavar="DIR", help="where the bundle goes in the image (default: /app)")
    meta.add_argument("--sign-key", type=Path, metavar="KEY", help="sign the archive (ARCHIVE.sig, SSHSIG, namespace shipenv) with this OpenSSH private key, or with the ssh-agent's key for this .pub")
    checks = b.add_argument_group("checks")
    checks.add_argument("--max-glibc", type=_version_pair, metavar="X.Y", help="fail if the bundle needs a newer glibc than X.Y")
    checks.add_argument("--report", action="store_true", help="print the whole relocation audit")
    checks.add_argument("--dry-run", action="store_true", help="print what the build would copy, edit, launch and install, and write nothing")
    cache = b.add_argument_group("cache")
    cache.add_argument("--cache-dir", type=Path, metavar="DIR", help="where reusable build layers are kept (default: $SHIPENV_CACHE_DIR, else $XDG_CACHE_HOME/shipenv)")
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write the build cache")
    b.set_defaults(func=_cmd_build)

    i = sub.add_parser(
        "inspect", parents=[common], help="show what a bundle holds",
        description="Show a bundle's name, version, Python, arch, glibc floor, size and packages, "
        "read from its manifest without unpacking the whole archive.",
        epilog="examples:\n  shipenv inspect dist/app-2.0.0.tar.zst\n  shipenv inspect --json out/app-2.0.0 | jq .platform",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("bundle", type=Path, help="an archive or an unpacked bundle directory")
    i.add_argument("--json", action="store_true", help="print JSON for scripts")
    i.add_argument("--sbom", action="store_true", help="print the bundle's CycloneDX SBOM (.shipenv/sbom.cdx.json)")
    i.set_defaults(func=_cmd_inspect)

    v = sub.add_parser(
        "verify", parents=[common], help="check every file of a bundle against its manifest",
        description="Check every file against the manifest's RECORD, audit for build-host paths, "
        "and optionally run a command in a moved copy.",
        epilog="examples:\n  shipenv verify dist/app-2.0.0.tar.zst\n  shipenv verify dist/app-2.0.0.tar.gz --run 'bin/python -c \"import app\"'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("bundle", type=Path, help="an archive or an unpacked bundle directory")
    v.add_argument("--run", metavar="CMD", help="run CMD (relative to the bundle) in a copy moved to a path with a space")
    v.add_argument("--allowed-signers", type=Path, metavar="FILE", help="also require ARCHIVE.sig by a key this OpenSSH allowed_signers file allows (namespace shipenv)")
    v.set_defaults(func=_cmd_verify)

    d = sub.add_parser(
        "deploy", parents=[common], help="unpack a bundle as a new release and switch to it",
        description="Unpack, verify and host-check an archive as ROOT/releases/NAME-VERSION, then switch "
        "ROOT/current to it atomically. Any failure leaves the current release untouched. In a root with a trust "
        "policy (shipenv trust), ARCHIVE.sig must be beside the archive, by a key the policy allows.",
        epilog="examples:\n  shipenv deploy app-2.0.0.tar.zst --root /srv/app\n  shipenv deploy app-2.0.0.tar.zst --root /srv/app --check 'bin/python -m app --selftest' --keep 5\n\n"
        "environment:\n  SHIPENV_HOST_GLIBC=X.Y  the host's glibc version, for hosts where detecting it fails",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("archive", type=Path, help="the bundle archive")
    d.add_argument("--root", type=Path, required=True, help="the application's root on this server")
    d.add_argument("--check", metavar="CMD", help="run CMD inside the new release before switching; non-zero aborts")
    d.add_argument("--keep", type=int, metavar="N", help="then prune to N releases")
    d.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait this long for another deploy on ROOT to finish (default: fail at once)")
    d.set_defaults(func=_cmd_deploy)

    r = sub.add_parser(
        "rollback", parents=[common], help="switch back to the previous release",
        description="Switch ROOT/current back to the release that was current before, or to --to VERSION. "
        "ROOT/history.jsonl decides, not file times: repeated rollbacks walk further back.",
        epilog="examples:\n  shipenv rollback --root /srv/app\n  shipenv rollback --root /srv/app --to 1.0.0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--root", type=Path, required=True)
    r.add_argument("--to", metavar="VERSION", help="a version (or NAME-VERSION) to switch to")
    r.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    r.set_defaults(func=_cmd_rollback)

    rel = sub.add_parser(
        "releases", parents=[common], help="list the releases on a server",
        description="List releases under ROOT: which is current, and when each was deployed.",
        epilog="examples:\n  shipenv releases --root /srv/app\n  shipenv releases --root /srv/app --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rel.add_argument("--root", type=Path, required=True)
    rel.add_argument("--json", action="store_true")
    rel.set_defaults(func=_cmd_releases)

    p = sub.add_parser(
        "prune", parents=[common], help="remove old releases",
        description="Remove all but the N most recently current releases; never the current one nor the rollback target.",
        epilog="examples:\n  shipenv prune --root /srv/app --keep 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--keep", type=int, required=True, metavar="N")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    p.set_defaults(func=_cmd_prune)

    c = sub.add_parser(
        "cache", parents=[common], help="show or prune the build cache",
        description="Show what the build cache holds (the default), or remove the least recently used entries: "
        "--max-size keeps at most SIZE, --older-than removes what no build used for DAYS. "
        "A removed entry is only rebuilt when a build needs it again.",
        epilog="examples:\n  shipenv cache\n  shipenv cache --prune --max-size 10G\n"
        "  shipenv cache --prune --older-than 30 --dry-run\n  shipenv cache --cache-dir ci-cache --prune --max-size 2GB",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--cache-dir", type=Path, metavar="DIR", help="the cache (default: the one builds use, $SHIPENV_CACHE_DIR, else $XDG_CACHE_HOME/shipenv)")
    c.add_argument("--prune", action="store_true", help="remove entries, least recently used first")
    c.add_argument("--max-size", metavar="SIZE", help="with --prune: keep at most SIZE (500M, 10G, 4GiB)")
    c.add_argument("--older-than", type=float, metavar="DAYS", help="with --prune: remove what no build used for DAYS days")
    c.add_argument("--dry-run", action="store_true", help="with --prune: say what would go, remove nothing")
    c.set_defaults(func=_cmd_cache)

    t = sub.add_parser(
        "trust", parents=[common], help="set or remove who may sign what is deployed into a root",
        description="Copy an OpenSSH allowed_signers file into ROOT: from then on, shipenv deploy and deploy.sh accept only archives "
        "with an ARCHIVE.sig (SSHSIG, namespace shipenv) by a key it allows, and rollback only to releases deployed that way. "
        "--remove takes the policy away; both are recorded in ROOT/history.jsonl. Without either, shows the policy.",
        epilog="examples:\n  shipenv trust --root /srv/app --allowed-signers /etc/app/allowed_signers\n  shipenv trust --root /srv/app\n"
        "  shipenv trust --root /srv/app --remove",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--root", type=Path, required=True)
    how = t.add_mutually_exclusive_group()
    how.add_argument("--allowed-signers", type=Path, metavar="FILE", help="principals and keys, in ssh-keygen's ALLOWED SIGNERS format")
    how.add_argument("--remove", action="store_true", help="accept unsigned archives again (recorded in the history)")
    t.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    t.set_defaults(func=_cmd_trust)

    m = sub.add_parser(
        "modulefile", parents=[common], help="write Environment Modules / Lmod files for a release",
        description="Write DIR/NAME/VERSION (Tcl: Environment Modules, Lmod) and DIR/NAME/VERSION.lua (Lmod).\n"
        "Loading one puts a release's bin/ first on PATH and sets nothing else; unloading takes it out.\n"
        "By default it pins the release ROOT/current points to now; --current follows ROOT/current.",
        epilog="examples:\n  shipenv modulefile --root /srv/app -o /etc/modulefiles      # then: module load app/2.0.0\n"
        "  shipenv modulefile --root /srv/app --release 1.0.0 -o /etc/modulefiles\n"
        "  shipenv modulefile --root /srv/app --current -o /etc/modulefiles  # module load app/current\n"
        "  shipenv modulefile --root /opt/app-2.0.0 --syntax lua -o ~/modulefiles",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--root", type=Path, required=True, help="a deploy root (shipenv deploy --root) or an unpacked bundle")
    which = m.add_mutually_exclusive_group()
    which.add_argument("--release", metavar="VERSION", help="this release (a version or NAME-VERSION) instead of the current one")
    which.add_argument("--current", action="store_true", help="point at ROOT/current, following deploys and rollbacks (module version: current)")
    m.add_argument("--name", help="module name (default: the bundle's name)")
    m.add_argument("--version", dest="module_version", metavar="VERSION", help="module version (default: the release's version)")
    m.add_argument("--syntax", choices=["tcl", "lua", "both"], default="both", help="which modulefiles to write (default: both)")
    m.add_argument("-o", "--output", type=Path, default=Path("modulefiles"), metavar="DIR", help="the directory for 'module use' (default: modulefiles/)")
    m.set_defaults(func=_cmd_modulefile)
    parser.commands = frozenset(sub.choices)
    return parser


def _cmd_build(args: argparse.Namespace, console: Console) -> int:
    from shipenv import config
    from shipenv.build import pipeline

    options = config.build_options(args)
    if args.dry_run:
        from shipenv.build import dryrun

        _print_plan(dryrun.plan(options), verbose=args.verbose)
        return 0
    result = pipeline.build(options, step=console.step, progress=console.progress)
    console.end_progress()
    if args.report:
        for finding in result.audit:
            print(f"{finding.kind:8} {finding.path}: {finding.needle} — {finding.reason}")
    floor = f"glibc >= {result.glibc_floor[0]}.{result.glibc_floor[1]}" if result.glibc_floor else "no glibc floor"
    print(f"Built {result.path}: {result.libc}" if result.libc else f"Built {result.path} ({floor})")
    if result.sha256:
        print(f"sha256 {result.sha256}  {result.path.name}")
    if result.image_digest:
        print(f"image {result.image_digest}")
    if result.signature is not None:
        print(f"Signed {result.signature.name} with {result.signer}")
    return 0


def _print_plan(plan: BuildPlan, *, verbose: bool) -> None:
    """The plan of ``build --dry-run``, one line per item (every copied file with -v)."""
    py = plan.python
    print(f"Plan for {plan.tree_name} ({plan.fmt}) at {plan.artifact}; nothing was written.")
    print(f"python    CPython {py.version_str} ({py.abi_tag}, {py.machine}) from {py.executable}")
    left_out = f"; left out: {', '.join(plan.copy.skipped)}" if plan.copy.skipped else ""
    print(f"copy      {len(plan.copy.files):,} files of the interpreter and its stdlib{left_out}")
    if verbose:
        for item in plan.copy.files:
            print(f"copy      {item.dest} <- {item.src}")
    for lib in plan.relocation.vendor:
        print(f"vendor    {lib.dest} <- {lib.src} (needed by {lib.needed_by})")
    for edit in plan.relocation.rpaths:
        print(f"rpath     {edit.path}: {':'.join(edit.old) or '(none)'} -> {':'.join(edit.new) or '(none)'}")
    for script in plan.relocation.shebangs:
        print(f"shebang   {script.path}: {script.old} -> bundle launcher")
    for launcher in plan.launchers:
        print(f"launcher  {launcher.path}")
    for wheel in plan.wheels:
        print(f"wheel     {wheel}")
    if plan.wheels_note:
        print(f"packages  {plan.wheels_note}")


def _cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from shipenv.bundle import verify

    if args.sbom:
        sys.stdout.write(verify.read_sbom(args.bundle))
        return 0
    info = verify.inspect(args.bundle)
    if args.json:
        print(json.dumps(info.as_dict(), indent=2, sort_keys=True))
        return 0
    m = info.manifest
    py, plat = m.python, m.platform
    print(f"{m.name} {m.version}")
    print(f"  python     {py.implementation} {py.version} ({py.abi})")
    floor = f"glibc >= {plat.glibc_floor}" if plat.glibc_floor else "no glibc requirement"
    if plat.libc == "bundled":
        from shipenv.build.libc import summary

        print(f"  libc       {summary(plat.bundled_libc(), plat.arch)}")
    else:
        print(f"  platform   {plat.arch}, {floor} ({plat.tag})")
    kinds = {"native": "native (static ELF: no shell needed)", "sh": "sh (#!/bin/sh scripts: need /bin/sh)"}
    if m.launchers:
        print(f"  launchers  {kinds.get(m.launchers, m.launchers)}")
    print(f"  size       {info.size / 1e6:,.1f} MB in {info.files:,} files")
    if info.archive:
        print(f"  archive    {info.archive.format}, {info.archive.size / 1e6:,.1f} MB, sha256 {info.archive.sha256}")
    print(f"  built      {m.build.time} by shipenv {m.build.shipenv_version}")
    print(f"  packages   {len(m.distributions)}")
    for dist in m.distributions:
        print(f"    {dist.name}=={dist.version}  ({dist.source})")
    return 0


def _cmd_verify(args: argparse.Namespace, console: Console) -> int:
    from shipenv.bundle import verify

    signed = None
    if args.allowed_signers is not None:
        from shipenv.bundle import signers

        if args.bundle.is_dir():
            raise UsageError(f"{args.bundle} is a directory; --allowed-signers checks the signature of an archive.")
        signed = signers.verify_archive(args.bundle, signers.read(args.allowed_signers), source=str(args.allowed_signers))
    report = verify.verify(args.bundle, run=args.run, progress=console.progress)
    console.end_progress()
    if signed is not None:
        print(f"OK: {args.bundle.name}.sig is a good signature by {signed[0].principals} ({signed[1].fingerprint})")
    print(f"OK: {report.files:,} files match the manifest of {report.name}")
    if args.run is not None:
        print(f"OK: {args.run!r} succeeded in a copy moved to a path with a space")
    return 0


def _cmd_deploy(args: argparse.Namespace, console: Console) -> int:
    from shipenv.deploy import releases as deploy

    # SHIPENV_HOST_GLIBC: for hosts where detecting the C library's version fails or lies.
    host = deploy.HostFacts.detect(os.environ.get("SHIPENV_HOST_GLIBC"))
    result = deploy.deploy(args.archive, args.root, check=args.check, keep=args.keep, wait=args.wait, host=host, step=console.step, progress=console.progress)
    console.end_progress()
    print(result.message)
    return 0


def _cmd_rollback(args: argparse.Namespace, console: Console) -> int:
    from shipenv.deploy import releases as deploy

    print(deploy.rollback(args.root, to=args.to, wait=args.wait).message)
    return 0


def _cmd_releases(args: argparse.Namespace, console: Console) -> int:
    from shipenv.deploy import releases as deploy

    releases = deploy.releases(args.root)
    if args.json:
        print(json.dumps([r.as_dict() for r in releases], indent=2))
        return 0
    if not releases:
        print(f"No releases under {args.root}.")
    for r in releases:
        mark = "*" if r.current else "<" if r.rollback else " "
        when = r.deployed_at or "-"
        signed = f"  signed by {r.signer} ({r.key})" if r.key else ""
        print(f"{mark} {r.name:30} {when}{signed}")
    if releases:
        print("(* current, < where rollback goes)")
    return 0


def _cmd_prune(args: argparse.Namespace, console: Console) -> int:
    from shipenv.deploy import releases as deploy

    print(deploy.prune(args.root, keep=args.keep, wait=args.wait).message)
    return 0


def _cmd_cache(args: argparse.Namespace, console: Console) -> int:
    from shipenv.build import cache, cachedir

    root = args.cache_dir or cache.default_dir()
    if not args.prune:
        if args.max_size is not None or args.older_than is not None or args.dry_run:
            raise UsageError("--max-size, --older-than and --dry-run go with --prune.", hint="Add --prune to remove entries.")
        held = cachedir.usage(root)
        print(f"The build cache at {root} holds {_size(held.size)} in {len(held.entries):,} entries.")
        for kind, (count, size) in held.by_kind().items():
            print(f"  {kind:12} {count:6,} entries  {_size(size):>10}")
        return 0
    max_size = cachedir.parse_size(args.max_size) if args.max_size is not None else None
    done = cachedir.prune(root, max_size=max_size, older_than=args.older_than, dry_run=args.dry_run)
    verb = "Would remove" if done.dry_run else "Removed"
    left = "would be left" if done.dry_run else "left"
    print(f"{verb} {len(done.removed):,} entries ({_size(done.freed)}) from {root}; {_size(done.left)} {left}.")
    return 0


def _size(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:,.1f} GB"
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def _cmd_trust(args: argparse.Namespace, console: Console) -> int:
    from shipenv.deploy import trust

    if args.remove:
        print(trust.remove_policy(args.root, wait=args.wait).message)
    elif args.allowed_signers is not None:
        print(trust.set_policy(args.root, args.allowed_signers, wait=args.wait).message)
    else:
        allowed = trust.policy(args.root)
        if allowed is None:
            print(f"{args.root} has no trust policy: it accepts unsigned archives.")
        for s in allowed or ():
            print(f"{s.principals} {s.key.fingerprint} ({s.key.keytype})")
    return 0


def _cmd_modulefile(args: argparse.Namespace, console: Console) -> int:
    import shlex

    from shipenv.deploy import modulefile

    target = modulefile.find_target(args.root, release=args.release, follow_current=args.current, name=args.name, version=args.module_version)
    syntaxes = modulefile.SYNTAXES if args.syntax == "both" else (args.syntax,)
    for path in modulefile.write(target, args.output, syntaxes):
        print(f"Wrote {path}")
    print(f"Use it with: module use {shlex.quote(str(args.output))}; module load {target.module}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    words = sys.argv[1:] if argv is None else list(argv)
    parser.command = next((w for w in words if not w.startswith("-")), None)
    if parser.command not in parser.commands:
        parser.command = None
    args = parser.parse_args(words)
    console = Console(sys.stderr, quiet=args.quiet, verbose=args.verbose)
    # -v shows shipenv's own debug logs; libraries (cyclonedx logs every field it
    # serialises, thousands of lines a build) still speak only to warn.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("shipenv").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    func: Callable[[argparse.Namespace, Console], int] = args.func
    try:
        return func(args, console)
    except ShipenvError as exc:
        console.error(exc.message, exc.hint)
        return exc.exit_code
    except KeyboardInterrupt:
        console.error("Interrupted; nothing was changed.", None)
        return 130
    except BrokenPipeError:
        return 1
