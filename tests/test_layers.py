"""The layers depend one way: ``bids_app`` uses ``pipeline``, never the reverse; imports are
absolute (``ichseg.…``), so a module reads the same wherever it is moved."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted([*ROOT.glob("ichseg/*.py"), *ROOT.glob("pipeline/**/*.py"), *ROOT.glob("bids_app/**/*.py")])


def _imports(path: Path) -> list[tuple[int, str, int]]:
    """(line, module, level) of every import statement, also those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_are_absolute_and_one_way(path):
    relative = [line for line, _, level in _imports(path) if level]
    assert not relative, f"{path.name}: relative imports on lines {relative}"
    if path.relative_to(ROOT).parts[0] == "pipeline":
        upward = [(line, module) for line, module, _ in _imports(path) if module.startswith("ichseg.bids_app")]
        assert not upward, f"{path.name} imports the app layer: {upward}"


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 5)]
    missing = [
        str(path.relative_to(ROOT))
        for folder in ("pipeline", "pipeline/interfaces", "pipeline/workflows", "bids_app")
        for path in sorted((ROOT / folder).glob("*.py"))
        if path.name != "__init__.py" and path.name not in layout
    ]
    assert not missing, f"README's Layout section does not name: {', '.join(missing)}"
