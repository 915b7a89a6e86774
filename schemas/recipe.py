"""The `Recipe` model and its loading from YAML."""

from __future__ import annotations

import difflib
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from schemas.base import Block
from schemas.classifiers import ClassifierBase
from schemas.components import COMPONENT_CONFIGS, KIND_LABELS, load_plugins, registrations
from schemas.data import DataBase
from schemas.errors import RecipeError
from schemas.generators import GeneratorBase, LocalGAN, NoGenerator
from schemas.methods import MethodBase
from schemas.recipe_files import RecipeDocument, check_document, read_recipe_document
from schemas.training import NAME_MAX, Optim, Runtime, Schedule, Tracking, check_name
from schemas.yaml_budget import parse_yaml

FIELD_PATH = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z0-9_]+)+|name|seed")


class Recipe(Block):
    """A whole experiment. Component blocks are discriminated unions keyed by `name`."""

    name: str = Field(
        max_length=NAME_MAX, description="a short name for the experiment; also the default MLflow run name"
    )
    seed: int = Field(default=0, ge=0, le=2**64 - 1, description="0 to 2**64 - 1 (torch's seed range)")
    data: DataBase
    generator: GeneratorBase = NoGenerator()
    classifier: ClassifierBase
    method: MethodBase
    schedule: Schedule = Schedule()
    optim: Optim = Optim()
    tracking: Tracking = Tracking()
    runtime: Runtime = Runtime()

    @field_validator("name")
    @classmethod
    def _named(cls, name: str) -> str:
        return check_name(name)

    @model_validator(mode="after")
    def _blocks_fit_together(self) -> Recipe:
        """Rules across blocks, checked here so `metassl validate` catches them before any data loads."""
        method, generator, data = self.method, self.generator, self.data
        if method.needs_generator and isinstance(generator, NoGenerator):
            choices = ", ".join(sorted(set(COMPONENT_CONFIGS["generator"]) - {"none"}))
            raise ValueError(f"generator.name: method '{method.name}' needs a generator; set one of: {choices}")
        latents = method.latent_init()
        if latents is not None and latents.classes != "random" and not isinstance(generator, NoGenerator):
            if generator.conditioning != "class":
                raise ValueError(
                    f"method.latents.classes: '{latents.classes}' needs a class-conditional generator; generator"
                    f" '{generator.name}' is {generator.conditioning}-conditioned, use 'random'"
                )
            if latents.classes == "pseudo" and not generator.has_source_classifier:
                raise ValueError(
                    f"method.latents.classes: 'pseudo' needs a generator with a source classifier (local_gan);"
                    f" generator '{generator.name}' has none, use 'random' or 'uniform'"
                )
        if isinstance(generator, LocalGAN) and generator.pretrain is not None:
            pretrain, fraction = generator.pretrain, data.reserved_source_fraction()
            if pretrain.dataset == data.name and fraction is not None and pretrain.source_fraction != fraction:
                raise ValueError(
                    f"data.source_fraction: {fraction} differs from generator.pretrain.source_fraction"
                    f" {pretrain.source_fraction}, so labeled images could be in the generator's training set;"
                    " set them equal"
                )
        cadence, iterations = method.meta_cadence(), self.schedule.iterations
        if cadence is not None and cadence.every > iterations:
            raise ValueError(
                f"method.meta.every: {cadence.every} exceeds schedule.iterations ({iterations}),"
                " so phase (i) would run at most once; lower it"
            )
        return self

    def check_inputs(self) -> None:
        """Each component's cheap checks of what it names outside the recipe (folders, checkpoints)."""
        for block in (self.data, self.generator, self.classifier, self.method):
            block.check_inputs()


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
    if error["type"] == "value_error":  # our own validators: the message names its field when it is not `path`
        message = str(error["ctx"]["error"])
        head, colon, _ = message.partition(": ")
        return message if colon and FIELD_PATH.fullmatch(head) else f"{path}: {message}"
    if error["type"] == "extra_forbidden":
        parent = ".".join(loc[:-1]) or "the recipe"
        message = f"unknown field; remove it or check the spelling of the fields of {parent}"
    elif error["type"] == "missing":
        message = "missing required field"
    given = error.get("input")
    if error["type"] not in ("missing", "extra_forbidden") and not isinstance(given, dict | list):
        shown = repr(given)
        message += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
    return f"{path}: {message}"


MAX_PROBLEMS = 10  # listed per error; the rest are counted


def validate_recipe(document: Any, source: str = "recipe") -> Recipe:
    """Validate a parsed recipe; raise RecipeError with one precise line per problem."""
    check_document(document, source)
    try:
        return recipe_model().model_validate(document)
    except ValidationError as exc:
        raise RecipeError(describe_errors(exc, source, document)) from None


def _with_origin(line: str, source: str, document: Any) -> str:
    """`field: problem`, naming the base file the field came from when it is not `source` itself."""
    if not isinstance(document, RecipeDocument):
        return line
    field, colon, problem = line.partition(": ")
    origin = document.origin(field) if colon and FIELD_PATH.fullmatch(field) else None
    return line if origin is None or origin == source else f"{field} (set in {origin}): {problem}"


def describe_errors(exc: ValidationError, source: str, document: Any = None) -> str:
    """One line naming the invalid fields of a recipe (or any other block), at most MAX_PROBLEMS of them."""
    lines = list(dict.fromkeys(_with_origin(_describe(error), source, document) for error in exc.errors()))
    more = f"; and {len(lines) - MAX_PROBLEMS} more problems" if len(lines) > MAX_PROBLEMS else ""
    return f"{source}: " + "; ".join(lines[:MAX_PROBLEMS]) + more


def validate_block(model: type[Block], fields: dict[str, Any], kind: str, options: dict[str, str]) -> Any:
    """Validate one block built from command-line options; errors name the option (`--tracking-uri: ...`)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            described = _describe({**error, "loc": (kind, *error["loc"])})
            path, _, message = described.partition(": ")
            lines.append(f"{options.get(path.removeprefix(kind + '.'), path)}: {message}")
        raise RecipeError("; ".join(dict.fromkeys(lines))) from None


def set_override(document: dict[str, Any], assignment: str) -> None:
    """Apply one `key.path=value` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise RecipeError(f"override '{assignment}': write it as key.path=value (e.g. seed=1)")
    key, raw = assignment.split("=", 1)
    parts = [part for part in key.strip().split(".") if part]
    if not parts:
        raise RecipeError(f"override '{assignment}': the key is empty")
    value = parse_yaml(raw, f"override '{assignment}'")
    if isinstance(document, RecipeDocument):
        document.forget_origin(".".join(parts))
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
