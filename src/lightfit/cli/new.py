"""`lightfit new NAME DEST`: a new project from lightfit's template, rendered by copier.

The same project as `copier copy --trust <lightfit> DEST` with the package name NAME, made
from the source this lightfit was installed from, which pip records (PEP 610,
`direct_url.json`): a git URL and commit (`pip install "lightfit @ git+<url>@<commit>"`) or
a local checkout (`pip install -e .`, at its HEAD commit). The project depends on lightfit
at that commit. copier is the `template` extra; the other answers are copier's questions
(`--defaults` takes their defaults, `--data key=value` answers one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from lightfit.errors import LightfitError, reported

PROG = "lightfit new"


def installed_source() -> tuple[str, str]:
    """(copier's template source, the commit) of the lightfit that runs this."""
    record = metadata.distribution("lightfit").read_text("direct_url.json")
    if record is None:  # from an index or a wheel file: no repository to copy
        raise LightfitError(
            "lightfit was not installed from its repository: copier copy --trust <lightfit's git URL> DEST"
        )
    origin = json.loads(record)
    if "vcs_info" in origin:  # pip install "lightfit @ git+<url>@<commit>"
        return f"git+{origin['url']}", origin["vcs_info"]["commit_id"]
    path = Path(unquote(urlparse(origin["url"]).path))
    if not (path / "copier.yml").is_file():
        raise LightfitError(f"{path} has no copier.yml: lightfit was not installed from its repository")
    git = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if git.returncode != 0:
        raise LightfitError(f"{path} is not a git checkout: the project pins lightfit to a commit")
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain"], capture_output=True, text=True)
    commit = git.stdout.strip()
    if dirty.stdout.strip():
        print(f"{PROG}: {path} has uncommitted changes; the project is made from commit {commit[:10]}")
    return str(path), commit


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the package name (a Python identifier), also the project's command")
    parser.add_argument("dest", help="the new project's folder")
    parser.add_argument("--defaults", action="store_true", help="take every other question's default")
    parser.add_argument(
        "--data", action="append", default=[], metavar="KEY=VALUE", help="answer a question (repeatable)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    with reported(PROG):
        try:
            import copier
            import copier.errors
        except ImportError:
            raise LightfitError("copier is not installed: pip install 'lightfit[template]'") from None
        dest = Path(args.dest)
        if dest.exists() and any(dest.iterdir()):
            raise LightfitError(f"{dest} is not empty: give a new folder")
        answers = dict(item.split("=", 1) for item in args.data if "=" in item)
        answers["package_name"] = args.name
        src, commit = installed_source()
        try:
            copier.run_copy(src, dest, data=answers, vcs_ref=commit, defaults=args.defaults, unsafe=True)
        except copier.errors.InteractiveSessionError:  # stdin is not a terminal: copier cannot ask
            raise LightfitError(
                "copier asks its questions on a terminal, and stdin is not one: add --defaults "
                "(make new-project ... ARGS=--defaults), or answer each with --data key=value"
            ) from None
        except (copier.errors.CopierError, ValueError) as exc:  # an answer its validator refused
            raise LightfitError(str(exc).strip().splitlines()[-1]) from None
