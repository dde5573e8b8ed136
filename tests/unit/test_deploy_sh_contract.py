"""What ``templates/deploy.sh`` shares with the Python side, checked against one table.

deploy.sh stays a plain POSIX sh file (shellcheck reads it, tests and users run it
straight from the repository, and the root-side and archive-side halves can be
edited without a template language), so instead of rendering the constants into
it at build time, this table names each constant once, from the Python module
that owns it, and checks that deploy.sh spells it the same way. The refusal
sentences themselves are held to the same words by the hostile-archive table,
which runs every row against both implementations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shipenv.bundle import manifest
from shipenv.deploy import layout, lock

SCRIPT = (Path(__file__).resolve().parents[2] / "templates" / "deploy.sh").read_text()
SAMPLE = manifest.Manifest("app", "2.0", manifest.ManifestPython("3.12.1"), manifest.ManifestPlatform("x86_64", "2.36"))

#: (what, the Python side's value, how deploy.sh must spell it)
CONTRACT = [
    ("manifest file", manifest.MANIFEST.as_posix(), '"$top/.shipenv/manifest.json"'),
    ("RECORD file", manifest.RECORD.as_posix(), '"$work/$top/.shipenv/RECORD"'),
    ("facts file", manifest.FACTS.as_posix(), '_file="$work/$top/.shipenv/facts"'),
    ("releases directory", layout.RELEASES, '"$root/releases"'),
    ("current symlink", layout.CURRENT, '"$root/current"'),
    ("history file", layout.HISTORY, '_hist="$root/history.jsonl"'),
    ("lock file", lock.LOCK_NAME, '"$root/.shipenv.lock"'),
    ("deploy leftovers", layout.TMP_PREFIX, '"$root"/.deploy-*'),
    ("prune leftovers", layout.TRASH_PREFIX, '"$root"/.prune-*'),
    ("switch leftovers", layout.LINK_PREFIX, '"$root"/.current.new.*'),
]


@pytest.mark.parametrize(("what", "value", "spelled"), CONTRACT, ids=[c[0] for c in CONTRACT])
def test_deploy_sh_spells_each_shared_name_as_python_does(what: str, value: str, spelled: str) -> None:
    assert value.lstrip(".") in spelled or value.split("/")[-1] in spelled, (what, value, spelled)
    assert spelled in SCRIPT, f"deploy.sh no longer says {spelled} for the {what} ({value})"


def test_every_fact_deploy_sh_reads_is_written_by_the_build() -> None:
    read = set(re.findall(r"\$\(fact ([a-z_]+) ", SCRIPT))
    assert read == {"name", "version", "arch", "glibc_floor", "libc", "glibc", "kernel_floor"}
    assert read <= SAMPLE.facts().keys()
    assert b"glibc_floor=2.36\n" in manifest.render_facts(SAMPLE)


def test_history_lines_are_the_same_json_on_both_sides() -> None:
    # deploy.sh's printf must produce what json.dumps(sort_keys=True) makes of the same entry,
    # signed (trust set: key and signer) or not.
    line = '{"action": "%s", "from": %s, %s"time": "%s", "to": "%s"}'
    assert f"printf '{line}\\n'" in SCRIPT
    assert '_signed="\\"key\\": \\"$4\\", \\"signer\\": \\"$5\\", "' in SCRIPT
    when = "2026-12-01T00:00:00Z"
    plain = {"action": "deploy", "from": "app-1.0", "time": when, "to": "app-2.0"}
    assert line % ("deploy", '"app-1.0"', "", when, "app-2.0") == json.dumps(plain, sort_keys=True)
    signed = dict(plain, key="SHA256:abc", signer="ci@example.com")
    assert line % ("deploy", '"app-1.0"', '"key": "SHA256:abc", "signer": "ci@example.com", ', when, "app-2.0") == json.dumps(signed, sort_keys=True)
