"""``inspect`` and ``verify`` on small bundles made here, through the API and the real CLI.

What a user would notice: ``verify`` passing a bundle whose files changed, or
failing one that is fine; an error that does not say which file; a
traceback instead of a sentence for a cut-off download; ``inspect`` reading a
whole archive to show its name; ``--run`` leaving copies behind in /tmp.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

from shipenv.bundle import archive, manifest, reader, verify
from shipenv.bundle.manifest import RecordEntry
from shipenv.bundle.verify import Seen
from shipenv.errors import ArchiveError, RefusedArchive, VerifyError
from shipenv.model import ElfInfo
from tests.helpers import SHIPENV, entry, file_member, link_member, members_of, pyenv_python, with_record, write_tar

EPOCH = 1_600_000_000
METADATA: dict[str, Any] = {
    "name": "demo",
    "version": "1.0",
    "python": {"implementation": "cpython", "version": "3.12.1", "abi": "cp312", "executable": "bin/python3.12",
               "soabi": "cpython-312-x86_64-linux-gnu", "site_packages": "lib/python3.12/site-packages"},
    "platform": {"arch": "x86_64", "glibc_floor": "2.35", "tag": "manylinux_2_35_x86_64"},
    "distributions": [{"name": "six", "version": "1.16.0", "source": "requirements"}],
    "vendored_libraries": ["libz.so.1"],
    "build": {"shipenv_version": "0.1.0", "source_date_epoch": EPOCH, "time": "2020-09-13T12:26:40Z"},
}


def make_bundle(base: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A bundle-shaped tree named demo-1.0 with a real manifest and RECORD."""
    root = base / "demo-1.0"
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "pkg").mkdir(parents=True)
    (root / "bin" / "hello").write_text('#!/bin/sh\necho "hello from $(pwd)"\n')
    os.chmod(root / "bin" / "hello", 0o755)
    os.symlink("hello", root / "bin" / "hi")
    (root / "lib" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "lib" / "pkg" / "data.bin").write_bytes(os.urandom(200_000))
    (root / "lib" / "cgi.py").write_text("#! /usr/local/bin/python\n")  # as in the stdlib: not run by path
    os.chmod(root / "lib" / "cgi.py", 0o755)
    for rel, data in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest.write(root, manifest.Manifest.from_dict(METADATA))
    return root


def pack(root: Path, dest: Path, fmt: str = "tar.zst") -> Path:
    return archive.write(root, dest, fmt, level=None, threads=2, mtime=EPOCH, arcname=root.name).path


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHIPENV, *map(str, args)], capture_output=True, text=True, check=False)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "src")


# -- inspect -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tar.zst", "tar.gz", "tar.xz", "dir"])
def test_inspect_shows_the_manifest_size_and_archive(bundle: Path, tmp_path: Path, fmt: str) -> None:
    path = bundle if fmt == "dir" else pack(bundle, tmp_path / f"demo-1.0.{fmt}", fmt)
    info = verify.inspect(path).as_dict()
    record = manifest.parse_record((bundle / ".shipenv" / "RECORD").read_bytes())
    for key, value in METADATA.items():
        assert info[key] == value
    assert info["files"] == len(record) == 8
    assert info["size"] == sum(e.size or 0 for e in record.values())
    if fmt == "dir":
        assert info["archive"] is None
    else:
        assert info["archive"] == {"format": fmt, "size": path.stat().st_size, "sha256": manifest.hash_file(path)[0]}


def test_inspect_reads_only_the_front_of_an_archive(bundle: Path, tmp_path: Path) -> None:
    """A .tar.gz cut in half still inspects (the manifest is in the first kilobytes); verify refuses it."""
    (bundle / "lib" / "big.bin").write_bytes(os.urandom(3_000_000))
    manifest.write(bundle, manifest.Manifest.from_dict(METADATA))
    data = pack(bundle, tmp_path / "a.tar.gz", "tar.gz").read_bytes()
    half = tmp_path / "half.tar.gz"
    half.write_bytes(data[: len(data) // 2])
    assert verify.inspect(half).manifest.name == "demo"
    with pytest.raises(ArchiveError, match="is truncated"):
        verify.verify(half)


# -- verify: what matches ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tar.zst", "tar.gz", "tar.xz", "tar", "dir"])
def test_an_intact_bundle_verifies(bundle: Path, tmp_path: Path, fmt: str) -> None:
    path = bundle if fmt == "dir" else pack(bundle, tmp_path / f"demo-1.0.{fmt}", fmt)
    calls: list[tuple[int, int]] = []
    report = verify.verify(path, progress=lambda f, b: calls.append((f, b)))
    assert report == verify.VerifyReport("demo-1.0", 8)
    assert calls[-1][0] == 8  # every file and symlink
    assert calls == sorted(calls)


def test_compare_names_each_kind_of_difference() -> None:
    record = {
        "a": RecordEntry("a", "11", 1),
        "b": RecordEntry("b", "22", 2),
        "link": RecordEntry("link", symlink="a"),
        "gone": RecordEntry("gone", "33", 3),
        ".shipenv/RECORD": RecordEntry(".shipenv/RECORD"),
    }
    seen = {
        "a": Seen("file", "11", 1),
        "b": Seen("file", "22", 3),  # same digest, other size: changed
        "link": Seen("symlink", target="b"),
        "new": Seen("file", "44", 4),
        ".shipenv/RECORD": Seen("file", "55", 5),
    }
    assert verify.compare(record, seen) == verify.Mismatch(missing=("gone",), changed=("b", "link"), extra=("new",))
    fixed = {**seen, "b": Seen("file", "22", 2), "link": Seen("symlink", target="a"), "gone": Seen("file", "33", 3)}
    del fixed["new"]
    assert not verify.compare(record, fixed)
    assert verify.compare(record, {**fixed, "a": Seen("symlink", target="x")}).changed == ("a",)


def _tamper(root: Path) -> None:
    data = bytearray((root / "lib" / "pkg" / "data.bin").read_bytes())
    data[1000] ^= 1
    (root / "lib" / "pkg" / "data.bin").write_bytes(bytes(data))
    (root / "lib" / "pkg" / "__init__.py").unlink()
    (root / "lib" / "pkg" / "added.py").write_text("x = 1\n")
    (root / "bin" / "hi").unlink()
    os.symlink("../lib/pkg/added.py", root / "bin" / "hi")


def test_verify_names_changed_missing_and_extra_files_in_a_tree(bundle: Path) -> None:
    _tamper(bundle)
    with pytest.raises(VerifyError) as info:
        verify.verify(bundle)
    assert str(info.value) == (
        f"{bundle} does not match its manifest: 2 changed (bin/hi, lib/pkg/data.bin), "
        "1 missing (lib/pkg/__init__.py), 1 extra (lib/pkg/added.py)."
    )


def test_verify_names_changed_missing_and_extra_members_of_an_archive(bundle: Path, tmp_path: Path) -> None:
    _tamper(bundle)  # RECORD still describes the original files
    path = pack(bundle, tmp_path / "demo-1.0.tar.zst")
    with pytest.raises(VerifyError, match=r"2 changed \(bin/hi, lib/pkg/data.bin\), 1 missing \(lib/pkg/__init__.py\), 1 extra \(lib/pkg/added.py\)"):
        verify.verify(path)


def test_many_problems_are_listed_with_a_count(bundle: Path) -> None:
    for i in range(8):
        (bundle / f"stray-{i}.txt").write_text("x")
    with pytest.raises(VerifyError, match=r"8 extra \(stray-0.txt, stray-1.txt, stray-2.txt, stray-3.txt, stray-4.txt \(\+ 3 more\)\)"):
        verify.verify(bundle)


def test_top_directory_must_match_the_manifest(bundle: Path, tmp_path: Path) -> None:
    path = archive.write(bundle, tmp_path / "x.tar.zst", "tar.zst", level=None, threads=1, mtime=EPOCH, arcname="other-2.0").path
    with pytest.raises(VerifyError, match=r"would be refused by shipenv deploy: its top directory other-2.0/ does not match the manifest's demo-1.0"):
        verify.verify(path)


def test_verify_reports_every_problem_of_one_archive_in_one_message(bundle: Path, tmp_path: Path) -> None:
    """Collect mode: the reader's rules are deploy's, but verify goes on and names them all at once."""
    members = []
    for info, data in members_of(bundle):
        if info.name == "demo-1.0/lib/pkg/__init__.py":
            data = b"VALUE = 2\n"  # same size, other bytes
        elif info.name == "demo-1.0/lib/pkg/data.bin":
            data = bytes(300_000)  # larger than RECORD says
            info.size = len(data)
        elif info.name == "demo-1.0/bin/hi":
            continue  # missing
        members.append((info, data))
    device = tarfile.TarInfo("demo-1.0/lib/null")
    device.type = tarfile.CHRTYPE
    members += [file_member("demo-1.0/lib/added.py", b"x = 1\n"), file_member("demo-1.0/bin/rootme", b"id\n", 0o4755),
                (device, None), file_member("demo-1.0/../escaped", b"x\n")]
    path = write_tar(tmp_path / "demo-1.0.tar.gz", members)
    with pytest.raises(VerifyError) as info:
        verify.verify(path)
    assert str(info.value) == (
        f"{path} does not match its manifest: 2 changed (lib/pkg/__init__.py, lib/pkg/data.bin), 1 missing (bin/hi), "
        "2 extra (bin/rootme, lib/added.py); and it would be refused by shipenv deploy: "
        "'demo-1.0/bin/rootme' has the setuid or setgid bit set (mode 4755), "
        "entry 'demo-1.0/lib/null' is a character device; a bundle holds only files, directories and symlinks, "
        "entry 'demo-1.0/../escaped' climbs out of its directory with '..'."
    )


# -- verify: the relocation audit ----------------------------------------------------------------


def test_audit_rules() -> None:
    info = ElfInfo("x86_64", 64, None, ("libc.so.6", "/opt/x/libz.so"), ("$ORIGIN/../lib",), ("/opt/buildhost/.pyenv/lib",), (), True)
    assert verify.elf_findings("lib/a.so", info) == ["lib/a.so (RUNPATH /opt/buildhost/.pyenv/lib)", "lib/a.so (NEEDED /opt/x/libz.so)"]
    assert verify.shebang_finding("bin/tool", 0o755, b"#!/opt/buildhost/.pyenv/versions/3.12.1/bin/python3.12\nimport x") == "bin/tool (#!/opt/buildhost/.pyenv/versions/3.12.1/bin/python3.12)"
    assert verify.shebang_finding("bin/tool", 0o755, b"#!/bin/sh\n") is None
    assert verify.shebang_finding("bin/tool", 0o755, b"#! /usr/bin/env python3\n") is None
    assert verify.shebang_finding("bin/tool", 0o644, b"#!/opt/python\n") is None  # not executable
    assert verify.shebang_finding("lib/python3.12/cgi.py", 0o755, b"#! /usr/local/bin/python\n") is None
    assert verify.symlink_finding("bin/python", "python3.12") is None
    assert verify.symlink_finding("lib/x", "../bin/python") is None
    assert verify.symlink_finding("lib/x", "../../etc/passwd") == "lib/x (-> ../../etc/passwd)"
    assert verify.symlink_finding("lib/x", "/etc/passwd") == "lib/x (-> /etc/passwd)"


@pytest.mark.parametrize("fmt", ["dir", "tar.gz"])
def test_verify_finds_host_paths_that_would_run(tmp_path: Path, fmt: str) -> None:
    host_elf = pyenv_python("3.12").resolve().read_bytes()  # RUNPATH is pyenv's absolute lib/
    root = make_bundle(tmp_path / "src", {
        "bin/python3.12": host_elf,
        "bin/tool": b"#!/opt/buildhost/.pyenv/versions/3.12.1/bin/python3.12\nprint(1)\n",
    })
    os.chmod(root / "bin" / "tool", 0o755)
    os.symlink("/etc/ssl/certs", root / "lib" / "certs")
    manifest.write(root, manifest.Manifest.from_dict(METADATA))
    path = root if fmt == "dir" else pack(root, tmp_path / "demo-1.0.tar.gz", "tar.gz")
    with pytest.raises(VerifyError) as info:
        verify.verify(path)
    message = str(info.value)
    assert "depends on paths outside itself" in message
    assert f"bin/python3.12 (RUNPATH {pyenv_python('3.12').resolve().parents[1]}" in message
    assert "bin/tool (#!/opt/buildhost/.pyenv/versions/3.12.1/bin/python3.12)" in message
    assert "lib/certs (-> /etc/ssl/certs)" in message
    assert "cgi.py" not in message and "does not match" not in message


# -- verify --run ----------------------------------------------------------------------------------


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tempfile puts things during the test, to check that --run cleans up."""
    where = tmp_path / "tmpdir"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


@pytest.mark.parametrize("fmt", ["dir", "tar.zst"])
def test_run_works_in_a_moved_copy_under_a_path_with_a_space(bundle: Path, tmp_path: Path, private_tmp: Path, fmt: str) -> None:
    path = bundle if fmt == "dir" else pack(bundle, tmp_path / "demo-1.0.tar.zst")
    check = f'case "$(pwd)" in *" "*/demo-1.0) ;; *) exit 9;; esac; [ "$(pwd)" != "{bundle}" ] && bin/hello && test -x bin/hi'
    assert verify.verify(path, run=check).files == 8
    assert list(private_tmp.iterdir()) == []


def test_run_failure_shows_the_output_tail_and_cleans_up(bundle: Path, tmp_path: Path, private_tmp: Path) -> None:
    path = pack(bundle, tmp_path / "demo-1.0.tar.gz", "tar.gz")
    with pytest.raises(VerifyError) as info:
        verify.verify(path, run="for i in $(seq 1 40); do echo line-$i >&2; done; exit 3")
    message = str(info.value)
    assert "exited with status 3 in a copy of demo-1.0 moved to" in message
    assert "line-40" in message and "line-21" in message and "line-20" not in message
    assert list(private_tmp.iterdir()) == []


def test_run_is_not_reached_when_files_do_not_match(bundle: Path, private_tmp: Path) -> None:
    (bundle / "lib" / "pkg" / "__init__.py").write_text("VALUE = 2\n")
    with pytest.raises(VerifyError, match="does not match its manifest"):
        verify.verify(bundle, run="touch /tmp/should-not-run-shipenv")
    assert not Path("/tmp/should-not-run-shipenv").exists()


# -- what a user can get wrong, through the real CLI -----------------------------------------------


def _assert_one_sentence(proc: subprocess.CompletedProcess[str], sentence: str, code: int = 1) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: ") and sentence in first, proc.stderr
    assert first.endswith("."), first


@pytest.mark.parametrize("fmt", ["tar.zst", "tar.gz", "tar.xz"])
def test_cli_truncated_archive(bundle: Path, tmp_path: Path, fmt: str) -> None:
    data = pack(bundle, tmp_path / f"demo-1.0.{fmt}", fmt).read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    _assert_one_sentence(cli("verify", cut), f"{cut} is truncated")
    if fmt != "tar.gz":  # gzip has no footer to check without reading it all (see _codecs)
        _assert_one_sentence(cli("inspect", cut), f"{cut} is truncated")


def test_cli_file_that_is_not_an_archive(tmp_path: Path) -> None:
    notes = tmp_path / "notes.tar.zst"
    notes.write_text("just text\n")
    for command in ("inspect", "verify"):
        _assert_one_sentence(cli(command, notes), f"{notes} is not a bundle archive")


def test_cli_archive_without_manifest(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "x").write_text("x")
    path = archive.write(tree, tmp_path / "plain.tar.gz", "tar.gz", level=None, threads=1, mtime=EPOCH, arcname="plain-1").path
    for command in ("inspect", "verify"):
        _assert_one_sentence(cli(command, path), f"{path} is not a shipenv bundle: it holds no NAME-VERSION/.shipenv/manifest.json")


def test_cli_directory_without_manifest(tmp_path: Path) -> None:
    for command in ("inspect", "verify"):
        _assert_one_sentence(cli(command, tmp_path), f"{tmp_path} is not a shipenv bundle: it has no .shipenv/manifest.json")


def test_cli_missing_path(tmp_path: Path) -> None:
    for command in ("inspect", "verify"):
        _assert_one_sentence(cli(command, tmp_path / "nope.tar.zst"), f"{tmp_path / 'nope.tar.zst'} does not exist", code=2)


def test_cli_verify_and_inspect_json(bundle: Path, tmp_path: Path) -> None:
    path = pack(bundle, tmp_path / "demo-1.0.tar.zst")
    done = cli("verify", path)
    assert done.returncode == 0 and done.stdout.strip() == "OK: 8 files match the manifest of demo-1.0"
    info = json.loads(cli("inspect", "--json", path).stdout)
    assert info["archive"]["sha256"] == manifest.hash_file(path)[0]
    text = cli("inspect", path).stdout
    assert "glibc >= 2.35" in text and "six==1.16.0" in text and "tar.zst" in text
    shutil.rmtree(bundle / "lib" / "pkg")
    failed = cli("verify", bundle)
    _assert_one_sentence(failed, "does not match its manifest: 2 missing (lib/pkg/__init__.py, lib/pkg/data.bin)")


def _with(members: list[Any], *extra: Any, record: tuple[RecordEntry, ...] = ()) -> list[Any]:
    return with_record(members + list(extra), *record)


def _hostile(name: str, members: list[Any]) -> list[Any]:
    """One thing wrong with an otherwise intact demo-1.0 archive."""
    device = tarfile.TarInfo("demo-1.0/lib/null")
    device.type = tarfile.CHRTYPE
    here, _ = link_member("demo-1.0/here", ".")
    up, _ = link_member("demo-1.0/up", "here/..")
    cases = {
        "dotdot": lambda: members + [file_member("demo-1.0/../x", b"x\n")],
        "absolute": lambda: members + [file_member("/tmp/x", b"x\n")],
        "outside-top": lambda: members + [file_member("other-1.0/x", b"x\n")],
        "device": lambda: members + [(device, None)],
        "setuid": lambda: _with(members, file_member("demo-1.0/bin/s", b"id\n", 0o4755), record=(entry("bin/s", b"id\n"),)),
        "through-symlink": lambda: _with(members, link_member("demo-1.0/lib/l", "pkg"), file_member("demo-1.0/lib/l/x", b"x\n"),
                                         record=(RecordEntry("lib/l", symlink="pkg"), entry("lib/l/x", b"x\n"))),
        "chain-escape": lambda: _with(members, (here, None), (up, None),
                                      record=(RecordEntry("here", symlink="."), RecordEntry("up", symlink="here/.."))),
        "hard-link-out": lambda: _with(members, link_member("demo-1.0/lib/pw", "/etc/passwd", tarfile.LNKTYPE),
                                       record=(entry("lib/pw", Path("/etc/passwd").read_bytes()),)),
        "size": lambda: _with(members, file_member("demo-1.0/lib/big", bytes(4096)), record=(entry("lib/big", b"\0"),)),
        "missing": lambda: _with(members, record=(entry("lib/ghost", b"boo\n"),)),
        "twice": lambda: members + [members[-1]],
    }
    return cases[name]()


@pytest.mark.parametrize("case", ["dotdot", "absolute", "outside-top", "device", "setuid", "through-symlink", "chain-escape",
                                  "hard-link-out", "size", "missing", "twice"])
def test_what_deploy_refuses_verify_reports(bundle: Path, tmp_path: Path, case: str) -> None:
    """One reader, two modes: every archive the strict mode refuses, collect mode (verify) reports; an intact one passes both."""
    intact = write_tar(tmp_path / "intact.tar.gz", members_of(bundle))
    with reader.open_bundle(intact) as strict:
        assert sum(1 for _ in strict.members()) == 13  # 8 files and symlinks, 5 directories
    assert verify.verify(intact).files == 8
    path = write_tar(tmp_path / "demo-1.0.tar.gz", _hostile(case, members_of(bundle)))
    with pytest.raises(RefusedArchive, match=r"^Refused demo-1.0.tar.gz: .*; nothing was deployed\.$"), reader.open_bundle(path) as strict:
        for _ in strict.members():
            pass
    with pytest.raises(VerifyError, match=r"does not match its manifest|would be refused by shipenv deploy"):
        verify.verify(path)
