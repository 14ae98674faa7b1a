"""The docs (docs/*.md and README.md): every python block runs, every excerpt still matches its
source, the commands in them name real subcommands, make targets and config options, and the
site builds with `mkdocs build --strict`."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import needs, require

from lightfit.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), README]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
EXCERPT = re.compile(r"<!-- from (\S+) -->\n```text\n(.*?)```", re.S)
MAX_README_LINES = 250  # a front page; the rest belongs in docs/


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(*languages: str) -> list[tuple[str, str]]:
    """(page:n, code) for each fenced block in one of `languages`, n counting from 1 per page."""
    found = []
    for page in PAGES:
        ours = [code for lang, code in FENCE.findall(page.read_text()) if lang in languages]
        found += [(f"{name(page)}:{n}", code) for n, code in enumerate(ours, 1)]
    return found


PYTHON = blocks("python")
EXCERPTS = [(f"{name(p)}:{path}", path, text) for p in PAGES for path, text in EXCERPT.findall(p.read_text())]
# Every line of a bash block, and the `$ command` lines of output blocks.
COMMAND_LINES = [(where, line) for where, code in blocks("bash") for line in code.splitlines()]
COMMAND_LINES += [
    (where, line) for where, code in blocks("text") for line in code.splitlines() if line.startswith("$ ")
]
MAKE_TARGETS = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
# Options the pages create as examples (conf/data/mine.yaml, conf/model/linear.yaml), that a
# plugin brings (submitit_local, from the slurm extra), or that an error example gets wrong.
EXAMPLE_OPTIONS = {"data=mine", "model=linear", "hydra/launcher=submitit_local", "model=transformer"}


def test_the_pages_have_blocks_and_excerpts():
    # If the patterns broke, the parametrized tests below would silently have nothing to run.
    assert len(PYTHON) >= 15 and len(EXCERPTS) >= 4 and len(COMMAND_LINES) >= 50


def test_the_readme_is_a_front_page():
    text = README.read_text()
    assert text.startswith("# lightfit\n")
    assert len(text.splitlines()) <= MAX_README_LINES, "move the details into a page under docs/"
    assert "make test" in text  # CI and newcomers look for the test command here


def exported_digits_model(folder: Path) -> None:
    import numpy
    from conftest import cli

    from lightfit.data import load_split

    for args, command in (
        (["trainer.max_epochs=1", "logger=none", f"hydra.run.dir={folder / 'run'}"], "lightfit train"),
        (
            [f"ckpt_path={folder / 'run/checkpoints/best.ckpt'}", f"output={folder / 'best.onnx'}"],
            "lightfit export",
        ),
    ):
        proc = cli(*args, module=command)
        assert proc.returncode == 0, proc.stderr
    numpy.save(folder / "x_test.npy", load_split(folder / "run")["test"][0])


def trains(code: str) -> bool:
    """A block that starts a training run of its own (a subprocess): `make test-all` only."""
    return "subprocess" in code and '"train"' in code


@pytest.mark.parametrize(
    ("where", "code"),
    [pytest.param(w, c, marks=[pytest.mark.slow] if trains(c) else []) for w, c in PYTHON],
    ids=[w for w, _ in PYTHON],
)
def test_python_block_runs(where, code, tmp_path, monkeypatch):
    if "import keras" in code:
        require("bench")
    if "data=table" in code:
        require("table")
    if "from PIL" in code:
        require("images")
    if "from sklearn" in code and importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn is not installed (pip install scikit-learn): a baseline in the docs only")
    monkeypatch.chdir(tmp_path)  # blocks that save arrays write them here
    if "onnxruntime" in code:  # docs/use-a-model.md: best.onnx and x_test.npy, as the page makes them
        require("export")
        exported_digits_model(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize(("where", "path", "excerpt"), EXCERPTS, ids=[w for w, _, _ in EXCERPTS])
def test_excerpt_matches_source(where, path, excerpt):
    assert excerpt in (ROOT / path).read_text(), f"{where} quotes {path}, which has changed"


@pytest.mark.parametrize(("where", "code"), blocks("yaml"), ids=[w for w, _ in blocks("yaml")])
def test_yaml_block_parses(where, code):
    assert isinstance(yaml.safe_load(code), dict)


def test_commands_name_real_subcommands_targets_and_options():
    wrong = []
    for where, line in COMMAND_LINES:
        line = line.split(" # ")[0].removeprefix("$ ")
        for sub in re.findall(r"(?:^|[\s/])lightfit (\w[\w-]*)", line):
            if sub not in COMMANDS:
                wrong.append(f"{where}: lightfit {sub}")
        for target in re.findall(r"(?:^|\s)make ([a-z][\w-]*)", line):
            if target not in MAKE_TARGETS:
                wrong.append(f"{where}: make {target}")
        for group, values in re.findall(r"(?:^|\s)([a-z_/]+)=([\w,]+)(?=\s|$)", line):
            if not (ROOT / "conf" / group).is_dir():
                continue  # a value (seed=1), not a config group
            for value in values.split(","):
                option = f"{group}={value}"
                if option not in EXAMPLE_OPTIONS and not (ROOT / "conf" / group / f"{value}.yaml").is_file():
                    wrong.append(f"{where}: {option}")
    assert not wrong


def test_every_page_is_in_the_nav_and_every_readme_link_resolves():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(node) -> set[str]:
        if isinstance(node, str):
            return {node}
        items = node.values() if isinstance(node, dict) else node
        return set().union(*(pages(item) for item in items))

    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages(config["nav"]) == on_disk
    links = re.findall(r"\]\(([^)#\s]+)[^)]*\)", README.read_text())
    assert links and not [link for link in links if "://" not in link and not (ROOT / link).exists()]


@needs("docs")
def test_the_site_builds_without_warnings(tmp_path):
    build = ["build", "--strict", "-f", ROOT / "mkdocs.yml", "-d", tmp_path / "site"]
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", *build],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,  # mkdocs.yml's paths (docs/, src/) are relative to it
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr
    assert (tmp_path / "site" / "api" / "keras-style" / "index.html").is_file()
