"""Pydantic models of a metassl recipe. Imports no torch, so validation is instant."""

from schemas.components import COMPONENT_CONFIGS, Component, load_plugins
from schemas.errors import RecipeError, UserError
from schemas.recipe import (
    Recipe,
    dump_recipe,
    load_recipe,
    recipe_model,
    recipe_to_dict,
    set_override,
    validate_block,
    validate_recipe,
)

__all__ = [
    "COMPONENT_CONFIGS",
    "Component",
    "Recipe",
    "RecipeError",
    "UserError",
    "dump_recipe",
    "load_plugins",
    "load_recipe",
    "recipe_model",
    "recipe_to_dict",
    "set_override",
    "validate_block",
    "validate_recipe",
]
