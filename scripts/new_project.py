"""Start a new project from this template: copy it, rename the package, start a fresh git history.

    python scripts/new_project.py my_project ../my-project
    make new-project NAME=my_project DEST=../my-project

Copies the files git tracks (or, outside a git checkout, every file except run outputs,
caches, checkpoints and .venv) and replaces the package name as a whole word in file
contents and paths, in three spellings:

    lightfit -> my_project      imports, _target_ paths, pkg://lightfit.conf, src/lightfit/,
                                the console script lightfit-train -> my_project-train
    Lightfit -> MyProject       class names: LightfitError -> MyProjectError
    LIGHTFIT -> MY_PROJECT      environment variables: LIGHTFIT_TRACEBACK -> MY_PROJECT_TRACEBACK

The name is used as it is, underscores included (`my_project-train`, `import my_project`);
only pip shows the distribution as `my-project`. Needs nothing but Python and, for the fresh
history, git.

copier runs this script too (`_tasks` in copier.yml), with `--copier copy` or `--copier update`:
it then writes the renamed files into copier's destination, the project itself or a scratch
copy that copier compares it with; `--title` and `--author` go into README.md and pyproject.toml.
"""

from __future__ import annotations

import argparse
import json
import keyword
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
OLD = "lightfit"  # the package name this copy of the template carries
PROG = "new_project"

COPIER_ANSWERS = ".copier-answers.yml"  # copier writes it into the destination before this script runs

# Never copied, even when tracked: run outputs, caches, build products, checkpoints, and the
# copier answers of a project made from this one (they describe that project, not a new one).
SKIP_PARTS = {".git", ".venv", "outputs", "multirun", "lightning_logs", "build", "dist", "__pycache__"}
SKIP_PARTS |= {".pytest_cache", ".ruff_cache", ".mypy_cache", ".ipynb_checkpoints", COPIER_ANSWERS}
SKIP_SUFFIXES = (".ckpt", ".pyc", ".egg-info")

# What the template imports or runs. The project's own name must not hide any of them;
# installed packages and the standard library are checked as well (see `refusal`).
DEPENDENCIES = {
    "torch", "lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities",
    "torchmetrics", "numpy", "hydra", "omegaconf", "yaml", "pytest", "ruff", "matplotlib",
    "setuptools", "pip", "pre_commit", "conftest",
}  # fmt: skip


class Refused(Exception):
    """A reason not to create the project; shown as one line."""


def spellings(name: str) -> tuple[str, str, str]:
    """`my_project` -> (`my_project`, `MyProject`, `MY_PROJECT`)."""
    camel = "".join(part[:1].upper() + part[1:] for part in name.split("_"))
    return name, camel if camel.isidentifier() else name.capitalize(), name.upper()


def word(text: str) -> re.Pattern[str]:
    """`text` as a whole word: no letter or digit before it, none after it either, except that
    a capital may follow a lowercase ending (LightfitError). `_`, `-`, `.` and `/` separate words,
    so LIGHTFIT_TRACEBACK, lightfit-train, lightfit.conf and src/lightfit all match."""
    after = "A-Za-z0-9" if text.isupper() else "a-z0-9"
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(text)}(?![{after}])")


def renamer(old: str, new: str):
    pairs = [(word(a), b) for a, b in zip(spellings(old), spellings(new), strict=True)]

    def rename(text: str) -> str:
        for pattern, replacement in pairs:
            text = pattern.sub(replacement, text)
        return text

    return rename


def template_files(root: Path) -> tuple[list[Path], int]:
    """Relative paths of the files to copy, and how many untracked files git leaves out.

    In a git checkout: the files git tracks (what a clone would have). Otherwise every file.
    Either way, nothing under SKIP_PARTS and no SKIP_SUFFIXES.
    """
    listed, untracked = None, 0
    if shutil.which("git") and (root / ".git").exists():
        out = subprocess.run(["git", "-C", root, "ls-files", "-z"], capture_output=True, text=True)
        if out.returncode == 0:
            listed = [Path(p) for p in out.stdout.split("\0") if p]
            others = ["git", "-C", root, "ls-files", "-z", "--others", "--exclude-standard"]
            untracked = subprocess.run(others, capture_output=True, text=True).stdout.count("\0")
    if listed is None:
        listed = [p.relative_to(root) for p in root.rglob("*")]
    files = sorted(
        p
        for p in listed
        if not SKIP_PARTS.intersection(p.parts)
        and not any(part.endswith(SKIP_SUFFIXES) for part in p.parts)
        and (root / p).is_file()  # a folder, or tracked but deleted in the working tree
    )
    return files, untracked


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # binary (digits.npz, a PNG): copied byte for byte


def refusal(name: str, dest: Path, files: list[Path], update: bool = False) -> str | None:
    """Why `name` or `dest` cannot be used, or None.

    `update`: DEST is the project (or copier's scratch copy of it) that was checked when it
    was created; the project may be installed by now, and its folder is not empty.
    """
    if not name.isidentifier() or not name.isascii():
        return f"'{name}' is not a valid Python package name (letters, digits, underscores; no leading digit)"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"'{name}' is a Python keyword"
    if name == OLD:
        return f"the template is already called '{OLD}'"
    if name in sys.stdlib_module_names:
        return f"'{name}' would shadow the standard library module of that name"
    if name in DEPENDENCIES or (not update and name in installed_modules()):
        return f"'{name}' would shadow the installed package '{name}'"
    # The new project is a template too (its own tests rename it again), so the name must not
    # already stand for something else in the code: `data` or `train` would be renamed along
    # with the package. Prose (*.md) and this script's help texts may mention anything.
    patterns = [word(s) for s in spellings(name)]
    for rel in files:
        prose = rel.suffix == ".md" or TEMPLATE / rel == Path(__file__).resolve()
        text = None if prose else read_text(TEMPLATE / rel)
        if text and any(p.search(text) for p in patterns):
            return f"'{name}' already occurs in the template ({rel}); pick a name of its own"
    occupied = dest.exists() and (not dest.is_dir() or any(p.name != COPIER_ANSWERS for p in dest.iterdir()))
    if occupied and not update:
        return f"destination {dest} exists and is not an empty folder"
    if dest.resolve().is_relative_to(TEMPLATE):
        return f"destination {dest} is inside the template; pick a folder outside it"
    return None


def installed_modules() -> set[str]:
    from importlib.metadata import packages_distributions

    return set(packages_distributions())


def copy_renamed(files: list[Path], name: str, staging: Path) -> None:
    rename = renamer(OLD, name)
    for rel in files:
        src, dst = TEMPLATE / rel, staging / rename(str(rel))
        dst.parent.mkdir(parents=True, exist_ok=True)
        text = read_text(src)
        if text is None:
            shutil.copyfile(src, dst)
        else:
            dst.write_text(rename(text), encoding="utf-8")
        shutil.copymode(src, dst)  # keeps .ci/run executable


def personalize(dest: Path, title: str | None, author: str | None) -> None:
    """The project's title as the README's heading, its author in pyproject.toml."""
    readme, pyproject = dest / "README.md", dest / "pyproject.toml"
    if title and readme.is_file():
        heading, _, rest = readme.read_text(encoding="utf-8").partition("\n")
        if heading.startswith("# "):
            readme.write_text(f"# {title}\n{rest}", encoding="utf-8")
    if author and pyproject.is_file():
        text = pyproject.read_text(encoding="utf-8")
        authors = f"authors = [{{ name = {json.dumps(author)} }}]"  # a JSON string is a TOML string
        pyproject.write_text(re.sub(r"^(license = .*)$", rf"\1\n{authors}", text, count=1, flags=re.M))


def inside_git_work_tree(path: Path) -> bool:
    if shutil.which("git") is None:
        return False
    out = subprocess.run(["git", "-C", path, "rev-parse", "--is-inside-work-tree"], capture_output=True)
    return out.stdout.strip() == b"true"


def git_init(dest: Path, name: str) -> str:
    """A fresh history with one commit; returns what happened, for the summary."""
    if shutil.which("git") is None:
        return "git not found: no history started"

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", dest, *args], capture_output=True, text=True)

    git("init", "-q")
    for key, value in (("user.name", f"{name} developers"), ("user.email", f"{name}@localhost")):
        if git("config", key).returncode != 0:  # nobody configured: set it in this repo only
            git("config", key, value)
    git("add", "-A")
    done = git("-c", "commit.gpgsign=false", "commit", "-q", "--no-verify", "-m", f"New project {name}")
    if done.returncode != 0:
        return f"git commit failed, commit by hand: {(done.stderr or done.stdout).strip()}"
    return "git: fresh history, one commit"


def checked_files(name: str, dest: Path, update: bool = False) -> tuple[list[Path], int]:
    """The template's files (and the count of untracked ones), once `name` and `dest` pass `refusal`."""
    files, untracked = template_files(TEMPLATE)
    reason = refusal(name, dest, files, update=update)
    if reason:
        raise Refused(reason)
    return files, untracked


def write_over(name: str, dest: Path, update: bool) -> tuple[list[Path], int]:
    """copier's destination: the renamed template written into it, replacing what is there.

    On `copier copy` DEST holds only copier's answers file; on `copier update` it is the
    project, or one of the scratch copies copier renders the old and the new template into
    and compares; copier then merges the project's own changes back (see README).
    """
    files, untracked = checked_files(name, dest, update)
    copy_renamed(files, name, dest)
    return files, untracked


def create(name: str, dest: Path) -> tuple[list[Path], int]:
    files, untracked = checked_files(name, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the destination, then move it in one step: a failure leaves nothing behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); a project folder is not
    try:
        copy_renamed(files, name, staging)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files, untracked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=f"Copy the {OLD} template into DEST as a new project with package NAME.",
        epilog=f"Example: python scripts/new_project.py my_project ../my-project  ({OLD} -> my_project, "
        f"{OLD}-train -> my_project-train, LIGHTFIT_* -> MY_PROJECT_*)",
    )
    parser.add_argument("name", nargs="?", help="the new package name, a Python identifier: my_project")
    parser.add_argument("dest", nargs="?", help="the new project folder (must not exist, or be empty)")
    parser.add_argument("--name", dest="name_opt", metavar="NAME", help="same as the first argument")
    parser.add_argument("--dest", dest="dest_opt", metavar="DEST", help="same as the second argument")
    parser.add_argument("--title", help="the project's name for people: the README's heading")
    parser.add_argument("--author", help="the author in pyproject.toml")
    parser.add_argument(
        "--copier", choices=("copy", "update"), help="run by copier (copier.yml): write into its destination"
    )
    args = parser.parse_args(argv)
    name, dest = args.name_opt or args.name, args.dest_opt or args.dest
    try:
        if not name or not dest:
            raise Refused("give a NAME and a DEST: new_project.py my_project ../my-project")
        dest_path = Path(dest).expanduser()
        if args.copier:
            files, untracked = write_over(name, dest_path, update=args.copier == "update")
        else:
            files, untracked = create(name, dest_path)
    except Refused as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    personalize(dest_path, args.title, args.author)
    if args.copier == "update":
        return 0  # copier says what it did
    if args.copier and inside_git_work_tree(dest_path):
        history = "inside a git repository: nothing committed"
    else:
        history = git_init(dest_path, name)
    dest_path = dest_path.resolve() if args.copier else dest_path  # copier gives "."
    if untracked:
        print(f"note: {untracked} untracked template file(s) not copied (git add them to copy them)")
    print(f"created {dest_path} from {OLD}: package {name}, {len(files)} files; {history}")
    print(f"next:\n  cd {dest_path}\n  make train    # installs into .venv on first use, then trains")
    print(f"  make test     # the test suite\n  edit src/{name}/nets.py and conf/ to make it yours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
