"""`metassl diff A B`: why two results differ. The recipe fields that differ and, for runs, their final metrics
side by side and what differs in the machine and packages they ran on (`environment/` artifacts)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from runner.recipe_source import RecipeSource, load_source
from runner.tracking import download_artifact, flatten
from schemas import recipe_to_dict
from schemas.training import Tracking

ENVIRONMENT_ARTIFACT = "environment/environment.json"
PACKAGES_ARTIFACT = "environment/pip_freeze.txt"
RESULT_METRICS = ("final/", "test/", "val/")  # what a run ended at, not its last training step
PER_CLASS = "class_accuracy"  # ten rows more; the overall figure says whether they differ
MISSING = "-"
WIDTH = 36  # characters of a value shown


def _shown(value: Any) -> str:
    text = MISSING if value is None else json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= WIDTH else text[: WIDTH - 3] + "..."


def _table(rows: list[tuple[str, Any, Any]]) -> list[str]:
    key_width = max(len(key) for key, _, _ in rows)
    return [f"  {key:<{key_width}}  {_shown(a):<{WIDTH}}  {_shown(b)}" for key, a, b in rows]


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = list(dict.fromkeys([*a, *b]))
    return [(key, a.get(key), b.get(key)) for key in keys if a.get(key) != b.get(key)]


def _section(title: str, rows: list[tuple[str, Any, Any]], what: str) -> list[str]:
    if not rows:
        return [f"{title}: the same"]
    counted = f"1 {what} differs" if len(rows) == 1 else f"{len(rows)} {what}s differ"
    return [f"{title}: {counted}", *_table(rows)]


def _artifact_text(source: RecipeSource, artifact: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="metassl-diff-") as tmp:
        path = download_artifact(source.client, source.run.info.run_id, artifact, Path(tmp))
        return None if path is None else path.read_text()


def _environment(source: RecipeSource) -> dict[str, Any]:
    """A run's environment, flattened, with its installed packages as `package.NAME`; empty for a recipe file."""
    if source.run is None:
        return {}
    text = _artifact_text(source, ENVIRONMENT_ARTIFACT)
    described = flatten(json.loads(text)) if text else {}
    for line in (_artifact_text(source, PACKAGES_ARTIFACT) or "").splitlines():
        name, _, version = line.partition("==")
        described[f"package.{name}"] = version
    return described


def _results(source: RecipeSource) -> dict[str, float]:
    if source.run is None:
        return {}
    metrics = source.run.data.metrics
    return {key: metrics[key] for key in sorted(metrics) if key.startswith(RESULT_METRICS) and PER_CLASS not in key}


def describe_run(source: RecipeSource) -> str:
    if source.run is None:
        return source.name
    return f"{source.name} ({source.run.info.run_name}, {source.run.info.status})"


def diff(a: str, b: str, tracking: Tracking) -> str:
    """The report of `metassl diff A B`; runs are looked up in the store `tracking` names."""
    left, right = load_source(a, None, tracking), load_source(b, None, tracking)
    lines = [f"A: {describe_run(left)}", f"B: {describe_run(right)}"]
    recipe_rows = _differing(flatten(recipe_to_dict(left.recipe)), flatten(recipe_to_dict(right.recipe)))
    lines += _section("recipe", recipe_rows, "field")
    if left.run is not None or right.run is not None:
        results_a, results_b = _results(left), _results(right)
        keys = list(dict.fromkeys([*results_a, *results_b]))
        rows = [(key, results_a.get(key), results_b.get(key)) for key in keys]
        lines += ["results:", *_table(rows)] if rows else ["results: none logged"]
    if left.run is not None and right.run is not None:
        lines += _section("environment", _differing(_environment(left), _environment(right)), "field")
    return "\n".join(lines)
