"""Recipes that compose (`base:`), and the expansion budget that keeps a shared recipe from hanging the reader."""

# ruff: noqa: E501 - one case per line reads best as a table
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from schemas import RecipeError, load_recipe, recipe_to_dict, validate_recipe
from schemas.pretrain import PretrainRecipe
from schemas.recipe import read_recipe_document
from tests.helpers import RECIPES, ROOT, metassl

DIGITS = (RECIPES / "digits_tiny.yaml").read_text()


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_base_merges_field_by_field(tmp_path: Path):
    write(tmp_path, "base.yaml", DIGITS)
    child = write(
        tmp_path,
        "child.yaml",
        "base: base.yaml\nname: child\noptim:\n  classifier: {lr: 0.1}\ndata: {classes: [0, 1, 2]}\n",
    )
    merged = recipe_to_dict(load_recipe(child))
    expected = recipe_to_dict(load_recipe(tmp_path / "base.yaml"))
    expected["name"] = "child"
    expected["optim"]["classifier"]["lr"] = 0.1  # the base's momentum, weight_decay... stay
    expected["data"]["classes"] = [0, 1, 2]
    assert merged == expected
    assert "base" not in merged


def test_a_chain_of_bases_in_other_folders(tmp_path: Path):
    write(tmp_path, "shared/root.yaml", DIGITS)
    write(tmp_path, "shared/middle.yaml", "base: root.yaml\nseed: 7\nschedule: {iterations: 40}\n")
    leaf = write(tmp_path, "leaf/leaf.yaml", "base: ../shared/middle.yaml\nname: leaf\nschedule: {eval_every: 20}\n")
    recipe = load_recipe(leaf)
    assert (recipe.name, recipe.seed, recipe.schedule.iterations, recipe.schedule.eval_every) == ("leaf", 7, 40, 20)
    assert recipe.schedule.log_every == 10  # from the root


def test_another_component_replaces_the_base_block(tmp_path: Path):
    write(tmp_path, "base.yaml", DIGITS.replace("  name: supervised\n", "  name: fixmatch\n  threshold: 0.8\n"))
    child = write(tmp_path, "child.yaml", "base: base.yaml\nmethod: {name: supervised}\n")
    assert recipe_to_dict(load_recipe(child))["method"] == {"name": "supervised"}
    same = write(tmp_path, "same.yaml", "base: base.yaml\nmethod: {name: fixmatch, lambda_u: 2}\n")
    method = load_recipe(same).method
    assert (method.threshold, method.lambda_u) == (0.8, 2)


def test_overrides_apply_after_the_bases(tmp_path: Path):
    write(tmp_path, "base.yaml", DIGITS)
    child = write(tmp_path, "child.yaml", "base: base.yaml\nseed: 3\n")
    assert load_recipe(child, ["seed=5", "optim.classifier.lr=0.2"]).seed == 5


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.yaml": "base: b.yaml\nname: a\n", "b.yaml": "base: a.yaml\nseed: 1\n"}, "{d}/b.yaml: base: a cycle of bases: {d}/a.yaml -> {d}/b.yaml -> {d}/a.yaml"),
        ({"a.yaml": "base: a.yaml\n"}, "{d}/a.yaml: base: a cycle of bases: {d}/a.yaml -> {d}/a.yaml"),
        ({"a.yaml": "base: nope.yaml\n"}, "{d}/a.yaml: base: no recipe file at {d}/nope.yaml (the path is relative to {d})"),
        ({"a.yaml": "base: [x.yaml]\n"}, "{d}/a.yaml: base: a recipe file to start from, relative to this file's folder (e.g. base: fashion_mnist_40labels.yaml), got ['x.yaml']"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "- 1\n"}, "{d}/b.yaml: a recipe is a YAML mapping of fields, got list"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "name: [x\n"}, "{d}/b.yaml: malformed YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
    ],
    ids=["cycle", "self", "missing", "not_a_path", "base_not_a_mapping", "base_malformed"],
)  # fmt: skip
def test_bad_bases_are_one_line(tmp_path: Path, files: dict[str, str], expected: str):
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(tmp_path / "a.yaml")
    assert str(caught.value) == expected.format(d=tmp_path)


def test_an_error_in_a_base_names_the_file_and_the_field(tmp_path: Path):
    base = write(tmp_path, "base.yaml", DIGITS.replace("lr: 0.05", "lr: -1"))
    child = write(tmp_path, "child.yaml", "base: base.yaml\nname: child\nseed: -2\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(child)
    assert str(caught.value) == (
        f"{child}: seed: Input should be greater than or equal to 0 (got -2); optim.classifier.lr (set in {base}):"
        " Input should be greater than 0 (got -1)"
    )
    with pytest.raises(RecipeError) as caught:  # an override is the user's own: no base to blame
        load_recipe(child, ["seed=0", "optim.classifier.lr=-3"])
    assert str(caught.value) == f"{child}: optim.classifier.lr: Input should be greater than 0 (got -3)"


def test_a_shared_block_in_a_base_is_not_changed_through_its_alias(tmp_path: Path):
    write(tmp_path, "base.yaml", "x-block: &shared {a: 1, b: 2}\nfirst: *shared\nsecond: *shared\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nfirst: {a: 9}\n")
    document = read_recipe_document(child)
    assert document["first"] == {"a": 9, "b": 2} and document["second"] == {"a": 1, "b": 2}


def test_show_prints_the_merged_recipe(tmp_path: Path):
    write(tmp_path, "base.yaml", DIGITS)
    child = write(tmp_path, "child.yaml", "base: base.yaml\nname: child\nschedule: {iterations: 20}\n")
    shown = metassl("show", str(child))
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout) == recipe_to_dict(load_recipe(child))


BILLION_LAUGHS = "".join(
    f"{level}: &{level} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, level in zip("abcdefgh", "bcdefghi", strict=True)
)
BILLION_LAUGHS = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BILLION_LAUGHS


@pytest.mark.parametrize(
    ("old", "new"),
    [("name: digits_tiny", "name: *i"), ("  labels_per_class: 4", "  labels_per_class: 4\n  classes: *i")],
    ids=["name", "data.classes"],
)
def test_a_billion_laughs_is_refused_at_once(tmp_path: Path, old: str, new: str):
    bomb = write(tmp_path, "bomb.yaml", BILLION_LAUGHS + DIGITS.replace(old, new))
    started = time.perf_counter()
    with pytest.raises(RecipeError) as caught:
        load_recipe(bomb)
    assert time.perf_counter() - started < 5  # it stopped before walking 9**9 values (hours), not a speed claim
    assert str(caught.value).startswith(f"{bomb}: more than 100,000 values after expanding aliases")


def test_the_budget_is_shared_by_a_chain_of_bases(tmp_path: Path):
    """Each file alone is within the budget (60,000 values); the chain is not."""
    block = "x-list: [" + ", ".join(["1"] * 60_000) + "]\n"
    write(tmp_path, "base.yaml", DIGITS + block.replace("x-list", "x-base"))
    child = write(tmp_path, "child.yaml", "base: base.yaml\n" + block)
    alone = write(tmp_path, "alone.yaml", DIGITS + block)
    with pytest.raises(RecipeError, match="unknown field"):
        load_recipe(alone)  # read whole: only its stray field is wrong
    with pytest.raises(RecipeError) as caught:
        load_recipe(child)
    assert str(caught.value).startswith(f"{tmp_path / 'base.yaml'}: more than 100,000 values after expanding aliases")


def test_aliases_and_self_reference_are_refused(tmp_path: Path):
    many = write(tmp_path, "many.yaml", DIGITS + "x-a: &a 1\nx-list: [" + ", ".join(["*a"] * 1001) + "]\n")
    with pytest.raises(RecipeError, match=r"more than 1,000 aliases"):
        load_recipe(many)
    endless = write(tmp_path, "endless.yaml", DIGITS + "x-loop: &loop [*loop]\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(endless)
    assert "an alias refers to a block that contains it" in str(caught.value)


def test_a_few_aliases_are_fine(tmp_path: Path):
    shared = write(
        tmp_path,
        "shared.yaml",
        DIGITS.replace("  lr_schedule: {name: cosine}\n", "  lr_schedule: &cosine {name: cosine}\n")
        + "x-again: *cosine\n",
    )
    with pytest.raises(RecipeError, match="x-again: unknown field"):
        load_recipe(shared)


BEFORE_BASES = ROOT / "tests" / "data" / "shipped_recipes_before_bases.json"


def test_every_shipped_recipe_resolves_as_before_its_rewrite_on_bases():
    """The shipped recipes were rewritten on bases; each must resolve to exactly what it resolved to before.

    The expectation is each file as it was written out in full (`git show main:recipes/...` parsed, at the commit
    before the rewrite), resolved with today's schema, so a new default changes both sides alike.
    """
    before = json.loads(BEFORE_BASES.read_text())
    shipped = sorted(str(path.relative_to(ROOT)) for path in RECIPES.rglob("*.yaml") if path.parent.name != "spaces")
    assert sorted(before) == shipped
    for name, document in before.items():
        if "method" not in document:  # a generator recipe (`metassl pretrain`)
            resolved = PretrainRecipe.model_validate(read_recipe_document(ROOT / name))
            assert resolved == PretrainRecipe.model_validate(document), name
            continue
        expected = recipe_to_dict(validate_recipe(document, f"{name} before"))
        assert recipe_to_dict(load_recipe(ROOT / name)) == expected, name
