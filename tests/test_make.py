"""`make clean` in a copy of the Makefile: outputs and caches go, .venv and the code stay."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_clean_removes_outputs_and_caches_but_keeps_venv(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path)
    gone = ["outputs/2026-01-01/12-00-00/metrics.csv", "multirun/x/0/results.json", ".pytest_cache/v"]
    gone += [
        ".ruff_cache/v",
        "src/pkg/__pycache__/a.pyc",
        "tests/__pycache__/b.pyc",
        "src/pkg.egg-info/PKG-INFO",
    ]
    kept = [".venv/lib/site/__pycache__/c.pyc", ".venv/bin/python", "src/pkg/a.py", "conf/train.yaml"]
    for path in gone + kept:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    proc = subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [p for p in gone if (tmp_path / p).exists()] == []
    assert [p for p in kept if not (tmp_path / p).exists()] == []
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "src/pkg/__pycache__").exists()
    again = subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr  # nothing left to remove is not an error
