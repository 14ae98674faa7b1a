"""copier copy and copier update through the rename, end to end, with a scratch git repository
of this template: commit A, a project from it, edits in the project, commit B, copier update."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import require

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lightfit"  # renamed with everything else in a generated project
NAME = f"{PACKAGE}_copy"  # built, not written out: the template refuses names found in its code
IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost"}
ENV = {**os.environ, **IDENTITY, "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}

require("template")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed"),
]


def run(*args: str, cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args}: {proc.stderr[-3000:]}"
    return proc.stdout


def git(repo: Path, *args: str) -> str:
    return run("git", "-c", "commit.gpgsign=false", *args, cwd=repo)


def copier(*args: str, cwd: Path) -> str:
    return run(sys.executable, "-m", "copier", *args, "--trust", "--defaults", cwd=cwd)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} no longer has {old!r}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def template(tmp_path) -> Path:
    """This checkout's files (tracked, and new ones git does not ignore) as a fresh repository: commit A."""
    repo = tmp_path / "template"
    listed = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "A")
    return repo


def test_copy_makes_what_new_project_makes(template, tmp_path):
    data = ["--data", f"package_name={NAME}", "--data", "project_name=Copy Test", "--data", "author=Ada"]
    copier("copy", *data, str(template), "project", cwd=tmp_path)
    project = tmp_path / "project"
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert (
        answers["package_name"] == NAME
        and answers["_commit"] == git(template, "rev-parse", "--short", "HEAD").strip()
    )
    assert (
        git(project, "status", "--porcelain") == ""
        and len(git(project, "log", "--oneline").splitlines()) == 1
    )

    # The same files, byte for byte, as scripts/new_project.py run by hand with the same answers.
    script = template / "scripts" / "new_project.py"
    run(sys.executable, str(script), NAME, "by-hand", "--title", "Copy Test", "--author", "Ada", cwd=tmp_path)

    def files(root: Path) -> dict[str, bytes]:
        skip = (".git", ".copier-answers.yml")
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and not set(skip) & set(p.relative_to(root).parts)
        }

    assert files(project) == files(tmp_path / "by-hand")
    assert (project / "src" / NAME / "train.py").is_file() and not (project / "src" / PACKAGE).exists()
    assert (project / "README.md").read_text().startswith("# Copy Test\n")
    assert 'authors = [{ name = "Ada" }]' in (project / "pyproject.toml").read_text()


def test_update_brings_template_changes_and_keeps_edits(template, tmp_path):
    copier("copy", "--data", f"package_name={NAME}", str(template), "project", cwd=tmp_path)
    project = tmp_path / "project"
    # The project's own edits, committed (copier update wants a clean work tree).
    edit(project / "conf" / "train.yaml", "\nseed: 0 ", "\nseed: 7 ")
    edit(project / "conf" / "optimizer" / "adam.yaml", "lr=0.001 by default", "we use lr=0.01")
    with (project / "README.md").open("a") as f:
        f.write("\nOur own notes.\n")
    git(project, "commit", "-qam", "our edits")

    # Commit B in the template, under the template's own names.
    package = template / "src" / PACKAGE
    edit(package / "errors.py", '"""', f'"""{PACKAGE} B: ')
    (package / "extra.py").write_text(f'"""New in B, imports {PACKAGE}."""\n\nimport {PACKAGE}\n')
    train_yaml = template / "conf" / "train.yaml"
    train_yaml.write_text("# B\n" + train_yaml.read_text())  # far from the seed line
    edit(template / "conf" / "optimizer" / "adam.yaml", "lr=0.001 by default", "lr=0.001 unless set")
    (template / "conf" / "scheduler" / "step.yaml").unlink()
    git(template, "add", "-A")
    git(template, "commit", "-qm", "B")

    copier("update", cwd=project)
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["_commit"] == git(template, "rev-parse", "--short", "HEAD").strip()
    # B's changes arrive renamed; the project's edits stay; both edits of one file merge.
    assert (project / "src" / NAME / "errors.py").read_text().startswith(f'"""{NAME} B: ')
    assert (project / "src" / NAME / "extra.py").read_text().endswith(f"import {NAME}\n")
    assert (
        not (project / "src" / PACKAGE).exists()
        and not (project / "conf" / "scheduler" / "step.yaml").exists()
    )
    train = (project / "conf" / "train.yaml").read_text()
    assert train.startswith("# B\n# ") and "\nseed: 7 " in train
    assert (project / "README.md").read_text().endswith("\nOur own notes.\n")
    # The same line changed on both sides: marked the way copier marks it, and unmerged for git.
    adam = (project / "conf" / "optimizer" / "adam.yaml").read_text()
    assert (
        "<<<<<<< before updating\n# torch.optim.Adam, called with the parameters by the loop; we use lr=0.01"
        in adam
    )
    assert "lr=0.001 unless set.\n>>>>>>> after updating" in adam
    assert "UU conf/optimizer/adam.yaml" in git(project, "status", "--porcelain").splitlines()
