"""A bundle over 1 GB, from the torch wheel (found through the indexes pip is configured with).

torch's own libraries are hundreds of MB and search only ``$ORIGIN``; the build
must not leave them unable to find libstdc++ in a root that has nothing but
glibc. How much memory the build takes is a figure, not an assertion: the
``big`` group of ``benchmarks/run.py`` reports the peak RSS of building,
packing and deploying a bundle like this one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.chroots import run_in_root
from tests.helpers import pyenv_python


def test_torch_bundle_builds_and_runs_with_only_glibc(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("torch==2.13.0\nnumpy\npandas\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shipenv", "build", "-r", str(req), "--python", str(pyenv_python("3.11")),
           "--name", "big", "--version", "1", "--format", "dir", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tree = out / "big-1"
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    assert size > 1_000_000_000, f"the torch bundle is only {size / 1e6:.0f} MB"
    meta = json.loads((tree / ".shipenv/manifest.json").read_text())
    assert any(d["name"] == "torch" for d in meta["distributions"])
    code = "import torch, pandas; x = torch.nn.Linear(3, 2)(torch.from_numpy(pandas.DataFrame({\"a\": [1.0] * 4, \"b\": 2.0, \"c\": 3.0}).to_numpy()).float()); print(tuple(x.shape))"
    run = run_in_root("glibc", ["/app/bin/python3.11", "-E", "-s", "-W", "ignore", "-c", code], binds={tree: "/app"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "(4, 2)"
