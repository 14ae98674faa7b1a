"""The package layout is the architecture: imports go downward only, no cycles, small units."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lightfit"
# Entry points, then loops and the Keras-style API, then tasks, data, nets and the run's
# machinery, then errors. A module may import its own layer or those below it.
LAYERS = {"cli": 0, "train": 0, "trained": 0, "__main__": 0, "api": 1, "loops": 1}
LAYERS |= {"tasks": 2, "data": 2, "nets": 2, "run": 2, "contract": 2, "errors": 3}
MAX_LINES, MAX_FUNCTION = 300, 60
WHY_LONG = "# long:"  # a comment on a function's first line that says why it is longer


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def part(path: Path) -> str:
    """The folder (or top-level module) a file belongs to: cli, loops, ..., errors."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    """lightfit folders this file imports from, at the top and inside functions alike."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module + ("." + node.names[0].name if node.module == "lightfit" else "")]
        found |= {n.split(".")[1] for n in names if n.startswith("lightfit.") and len(n.split(".")) > 1}
    return found


def test_every_folder_has_a_layer_and_says_what_lives_there():
    assert {part(p) for p in modules()} <= set(LAYERS)
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), (
            f"{folder.name}/__init__.py must say what lives there and what it imports"
        )


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downward(path):
    own = LAYERS[part(path)]
    upward = {name for name in imported_parts(path) if LAYERS[name] < own}
    assert not upward, f"{path.relative_to(PACKAGE)} imports from a layer above it: {sorted(upward)}"


def test_no_cycles_between_folders():
    graph = {name: set() for name in LAYERS}
    for path in modules():
        graph[part(path)] |= imported_parts(path) - {part(path)}

    def visit(node: str, trail: tuple[str, ...]) -> None:
        assert node not in trail, f"import cycle: {' -> '.join((*trail, node))}"
        for nxt in graph[node]:
            visit(nxt, (*trail, node))

    for name in graph:
        visit(name, ())


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_are_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.name} has more than {MAX_LINES} lines"
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            first = lines[node.lineno - 1]
            assert length <= MAX_FUNCTION or WHY_LONG in first, f"{path.name}: {node.name} has {length} lines"
