"""The one-way dependencies of DESIGN.md: al_core imports nothing from backend/ or exporters/,
nor the HTTP and Label Studio libraries; exporters/ never imports backend/. A walk over every
module's import statements, so a new arrow the wrong way fails here."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "al_core": {"backend", "exporters", "flask", "requests", "label_studio_sdk", "werkzeug"},
    "exporters": {"backend", "flask"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_goes_the_wrong_way(package):
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_walk_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from exporters.coco import write_coco\n    import flask.json\n")
    assert imported_roots(module) == {"exporters", "flask"}


def test_nothing_edits_sys_path():
    """The project is an installed package (pyproject.toml, `make setup`): bench/, scripts/ and
    tests import it and each other by name."""
    edits = [
        str(path.relative_to(ROOT))
        for folder in ("al_core", "backend", "exporters", "bench", "scripts", "tests")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "sys.path" in path.read_text() and path != Path(__file__)
    ]
    assert edits == []


def test_the_console_scripts_point_at_real_functions():
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"fdet-backend", "fdet-al", "fdet-connect"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))
