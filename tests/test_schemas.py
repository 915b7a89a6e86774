"""Recipe validation: defaults, precise errors, overrides, JSON Schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from schemas import RecipeError, dump_recipe, load_recipe, recipe_model, set_override, validate_recipe

MINIMAL = {
    "name": "t",
    "data": {"name": "digits"},
    "classifier": {"name": "small_cnn"},
    "method": {"name": "supervised"},
}


def with_changes(**blocks: dict) -> dict:
    document = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for key, value in blocks.items():
        document[key] = {**document.get(key, {}), **value} if isinstance(value, dict) else value
    return document


def error_of(document: object) -> str:
    with pytest.raises(RecipeError) as caught:
        validate_recipe(document)
    return str(caught.value)


def test_defaults_are_filled_in():
    recipe = validate_recipe(MINIMAL)
    assert recipe.seed == 0
    assert recipe.data.labels_per_class == 4
    assert recipe.generator.name == "none"
    assert recipe.tracking.tracking_uri == "sqlite:///mlruns/mlflow.db"
    assert "meta" not in recipe.schedule.model_fields  # phase (i)'s cadence lives in method.meta


def test_unknown_component_name_lists_registered_and_suggests():
    message = error_of(with_changes(data={"name": "fashoin_mnist"}))
    assert "data.name: unknown dataset 'fashoin_mnist'" in message
    assert "registered:" in message and "digits" in message
    assert "did you mean 'fashion_mnist'?" in message


def test_wrong_type_names_the_field_and_value():
    message = error_of(with_changes(data={"name": "digits", "batch_size": "many"}))
    assert "data.batch_size" in message and "'many'" in message


def test_unknown_field_is_rejected_with_its_path():
    message = error_of(with_changes(method={"name": "fixmatch", "treshold": 0.9}))
    assert "method.treshold: unknown field" in message


def test_component_options_validate_per_component():
    message = error_of(with_changes(method={"name": "fixmatch", "threshold": 1.5}))
    assert "method.threshold" in message and "less than or equal to 1" in message
    # The same key is unknown on a component that does not have it.
    assert "method.threshold: unknown field" in error_of(with_changes(method={"name": "supervised", "threshold": 0.5}))


def test_missing_required_block():
    document = dict(MINIMAL)
    del document["classifier"]
    assert "classifier: missing required field" in error_of(document)


def test_label_budget_is_exclusive():
    recipe = validate_recipe(with_changes(data={"name": "digits", "total_labels": 25}))
    assert recipe.data.total_labels == 25 and recipe.data.labels_per_class is None
    assert "not both" in error_of(with_changes(data={"name": "digits", "total_labels": 25, "labels_per_class": 2}))


def test_warmup_cannot_exceed_iterations():
    assert "schedule.warmup" in error_of(with_changes(schedule={"iterations": 10, "warmup": 20}))


def test_not_a_mapping():
    assert "a recipe is a YAML mapping" in error_of(["a", "list"])


def test_resolved_recipe_round_trips(tmp_path: Path):
    recipe = validate_recipe(with_changes(seed=3))
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_recipe(recipe))
    again = load_recipe(path)
    assert again == recipe
    assert next(iter(yaml.safe_load(path.read_text())["data"])) == "name"


def test_overrides_parse_yaml_values():
    document = yaml.safe_load(yaml.safe_dump(MINIMAL))
    set_override(document, "schedule.iterations=7")
    set_override(document, "optim.ema.enabled=true")
    set_override(document, "data.labels_per_class=2")
    recipe = validate_recipe(document)
    assert recipe.schedule.iterations == 7 and recipe.optim.ema.enabled is True and recipe.data.labels_per_class == 2


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [("seed", "key.path=value"), ("=3", "key is empty"), ("name.x=1", "is a value, not a block")],
)
def test_bad_overrides(assignment: str, expected: str):
    document = yaml.safe_load(yaml.safe_dump(MINIMAL))
    with pytest.raises(RecipeError, match=expected):
        set_override(document, assignment)


def test_malformed_yaml_reports_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {name: digits\nclassifier: 3\n")
    with pytest.raises(RecipeError, match=r"malformed YAML at line \d+"):
        load_recipe(path)


def test_json_schema_has_discriminated_components():
    schema = recipe_model().model_json_schema()
    method = schema["properties"]["method"]
    assert method["discriminator"]["propertyName"] == "name"
    assert set(method["discriminator"]["mapping"]) >= {"supervised", "fixmatch", "generative", "metassl"}


def test_every_shipped_recipe_validates():
    root = Path(__file__).resolve().parents[1] / "recipes"
    recipes = sorted(root.rglob("*.yaml"))
    assert recipes, "no recipes shipped"
    for path in recipes:
        if path.parent.name in ("generators", "spaces"):
            continue  # generator recipes and tuning spaces have their own schemas (metassl pretrain, metassl tune)
        load_recipe(path)
