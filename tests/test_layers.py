"""No module imports from a layer above it: pretraining and the shared helpers never reach up into a run."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def reaching_up(package: str, above: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in sorted((ROOT / "runner" / package).rglob("*.py")):
        up = sorted(m for m in imported_modules(path) if any(m == a or m.startswith(a + ".") for a in above))
        if up:
            found[str(path.relative_to(ROOT))] = up
    return found


def test_pretraining_reaches_the_helpers_it_shares_with_a_run_downward() -> None:
    assert reaching_up("pretraining", ("runner.run",)) == {}


def test_the_shared_helpers_import_neither_of_their_users() -> None:
    assert reaching_up("common", ("runner.run", "runner.pretraining", "runner.tracking", "runner.studies")) == {}
