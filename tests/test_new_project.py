"""scripts/new_project.py: a renamed copy of the template that installs, composes and trains."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # copies and installs a project: `make test-all`
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lightfit"  # renamed with everything else in a generated project
NAME = f"{PACKAGE}_copy"  # built, not written out: the script refuses names found in the code


def camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def git(repo: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, env=env)


def new_project(*args: str, script: Path = ROOT / "scripts" / "new_project.py", env=None):
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("new") / "my-project"
    proc = new_project(NAME, str(dest))
    assert proc.returncode == 0, proc.stderr
    assert f"cd {dest}" in proc.stdout and "make train" in proc.stdout
    return dest


def text_files(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_file() and ".git" not in path.parts:
            try:
                yield path, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue


def test_every_spelling_of_the_package_is_renamed(project):
    assert (project / "src" / NAME / "train.py").is_file()
    assert (project / "conf" / "hydra" / "job_logging" / f"{NAME}.yaml").is_file()
    paths = [str(p.relative_to(project)).replace(NAME, " ") for p in project.rglob("*")]
    assert not [p for p in paths if PACKAGE in re.split(r"[/._ -]", p) and ".git" not in p]
    leftovers = []
    for path, text in text_files(project):
        for spelling in (NAME, camel(NAME), NAME.upper()):
            text = text.replace(spelling, " ")
        for token in re.split(r"[^A-Za-z0-9]+", text):  # lightfit, LIGHTFIT_X, lightfit-train, LightfitX
            if token.lower() == PACKAGE or re.match(rf"{camel(PACKAGE)}[A-Z0-9]", token):
                leftovers.append(f"{path.relative_to(project)}: {token}")
    assert not leftovers
    pyproject = (project / "pyproject.toml").read_text()
    assert f'name = "{NAME}"' in pyproject and f'{NAME} = "{NAME}.cli:main"' in pyproject
    assert f'{NAME}-train = "{NAME}.cli.train:main"' in pyproject
    assert f'"{NAME}.conf" = "conf"' in pyproject
    assert f'config_module: str = "{NAME}.conf"' in (project / "src" / NAME / "cli" / "train.py").read_text()
    errors = (project / "src" / NAME / "errors.py").read_text()
    assert f"class {camel(NAME)}Error" in errors and f"{NAME.upper()}_TRACEBACK" in errors
    assert (project / "README.md").read_text().startswith(f"# {NAME}\n")
    digits = Path("src", NAME, "data", "digits.npz")  # binary: copied byte for byte
    assert (project / digits).read_bytes() == (ROOT / "src" / PACKAGE / "data" / "digits.npz").read_bytes()
    assert os.access(project / ".ci" / "run", os.X_OK)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_fresh_history_with_one_commit_and_nothing_left_out(project):
    assert git(project, "log", "--format=%s").stdout.splitlines() == [f"New project {NAME}"]
    assert git(project, "status", "--porcelain").stdout == ""


def test_generated_project_installs_composes_and_trains(project, tmp_path):
    # A throwaway --target install: the configs reach the package as `<name>.conf` only through
    # pyproject's package-dir mapping, and this environment's own install stays as it is.
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    installed = subprocess.run(
        [*pip, "--no-compile", "--target", site, project], capture_output=True, text=True, timeout=120
    )
    assert installed.returncode == 0, installed.stderr
    assert (site / NAME / "conf" / "train.yaml").is_file() and (site / "bin" / f"{NAME}-train").is_file()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=240
        )

    # The generated project's own config tests, then one short training run from its command line.
    tests = run("-m", "pytest", "-p", "no:cacheprovider", "tests/test_config.py")
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert re.search(r"\b\d+ passed\b", tests.stdout) and "failed" not in tests.stdout
    train = run("-m", f"{NAME}.train", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert train.returncode == 0, train.stderr[-3000:]
    assert "epoch 2/2" in train.stdout
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test/acc"] > 0.5


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_outside_git_the_tree_is_walked_without_outputs_and_a_git_user_is_set(project, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(project, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info"))
    for junk in ("outputs/2026-01-01/run/checkpoints/best.ckpt", ".venv/bin/python", "src/__pycache__/x.pyc"):
        (source / junk).parent.mkdir(parents=True, exist_ok=True)
        (source / junk).write_text("junk")
    # No git user anywhere: the script must set one in the new repository to commit.
    nobody = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(tmp_path),
    }
    dest, script = tmp_path / "again", source / "scripts" / "new_project.py"
    proc = new_project(f"{PACKAGE}_again", str(dest), script=script, env=nobody)
    assert proc.returncode == 0, proc.stderr
    assert not (dest / "outputs").exists() and not (dest / ".venv").exists()
    assert not list(dest.rglob("__pycache__"))
    assert (dest / "src" / f"{PACKAGE}_again" / "nets" / "models.py").is_file()
    assert git(dest, "config", "--local", "user.name").stdout.strip()
    assert len(git(dest, "log", "--oneline", env=nobody).stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("my-project", "not a valid Python package name"),
        ("class", "keyword"),
        ("json", "standard library"),
        ("torch", "installed package 'torch'"),
        ("data", "already occurs in the template"),
        (PACKAGE, "already called"),
    ],
)
def test_bad_names_are_refused_in_one_line(name, message, tmp_path):
    proc = new_project(name, str(tmp_path / "dest"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr
    assert not (tmp_path / "dest").exists() and list(tmp_path.iterdir()) == []


def test_a_non_empty_destination_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = new_project(f"{PACKAGE}_copy", "--dest", str(tmp_path))  # the option form
    assert proc.returncode == 2 and "not an empty folder" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
