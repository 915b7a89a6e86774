"""Plan a sweep without running anything: the base recipe, the grid, and each child validated in-process."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.studies.sweep_grid import Assignment, Grid, as_overrides, child_key, expand, parse_grid, sweep_identity
from runner.tracking import FINAL_ACCURACY
from schemas import Recipe, UserError, set_override, validate_recipe
from schemas.recipe import read_recipe_document
from schemas.training import Tracking

SWEEP_TAG = "metassl.sweep.id"
CHILD_TAG = "metassl.sweep.child"
ROLE_TAG = "metassl.sweep.role"


@dataclass
class Child:
    """One point of the grid and what became of it."""

    index: int
    assignment: Assignment
    key: str
    recipe: Recipe | None
    status: str = (
        "PENDING"  # FINISHED | FAILED | SKIPPED (finished by an earlier invocation) | ELSEWHERE (another worker)
    )
    run_id: str | None = None
    accuracy: float | None = None
    seconds: float | None = None
    error: str | None = None
    log: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "overrides": self.key,
            "status": self.status,
            "run_id": self.run_id,
            FINAL_ACCURACY: self.accuracy,
            "seconds": self.seconds,
            "error": self.error,
        }


@dataclass
class SweepPlan:
    recipe_path: Path
    overrides: list[str]
    grid: Grid
    document: dict[str, Any]  # the recipe file with the -o overrides applied: with the grid, re-runnable as is
    identity: str
    name: str
    tracking: Tracking
    children: list[Child] = field(default_factory=list)

    def child_overrides(self, child: Child) -> list[str]:
        return [*self.overrides, *as_overrides(child.assignment)]

    def child_run_name(self, child: Child) -> str:
        base = self.document.get("tracking", {}).get("run_name") or self.document.get("name", "run")
        return f"{base} {child.key}"


def _apply(document: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    document = copy.deepcopy(document)
    for assignment in overrides:
        set_override(document, assignment)
    return document


def plan_sweep(recipe_path: Path, grid_options: list[str], overrides: list[str], name: str | None) -> SweepPlan:
    """Parse and expand the grid and validate every child; a UserError if the sweep as a whole cannot start."""
    grid = parse_grid(grid_options)
    if not grid:
        raise UserError("give at least one --grid key=v1,v2 (e.g. --grid seed=0,1,2)")
    override_keys = {o.partition("=")[0].strip() for o in overrides}
    for key in grid:
        if key.split(".")[0] == "tracking":
            raise UserError(f"--grid {key}: a sweep keeps all its children in one store; set tracking.* with -o")
        if key in override_keys:
            raise UserError(f"--grid {key}: also given with -o; give it in one place")
    document = _apply(read_recipe_document(recipe_path), overrides)
    children, errors = [], []
    for index, assignment in enumerate(expand(grid)):
        key = child_key(assignment)
        try:
            recipe = validate_recipe(_apply(document, as_overrides(assignment)), f"{recipe_path} with {key}")
            children.append(Child(index, assignment, key, recipe))
        except UserError as exc:
            children.append(Child(index, assignment, key, None, status="FAILED", error=str(exc)))
            errors.append(str(exc))
    valid = [child.recipe for child in children if child.recipe is not None]
    if not valid:
        raise UserError(f"no child of the sweep is a valid recipe: {errors[0]}")
    tracking = valid[0].tracking
    sweep_name = name or f"sweep {document.get('name', recipe_path.stem)}"
    identity = sweep_identity(json.loads(json.dumps(document, default=str)), grid)
    return SweepPlan(recipe_path, list(overrides), grid, document, identity, sweep_name, tracking, children)
