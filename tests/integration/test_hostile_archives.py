"""One table of hostile and broken archives, each row run against ``shipenv deploy`` and ``deploy.sh``.

Every row is an archive made here with ``tarfile`` or raw bytes, with exactly
one thing wrong and a RECORD that otherwise matches. ``shipenv deploy`` runs on
this host; ``deploy.sh`` runs in the Debian 12 minbase root (dash, GNU tar,
coreutils; see tests/chroots.py), each on a root where app-1.0 is deployed. Both
must give the row's verdict: refused with the row's sentence (the same words
from both, unless the row says why they differ), or deployed (with the modes
the row lists, masked on the way in). A damaged download (cut short, a flipped
byte) is refused too, exit status 3, with the reader's sentence. After a refusal
nothing outside the release may have changed: a listing with hashes of the
whole root and of a sentinel directory beside it is compared before and after
(for deploy.sh: of the overlay's whole upper layer, which is every byte the run
could have changed in the server's file system). Rows about a ``.tar.zst``'s
frame index (``shipenv_only``) run against ``shipenv deploy`` alone: deploy.sh
never reads the index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipenv.bundle import fragments, frames
from shipenv.bundle.manifest import RecordEntry
from tests.chroots import OverlayRoot, root_path
from tests.helpers import (
    Member,
    check_release,
    entry,
    file_member,
    link_member,
    make_tree,
    members_of,
    pack,
    rewrite_index,
    run_shipenv,
    with_record,
    write_tar,
)

Craft = Callable[[list[Member], Path], list[Member]]
DEPLOYED = "deployed"


@dataclass(frozen=True)
class Row:
    name: str
    craft: Craft | None  #: None: raw bytes from ``raw``
    sentence: str  #: the refusal's reason as both print it, or DEPLOYED
    sh_sentence: str | None = None  #: where deploy.sh must say something else: what, and the reason in ``why``
    why: str = ""
    raw: Callable[[Path], bytes] | None = None
    filename: str = "app-2.0.tar.gz"  #: the archive's name (the sniffing row names a gzip .tar.zst)
    modes: tuple[tuple[str, int], ...] = ()  #: a deployed row: (path in the release, the mode it must have)
    damaged: bool = False  #: the sentences begin the whole error line (ARCHIVE: the archive's path), not "Refused ...: "
    shipenv_only: str = ""  #: why deploy.sh does not run this row (a .tar.zst's frame index, which only shipenv deploy reads)


def _escape(members: list[Member], tmp: Path) -> list[Member]:
    up = "../" * 6
    return with_record(members + [link_member("app-2.0/lib/esc", f"{up}outside"), file_member("app-2.0/lib/esc/planted", b"pwned\n")],
                       RecordEntry("lib/esc", symlink=f"{up}outside"), entry("lib/esc/planted", b"pwned\n"))


def _device(members: list[Member], tmp: Path) -> list[Member]:
    info = tarfile.TarInfo("app-2.0/lib/null")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return members + [(info, None)]


def _tampered(members: list[Member], tmp: Path) -> list[Member]:
    out = []
    for info, data in members:
        if info.name == "app-2.0/lib/app/__init__.py":
            data = b"VERSION = 'ev1'\n"  # the size RECORD says: only the bytes differ
        out.append((info, data))
    return out


def _larger_than_record(members: list[Member], tmp: Path) -> list[Member]:
    """Issue 11, item 4: a 64 MiB member that RECORD says is 1 byte (64 KB of gzip); nothing of it may be written."""
    info, data = file_member("app-2.0/lib/big", bytes(64 << 20))
    return with_record(members + [(info, data)], entry("lib/big", b"\0"))


def _world_writable(members: list[Member], tmp: Path) -> list[Member]:
    """Issue 11, item 5: modes others could write (and a sticky directory) are masked on the way in."""
    modes = {"app-2.0": 0o777, "app-2.0/lib": 0o1777, "app-2.0/bin/app": 0o777, "app-2.0/lib/app/__init__.py": 0o666}
    for info, _ in members:
        info.mode = modes.get(info.name, info.mode)
    return members


def _spaced_symlink(members: list[Member], tmp: Path) -> list[Member]:
    """Issue 11, item 2: a symlink named ' x' listed in RECORD as a file with its target's hash."""
    target = (root_path("bookworm") / "etc" / "debian_version").read_bytes()  # what deploy.sh's sha256sum would read
    info, _ = link_member("app-2.0/ x", "../../../../../etc/debian_version")
    return with_record(members + [(info, None)], entry(" x", target))


def _pax_bomb(tmp: Path) -> bytes:
    """Issue 11, item 3: one pax header declaring 1 GiB (about 1 MB of gzip)."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 1 << 30
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)  # streamed: the test itself stays small too
    parts = [z.compress(info.tobuf(tarfile.USTAR_FORMAT))] + [z.compress(block) for _ in range(info.size >> 20)]
    return b"".join([*parts, z.compress(bytes(1024)), z.flush()])


def _cut_short(tmp: Path) -> bytes:
    """Issue 11 (exit status 3 for a damaged download): an archive cut in the middle of its gzip stream."""
    data = write_tar(tmp / "whole.tar.gz", members_of(make_tree(tmp / "t2", "2.0", big=200_000))).read_bytes()
    return data[: len(data) // 2]


def _flipped(tmp: Path) -> bytes:
    """A byte flipped in the middle of the gzip stream: the download is damaged, not cut."""
    data = bytearray(write_tar(tmp / "whole.tar.gz", members_of(make_tree(tmp / "t2", "2.0", big=200_000))).read_bytes())
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def _sparse(members: list[Member], tmp: Path) -> list[Member]:
    info, data = file_member("app-2.0/lib/holes", b"")
    info.type = tarfile.GNUTYPE_SPARSE
    return members + [(info, data)]


ROWS = [
    Row("fine", lambda m, t: m, DEPLOYED),
    Row("dotdot", lambda m, t: m + [file_member("app-2.0/../../escaped", b"x\n")], "entry 'app-2.0/../../escaped' climbs out of its directory with '..'"),
    Row("absolute", lambda m, t: m + [file_member("/tmp/abs-escape", b"x\n")], "entry '/tmp/abs-escape' is an absolute path"),
    Row("symlink-then-write-through", _escape, "the symlink 'app-2.0/lib/esc' points outside the release (to '../../../../../../outside')",
        sh_sentence="a path would be written through the symlink 'app-2.0/lib/esc'",
        why="deploy.sh checks the whole listing before RECORD, so it sees the file below the link first"),
    Row("symlink-via-symlink", lambda m, t: with_record(m + [link_member("app-2.0/here", "."), link_member("app-2.0/up", "here/..")],
                                                       RecordEntry("here", symlink="."), RecordEntry("up", symlink="here/..")),
        "the symlink 'app-2.0/up' -> 'here/..' resolves outside the release", sh_sentence="the symlink 'app-2.0/up' resolves outside the release",
        why="deploy.sh resolves with realpath and does not repeat the target"),
    Row("device", _device, "entry 'app-2.0/lib/null' is a character device; a bundle holds only files, directories and symlinks",
        sh_sentence="entry 'app-2.0/lib/null' is a device node; a bundle holds only files, directories and symlinks",
        why="tar -tv does not tell deploy.sh character from block devices"),
    Row("setuid", lambda m, t: with_record(m + [file_member("app-2.0/bin/rootme", b"id\n", 0o4755)], entry("bin/rootme", b"id\n")),
        "'app-2.0/bin/rootme' has the setuid or setgid bit set (mode 4755)", sh_sentence="'app-2.0/bin/rootme' has the setuid or setgid bit set",
        why="tar -tv shows the bits, not the octal mode"),
    Row("bytes-differ", _tampered, "the bytes of 'app-2.0/lib/app/__init__.py' differ from its RECORD entry",
        sh_sentence="1 file(s) differ from RECORD: lib/app/__init__.py", why="sha256sum -c runs over the unpacked tree and counts"),
    Row("hard-link-to-etc-passwd", lambda m, t: with_record(m + [link_member("app-2.0/lib/passwd", "/etc/passwd", tarfile.LNKTYPE)],
                                                        entry("lib/passwd", Path("/etc/passwd").read_bytes())),
        "the hard link 'app-2.0/lib/passwd' points to '/etc/passwd', which is not a file unpacked earlier from this archive",
        sh_sentence="'app-2.0/lib/passwd' is a hard link; a bundle holds only files, directories and symlinks",
        why="deploy.sh refuses every hard link; shipenv accepts one to a file of the same archive (tarfile writes those)"),
    Row("missing-file", lambda m, t: with_record(m, entry("lib/app/ghost.py", b"boo\n")), "RECORD lists 1 file(s) the archive lacks: lib/app/ghost.py",
        sh_sentence="RECORD lists 'lib/app/ghost.py', which the archive lacks", why="deploy.sh stops at the first"),
    Row("not-in-record", lambda m, t: m + [file_member("app-2.0/lib/app/extra.py", b"x = 1\n")], "'app-2.0/lib/app/extra.py' is not listed in RECORD"),
    Row("symlink-named-with-a-space", _spaced_symlink, "the symlink 'app-2.0/ x' -> '../../../../../etc/debian_version' differs from its RECORD entry",
        sh_sentence="'app-2.0/ x' is a symlink but RECORD lists it as a file",
        why="the same mismatch; Python sees it at the member, deploy.sh after unpacking (it once trimmed the space and followed the link)"),
    Row("pax-header-of-1-GiB", None, "an extended tar header is larger than any bundle needs", raw=_pax_bomb),
    Row("member-larger-than-RECORD", _larger_than_record, "'app-2.0/lib/big' is 67108864 bytes in the archive but RECORD says 1"),
    Row("world-writable-modes-masked", _world_writable, DEPLOYED,
        modes=(("", 0o755), ("lib", 0o755), ("bin/app", 0o755), ("lib/app/__init__.py", 0o644))),
    Row("truncated", None, "ARCHIVE is truncated: its gzip data ends before the archive does.", raw=_cut_short, damaged=True,
        sh_sentence="ARCHIVE is truncated or corrupt: it cannot be read to its end.",
        why="deploy.sh sees only that gzip or tar failed, not which"),
    Row("corrupt", None, "ARCHIVE is corrupt (", raw=_flipped, damaged=True,
        sh_sentence="ARCHIVE is truncated or corrupt: it cannot be read to its end.",
        why="deploy.sh sees only that gzip or tar failed, not which"),
    Row("gnu-sparse-member", _sparse, "entry 'app-2.0/lib/holes' is a sparse file, which shipenv build never writes",
        sh_sentence="'app-2.0/lib/holes' is not listed in RECORD",
        why="tar -tv lists a sparse member as a plain file, so deploy.sh refuses it only because RECORD does not list it"),
]


def _dot_slash(members: list[Member], tmp: Path) -> list[Member]:
    """Issue 11, item 8: every member as ``tar -C DIR -cf X ./app-2.0`` names it."""
    out = []
    for info, data in members:
        info.name = f"./{info.name}"
        out.append((info, data))
    return out


_ODD = {"lib/café.txt": b"accent\n", "lib/tab\there.txt": b"tab\n", "lib/back\\slash.txt": b"backslash\n"}
_CSV = {"lib/a,b\"c.txt": b"comma and quote\n"}


def _named(names: dict[str, bytes], links: dict[str, str] | None = None) -> Craft:
    """Issue 11, item 8: files (and symlinks) with names deploy.sh once refused, listed in RECORD."""
    def craft(members: list[Member], tmp: Path) -> list[Member]:
        extra = [file_member(f"app-2.0/{n}", d) for n, d in names.items()]
        extra += [link_member(f"app-2.0/{n}", t) for n, t in (links or {}).items()]
        return with_record(members + extra, *(entry(n, d) for n, d in names.items()),
                           *(RecordEntry(n, symlink=t) for n, t in (links or {}).items()))
    return craft


def _head_last(members: list[Member], tmp: Path) -> list[Member]:
    """Repacked by hand: manifest.json and RECORD no longer first."""
    head = [m for m in members if m[0].name.endswith(("/manifest.json", "/RECORD"))]
    return [m for m in members if m not in head] + head


def _dot_first(members: list[Member], tmp: Path) -> list[Member]:
    """``tar -C DIR -cf X .``: a first entry ``./`` that is no NAME-VERSION directory."""
    info = tarfile.TarInfo(".")
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return [(info, None), *_dot_slash(members, tmp)]


def _gzip_named_zst(tmp: Path) -> bytes:
    """A gzip archive named .tar.zst: both sniff the first bytes, not the name."""
    return write_tar(tmp / "made.tar.gz", members_of(make_tree(tmp / "t2", "2.0"))).read_bytes()


ROWS += [
    Row("members-start-with-dot-slash", _dot_slash, DEPLOYED),
    Row("first-entry-is-dot", _dot_first, "its first entry '.' is not under a NAME-VERSION/ directory"),
    Row("names-with-accents-tabs-backslashes", _named(_ODD), DEPLOYED),
    Row("names-with-commas-and-quotes", _named(_CSV, {"lib/l,\"k": "a,b\"c.txt"}), DEPLOYED),
    Row("newline-in-a-name", _named({"lib/new\nline.txt": b"nl\n"}), DEPLOYED,
        sh_sentence="'app-2.0/lib/new\\nline.txt' has a newline in its name, which deploy.sh cannot deploy (shipenv deploy can)",
        why="every list deploy.sh reads is one name a line (README says so; shipenv build refuses such a name)"),
    Row("top-entry-is-a-file", lambda m, t: m + [file_member("app-2.0", b"x\n")], "entry 'app-2.0' is not a directory"),
    Row("top-entry-is-a-symlink", lambda m, t: m + [link_member("app-2.0", "/etc")], "entry 'app-2.0' is not a directory"),
    Row("manifest-and-record-not-first", _head_last, "it does not start with app-2.0/.shipenv/manifest.json and .shipenv/RECORD "
        "as shipenv build writes them (found 'app-2.0/.shipenv/deploy.sh' first)"),
    Row("gzip-named-tar-zst", None, DEPLOYED, raw=_gzip_named_zst, filename="app-2.0.tar.zst"),
    Row("file-below-a-file", lambda m, t: with_record(m + [file_member("app-2.0/lib/shared.txt/x", b"x\n")], entry("lib/shared.txt/x", b"x\n")),
        "'app-2.0/lib/shared.txt/x' would be written below the file 'app-2.0/lib/shared.txt'"),
]


def _indexed(tmp: Path, change: Callable[[list[frames.Frame]], list[frames.Frame]]) -> bytes:
    """app-2.0 as ``shipenv build`` packs a .tar.zst (bin/app-link and lib/shared.txt, the same as in app-1.0, a layer
    of their own), its frame index rewritten by ``change``."""
    tree = make_tree(tmp / "t2", "2.0")
    layer = fragments.Fragment(frozenset({"bin/app-link", "lib/shared.txt"}))
    made = fragments.write(tree, tmp / "made.tar.zst", "tar.zst", level=None, threads=1, mtime=1577836800, arcname="app-2.0",
                           fragments=[layer])
    return rewrite_index(made.path, tmp / "lied.tar.zst", change).read_bytes()


def _omitted(fs: list[frames.Frame]) -> list[frames.Frame]:
    fs[1] = dataclasses.replace(fs[1], members=tuple(m for m in fs[1].members if m.path != "lib/shared.txt"))
    return fs


def _claimed(fs: list[frames.Frame]) -> list[frames.Frame]:
    """The layer's frame also claims deploy.sh (the same in app-1.0), which the head holds, and the head is always decoded."""
    extra = next(m for m in fs[0].members if m.path == ".shipenv/deploy.sh")
    fs[0] = dataclasses.replace(fs[0], members=tuple(m for m in fs[0].members if m.path != extra.path))
    fs[1] = dataclasses.replace(fs[1], members=(*fs[1].members, extra))
    return fs


def _overlapping(fs: list[frames.Frame]) -> list[frames.Frame]:
    fs[2] = dataclasses.replace(fs[2], offset=fs[2].offset - 1, length=fs[2].length + 1)
    return fs


_INDEX = "only shipenv deploy reads a .tar.zst's frame index, and the Debian minbase root has no zstd"
ROWS += [
    Row("index-omits-a-path-of-a-skipped-frame", None, "RECORD lists 1 file(s) the archive lacks: lib/shared.txt",
        raw=lambda t: _indexed(t, _omitted), filename="app-2.0.tar.zst", shipenv_only=_INDEX),
    Row("index-claims-a-path-of-a-decoded-frame", None, "'app-2.0/.shipenv/deploy.sh' appears twice",
        raw=lambda t: _indexed(t, _claimed), filename="app-2.0.tar.zst", shipenv_only=_INDEX),
    Row("index-frames-overlap", None, "ARCHIVE is corrupt (its frame index lists frame 2 at byte", damaged=True,
        raw=lambda t: _indexed(t, _overlapping), filename="app-2.0.tar.zst", shipenv_only=_INDEX),
]


def snapshot(*dirs: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``dirs`` with its type, mode, and content hash or link target."""
    found: dict[str, tuple[object, ...]] = {}
    for base in dirs:
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                full = Path(dirpath) / name
                st = full.lstat()
                if full.is_symlink():
                    found[str(full)] = ("l", os.readlink(full))
                elif full.is_file():
                    found[str(full)] = ("f", st.st_mode, hashlib.sha256(full.read_bytes()).hexdigest())
                else:
                    found[str(full)] = ("d", st.st_mode)
    return found


def _archive(row: Row, tmp: Path) -> Path:
    path = tmp / row.filename
    if row.raw is not None:
        path.write_bytes(row.raw(tmp))
    else:
        assert row.craft is not None
        write_tar(path, row.craft(members_of(make_tree(tmp / "t2", "2.0")), tmp))
    return path


@pytest.fixture(scope="module")
def sh_verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, bool, dict[str, int]]]:
    """Every row through deploy.sh in one Debian 12 root: (exit status, last stderr line, upper layer unchanged, modes)."""
    base = tmp_path_factory.mktemp("hostile-sh")
    v1 = pack(make_tree(base / "t1", "1.0"), base / "dist")
    binds: dict[Path, str] = {v1: "/in/app-1.0.tar.gz", Path(__file__).resolve().parents[2] / "templates" / "deploy.sh": "/in/deploy.sh"}
    for i, row in enumerate(ROWS):
        if row.shipenv_only:
            continue
        (base / f"row{i}").mkdir()
        binds[_archive(row, base / f"row{i}")] = f"/in/row{i}/{row.filename}"
    results: dict[str, tuple[int, str, bool, dict[str, int]]] = {}
    with OverlayRoot("bookworm") as server:
        for i, row in enumerate(ROWS):
            if row.shipenv_only:
                continue
            root = f"/srv/row{i}"
            done = server.run(["sh", "-c", f"mkdir -p /srv/outside{i} && echo keep > /srv/outside{i}/sentinel && "
                                           f"sh /in/deploy.sh deploy /in/app-1.0.tar.gz {root}"], binds=binds)
            assert done.returncode == 0, done.stderr
            before = snapshot(server.upper)
            done = server.run(["sh", "/in/deploy.sh", "deploy", f"/in/row{i}/{row.filename}", root], binds=binds)
            last = (done.stderr.strip().splitlines() or [""])[-1] if done.returncode else done.stdout.strip()
            after = snapshot(server.upper)
            release = server.upper_path(f"{root}/releases/app-2.0")
            modes = {rel: stat.S_IMODE((release / rel).lstat().st_mode) for rel, _ in row.modes} if done.returncode == 0 else {}
            results[row.name] = (done.returncode, last, after == before, modes)
    return results


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_both_deploys_give_the_rows_verdict(row: Row, sh_verdicts: dict[str, tuple[int, str, bool, dict[str, int]]],
                                           tmp_path: Path) -> None:
    root, outside = tmp_path / "srv", tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("keep\n")
    run_shipenv("deploy", pack(make_tree(tmp_path / "t1", "1.0"), tmp_path / "dist"), "--root", root)
    (tmp_path / "row").mkdir()
    archive = _archive(row, tmp_path / "row")
    before = snapshot(root, outside)
    done = run_shipenv("deploy", archive, "--root", root, check=False)
    sh_code, sh_last, sh_untouched, sh_modes = sh_verdicts.get(row.name, (0, "", True, {}))
    sh_refusal = f"error: Refused {row.filename}: {row.sh_sentence or row.sentence}; nothing was deployed."
    if row.sentence == DEPLOYED:
        assert done.returncode == 0 and done.stdout.startswith("Deployed app-2.0 and switched"), done.stderr
        assert os.readlink(root / "current") == "releases/app-2.0"
        check_release(root / "releases" / "app-2.0")
        want = dict(row.modes)
        assert {rel: stat.S_IMODE((root / "releases" / "app-2.0" / rel).lstat().st_mode) for rel in want} == want
        if row.sh_sentence is None:
            assert sh_code == 0 and sh_last.startswith("Deployed app-2.0 and switched /srv/"), sh_last
            assert sh_modes == want, "deploy.sh left other modes"
        else:  # what only shipenv deploy takes
            assert (sh_code, sh_last) == (3, sh_refusal)
            assert sh_untouched, "deploy.sh changed something in the server's file system"
        return
    assert "Traceback" not in done.stderr
    assert snapshot(root, outside) == before
    if row.damaged:  # 3 as well: a download that was cut or damaged is a refused archive
        line = next((x for x in done.stderr.splitlines() if x.startswith("error: ")), done.stderr)
        assert done.returncode == 3 and line.startswith("error: " + row.sentence.replace("ARCHIVE", str(archive))), done.stderr
        if row.shipenv_only:
            return
        sh_path = f"/in/row{ROWS.index(row)}/{row.filename}"
        assert sh_code == 3 and sh_last.startswith("error: " + (row.sh_sentence or row.sentence).replace("ARCHIVE", sh_path)), sh_last
        assert sh_untouched, "deploy.sh changed something in the server's file system"
        return
    refusal = f"error: Refused {row.filename}: {row.sentence}; nothing was deployed."
    assert done.returncode == 3 and refusal in done.stderr.splitlines(), done.stderr  # 3: a refused archive
    if row.shipenv_only:
        return
    assert (sh_code, sh_last) == (3, sh_refusal)
    assert sh_untouched, "deploy.sh changed something in the server's file system"


# -- the total RECORD declares against the free space, before a byte is written ----------------------------------


def _tmpfs(point: Path, size: str) -> None:
    point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(point)], check=True)


SPACE = re.compile(r"error: The disk holding (\S+) has ([\d.,]+ [kMG]?B) free but app-2\.0 needs about ([\d.,]+ [kMG]?B); "
                   r"nothing was deployed and (\S+)/current still points to app-1\.0\.")


def test_a_record_total_above_the_free_space_is_refused_before_unpacking(tmp_path: Path) -> None:
    """app-2.0 holds 12 MiB of zeros (RECORD says so, truthfully): an 8 MiB tmpfs cannot take it; both say so first."""
    v1 = pack(make_tree(tmp_path / "t1", "1.0"), tmp_path / "in")
    members = members_of(make_tree(tmp_path / "t2", "2.0"))
    zeros = bytes(12 << 20)
    archive = write_tar(tmp_path / "in" / "app-2.0.tar.gz", with_record(members + [file_member("app-2.0/lib/zeros", zeros)],
                                                                     entry("lib/zeros", zeros)))
    seen: dict[str, tuple[int, str, str]] = {}
    for impl in ("shipenv", "deploy.sh"):
        disk = tmp_path / f"disk-{impl}"
        _tmpfs(disk, "8m")
        try:
            if impl == "shipenv":
                run_shipenv("deploy", v1, "--root", disk / "app")
                before = snapshot(disk)
                done = run_shipenv("deploy", archive, "--root", disk / "app", check=False)
                shown = str(disk / "app")
            else:
                binds = {tmp_path / "in": "/in", disk: "/srv", Path(__file__).resolve().parents[2] / "templates" / "deploy.sh": "/opt/deploy.sh"}
                with OverlayRoot("bookworm") as server:
                    assert server.run(["sh", "/opt/deploy.sh", "deploy", "/in/app-1.0.tar.gz", "/srv/app"], binds=binds).returncode == 0
                    before = snapshot(disk)
                    done = server.run(["sh", "/opt/deploy.sh", "deploy", "/in/app-2.0.tar.gz", "/srv/app"], binds=binds)
                shown = "/srv/app"
            after = snapshot(disk)
        finally:
            subprocess.run(["umount", str(disk)], check=True)
        assert "Traceback" not in done.stderr
        line = next((x for x in done.stderr.splitlines() if x.startswith("error: ")), done.stderr)
        match = SPACE.fullmatch(line)
        assert done.returncode == 5 and match, done.stderr
        assert match.group(1) == match.group(4) == shown
        seen[impl] = (done.returncode, match.group(2), match.group(3))
        assert after == before, f"{impl} wrote into the root although it was refused"
    # RECORD's 12.6 MB and more on both sides; shipenv counts less only by what it hard-links from app-1.0.
    need = {impl: float(got[2].split()[0]) for impl, got in seen.items()}
    assert 12.6 <= need["shipenv"] <= need["deploy.sh"] < 12.9, seen
