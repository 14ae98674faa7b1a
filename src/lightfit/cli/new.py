"""`lightfit new NAME DEST`: copy this template as a new project (scripts/new_project.py does it).

The copy is made from the template's git checkout, the one this package is installed from
(`pip install -e .`, as `make install` does); an installed wheel has no checkout to copy:
then use copier (README, "Start a new project") or clone the template first.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from lightfit.errors import LightfitError, reported

PROG = "lightfit new"


def template_script() -> Path:
    """scripts/new_project.py of the checkout this package lives in (src/<package>/cli/new.py)."""
    script = Path(__file__).resolve().parents[3] / "scripts" / "new_project.py"
    if not script.is_file():
        raise LightfitError(
            f"no template checkout around {Path(__file__).parent}: install the template with "
            "`pip install -e .` from a clone of it, or start the project with copier"
        )
    return script


def main(argv: list[str] | None = None) -> None:
    with reported(PROG):
        script = template_script()
    sys.argv = [str(script), *(sys.argv[1:] if argv is None else argv)]
    runpy.run_path(str(script), run_name="__main__")
