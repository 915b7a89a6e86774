"""Where a recipe comes from: a YAML file (with its bases), or `runs:/RUN_ID`, the recipe a logged run ran.

A run's `recipe.yaml` is the merged, resolved recipe, so re-running it needs nothing but the store it is in.
`-o` overrides apply on top of either. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import Recipe, UserError, recipe_to_dict, set_override, validate_recipe
from schemas.recipe import load_recipe
from schemas.training import Tracking

RUN_SCHEME = "runs:/"


def run_id_of(source: str | Path) -> str | None:
    """The run id of a `runs:/RUN_ID` source, None for a file (Path collapses `runs:/` to `runs:`)."""
    text = str(source)
    for prefix in (RUN_SCHEME, "runs:"):
        if text.startswith(prefix):
            run_id = text.removeprefix(prefix).strip("/")
            if not run_id or "/" in run_id:
                raise UserError(f"{text}: write a run as runs:/RUN_ID (the id `metassl runs` lists)")
            return run_id
    return None


@dataclass
class RecipeSource:
    """A resolved recipe, and the logged run it came from (None for a file)."""

    name: str
    recipe: Recipe
    run: Any = None
    client: Any = None


def load_source(source: str | Path, overrides: list[str] | None, tracking: Tracking) -> RecipeSource:
    """A recipe file, or a run's recipe from the store `tracking` names, with `overrides` applied."""
    run_id = run_id_of(source)
    if run_id is None:
        return RecipeSource(str(source), load_recipe(Path(source), overrides))
    from runner.tracking import quiet_libraries, recipe_of_run

    quiet_libraries()
    logged = recipe_of_run(run_id, tracking)
    name = f"{RUN_SCHEME}{run_id}"
    if not overrides:
        return RecipeSource(name, logged.recipe, logged.run, logged.client)
    document = recipe_to_dict(logged.recipe)
    for assignment in overrides:
        set_override(document, assignment)
    return RecipeSource(name, validate_recipe(document, name), logged.run, logged.client)
