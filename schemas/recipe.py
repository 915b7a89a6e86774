"""The `Recipe` model and its loading from YAML."""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, ValidationError, create_model

from schemas.base import Block
from schemas.classifiers import ClassifierBase
from schemas.components import COMPONENT_CONFIGS, KIND_LABELS, load_plugins, registrations
from schemas.data import DataBase
from schemas.errors import RecipeError
from schemas.generators import GeneratorBase, NoGenerator
from schemas.methods import MethodBase
from schemas.training import Optim, Runtime, Schedule, Tracking


class Recipe(Block):
    """A whole experiment. Component blocks are discriminated unions keyed by `name`."""

    name: str = Field(description="a short name for the experiment; also the default MLflow run name")
    seed: int = 0
    data: DataBase
    generator: GeneratorBase = NoGenerator()
    classifier: ClassifierBase
    method: MethodBase
    schedule: Schedule = Schedule()
    optim: Optim = Optim()
    tracking: Tracking = Tracking()
    runtime: Runtime = Runtime()


def _union(models: list[type[Block]]) -> Any:
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="name")]  # noqa: UP007


def recipe_model() -> type[Recipe]:
    """The Recipe model over every registered component, plugins included (rebuilt when one registers)."""
    load_plugins()
    return _recipe_model(registrations())


@cache
def _recipe_model(_registrations: int) -> type[Recipe]:
    fields: dict[str, Any] = {}
    for kind, by_name in COMPONENT_CONFIGS.items():
        default = Recipe.model_fields[kind]
        fields[kind] = (_union(list(by_name.values())), default.default if not default.is_required() else ...)
    return create_model("Recipe", __base__=Recipe, **fields)


def _suggest(kind: str, name: object) -> str:
    known = sorted(COMPONENT_CONFIGS[kind])
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {KIND_LABELS[kind]} '{name}'; registered: {', '.join(known)}{hint}"


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    kind = loc[0] if loc else ""
    if error["type"] in ("union_tag_invalid", "union_tag_not_found") and kind in COMPONENT_CONFIGS:
        if error["type"] == "union_tag_not_found":
            return f"{kind}.name: missing; set one of: {', '.join(sorted(COMPONENT_CONFIGS[kind]))}"
        return f"{kind}.name: " + _suggest(kind, error["input"].get("name"))
    # Drop pydantic's union tag segment (`method.metassl.lambda_u` -> `method.lambda_u`).
    if len(loc) > 1 and kind in COMPONENT_CONFIGS and loc[1] in COMPONENT_CONFIGS[kind]:
        loc = [loc[0], *loc[2:]]
    path = ".".join(loc) or "recipe"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        parent = ".".join(loc[:-1]) or "the recipe"
        message = f"unknown field; remove it or check the spelling of the fields of {parent}"
    elif error["type"] == "missing":
        message = "missing required field"
    given = error.get("input")
    if error["type"] not in ("missing", "extra_forbidden") and not isinstance(given, dict | list):
        message += f" (got {given!r})"
    return f"{path}: {message}"


def validate_recipe(document: Any, source: str = "recipe") -> Recipe:
    """Validate a parsed recipe; raise RecipeError with one precise line per problem."""
    if not isinstance(document, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping of fields, got {type(document).__name__}")
    try:
        return recipe_model().model_validate(document)
    except ValidationError as exc:
        raise RecipeError(describe_errors(exc, source)) from None


def describe_errors(exc: ValidationError, source: str) -> str:
    """One line naming every invalid field of a recipe (or any other block) and what is wrong with it."""
    return f"{source}: " + "; ".join(dict.fromkeys(_describe(error) for error in exc.errors()))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{source}: malformed YAML{where}: {problem}") from None


def read_recipe_document(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise RecipeError(f"recipe file not found: {path} (check the path; recipes live in recipes/)")
    if path.is_dir():
        raise RecipeError(f"{path} is a directory; pass a recipe .yaml file")
    document = parse_yaml(path.read_text(), str(path))
    if document is None:
        raise RecipeError(f"{path}: the recipe is empty")
    return document


def set_override(document: dict[str, Any], assignment: str) -> None:
    """Apply one `key.path=value` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise RecipeError(f"override '{assignment}': write it as key.path=value (e.g. seed=1)")
    key, raw = assignment.split("=", 1)
    parts = [part for part in key.strip().split(".") if part]
    if not parts:
        raise RecipeError(f"override '{assignment}': the key is empty")
    value = parse_yaml(raw, f"override '{assignment}'")
    node = document
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise RecipeError(f"override '{assignment}': {where} is a value, not a block")
        node = child
    node[parts[-1]] = value


def load_recipe(path: Path, overrides: list[str] | None = None) -> Recipe:
    document = read_recipe_document(path)
    for assignment in overrides or []:
        set_override(document, assignment)
    return validate_recipe(document, str(path))


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe as plain YAML-able data (re-runnable as is), `name` first in each block."""
    document = recipe.model_dump(mode="json")
    for kind in COMPONENT_CONFIGS:
        block = document[kind]
        document[kind] = {"name": block.pop("name"), **block}
    return document


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
