"""`metassl pretrain RECIPE`: a generator recipe, or a training recipe whose generator is a `local_gan` block."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from runner.pretraining.pretrain import pretrain_generator
from schemas.errors import RecipeError
from schemas.generators import LocalGAN
from schemas.pretrain import PretrainRecipe
from schemas.recipe import describe_errors, read_recipe_document, set_override, validate_recipe


def load_pretrain_recipe(recipe_path: Path, overrides: list[str]) -> PretrainRecipe:
    """A generator recipe, or a full training recipe whose generator is a `local_gan` block."""
    document = read_recipe_document(recipe_path)
    for assignment in overrides:
        set_override(document, assignment)
    if isinstance(document, dict) and ({"data", "classifier", "method"} & document.keys()):
        recipe = validate_recipe(document, str(recipe_path))
        if not isinstance(recipe.generator, LocalGAN):
            raise RecipeError(
                f"{recipe_path}: generator.name is '{recipe.generator.name}'; only 'local_gan' can be pretrained"
            )
        return PretrainRecipe(
            name=recipe.name, generator=recipe.generator, tracking=recipe.tracking, runtime=recipe.runtime
        )
    try:
        return PretrainRecipe.model_validate(document)
    except ValidationError as exc:
        raise RecipeError(describe_errors(exc, str(recipe_path))) from None


def pretrain_from_file(recipe_path: Path, overrides: list[str], force: bool = False) -> Path:
    recipe = load_pretrain_recipe(Path(recipe_path), overrides)
    return pretrain_generator(recipe.generator, tracking=recipe.tracking, runtime=recipe.runtime, force=force)
