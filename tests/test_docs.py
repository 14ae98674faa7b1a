"""docs/loops.md: every python block runs, every excerpt still matches its source file."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "loops.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE, re.S)
EXCERPTS = re.findall(r"<!-- from (\S+) -->\n```text\n(.*?)```", GUIDE, re.S)


def test_the_guide_has_blocks_and_excerpts():
    assert len(PYTHON_BLOCKS) >= 9 and len(EXCERPTS) == 4


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_block_runs(block):
    if "import keras" in block and importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed (pip install keras)")
    exec(compile(block, "docs/loops.md", "exec"), {"__name__": "__guide__"})


@pytest.mark.parametrize(("path", "excerpt"), EXCERPTS, ids=[p for p, _ in EXCERPTS])
def test_excerpt_matches_source(path, excerpt):
    assert excerpt in (ROOT / path).read_text(), f"docs/loops.md quotes {path}, which has changed"
