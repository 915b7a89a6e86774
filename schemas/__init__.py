"""Pydantic models of a metassl recipe. Imports no torch, so validation is instant."""

from schemas.errors import RecipeError, UserError
from schemas.recipe import (
    COMPONENT_CONFIGS,
    Recipe,
    dump_recipe,
    load_recipe,
    recipe_model,
    recipe_to_dict,
    register_config,
    set_override,
    validate_block,
    validate_recipe,
)

__all__ = [
    "COMPONENT_CONFIGS",
    "Recipe",
    "RecipeError",
    "UserError",
    "dump_recipe",
    "load_recipe",
    "recipe_model",
    "recipe_to_dict",
    "register_config",
    "set_override",
    "validate_block",
    "validate_recipe",
]
