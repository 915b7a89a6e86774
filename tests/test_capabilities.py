"""Capabilities are declared by a block's class, once, and the runner reads the declaration: a plugin's block that
declares one gets the treatment a built-in block gets (no probing of attributes)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, ClassVar, Literal

import pytest
import torch
from method_toys import TinyGenerator, ToyData, one_thread, tiny_classifier, toy_components

from runner.methods.base import Method, TrainContext
from runner.methods.latent_bank import initial_latents
from runner.registry import GENERATORS
from runner.run.build import check_source_disjoint
from runner.run.train_step import grad_scaler, train_step
from schemas import COMPONENT_CONFIGS, RecipeError, UserError, validate_recipe
from schemas import components as component_registry
from schemas.generators import GeneratorBase
from schemas.methods import LatentInit, MetaCadence, MethodBase
from schemas.training import Runtime, Tracking

PREPARED: list[Any] = []  # the plugin generator's preparer records its calls here


class PluginMethod(Method):
    """A method from a plugin: supervised loss, and a meta phase that only counts its calls."""

    def __init__(self, config: Any, ctx: TrainContext) -> None:
        super().__init__(config, ctx)
        self.meta_calls: list[tuple[int, int]] = []

    def meta_phase(self, iteration: int, steps: int) -> dict[str, Any]:
        self.meta_calls.append((iteration, steps))
        return {}


def build_plugin_method(config: Any, ctx: TrainContext) -> Method:
    return PluginMethod(config, ctx)


class PluginGenerator(TinyGenerator):
    """A generator from a plugin with the optional features: a source classifier and a source record."""

    source: ClassVar[dict[str, Any]] = {"dataset": "fashion_mnist", "source_fraction": 0.3}

    def source_logits(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :3] * 2.0


def build_plugin_generator(config: Any, *, class_names: list[str], device: torch.device) -> PluginGenerator:
    return PluginGenerator()


def prepare_plugin_generator(config: Any, *, tracking: Tracking, runtime: Runtime) -> None:
    PREPARED.append((config.name, tracking.experiment, runtime.device))


@pytest.fixture
def plugins() -> Iterator[SimpleNamespace]:
    """A method and a generator registered as a plugin registers them, then unregistered again."""
    before = {kind: dict(by_name) for kind, by_name in COMPONENT_CONFIGS.items()}

    class PluginMethodBlock(MethodBase, builder=f"{__name__}:build_plugin_method"):
        needs_generator: ClassVar[bool] = True
        has_meta_phase: ClassVar[bool] = True
        name: Literal["plugin_method"] = "plugin_method"
        meta: MetaCadence = MetaCadence()

    class PluginGeneratorBlock(GeneratorBase, builder=f"{__name__}:build_plugin_generator"):
        has_source_classifier: ClassVar[bool] = True
        preparer: ClassVar[str | None] = f"{__name__}:prepare_plugin_generator"
        name: Literal["plugin_generator"] = "plugin_generator"

    try:
        yield SimpleNamespace(method=PluginMethodBlock, generator=PluginGeneratorBlock)
    finally:
        for kind, by_name in before.items():
            COMPONENT_CONFIGS[kind].clear()
            COMPONENT_CONFIGS[kind].update(by_name)
        component_registry._registrations += 1  # the recipe model built over the plugins is stale now


def recipe_error(document: dict[str, Any]) -> str:
    with pytest.raises(RecipeError) as caught:
        validate_recipe(document)
    return str(caught.value)


BASE = {"name": "capabilities", "data": {"name": "digits"}, "classifier": {"name": "small_cnn"}}


def test_a_plugin_method_that_needs_a_generator_is_refused_without_one_as_a_builtin_is(plugins: Any) -> None:
    plugin = recipe_error({**BASE, "method": {"name": "plugin_method"}})
    builtin = recipe_error({**BASE, "method": {"name": "generative"}})
    assert plugin == builtin.replace("'generative'", "'plugin_method'")
    assert "generator.name: method 'plugin_method' needs a generator; set one of:" in plugin
    with_generator = {**BASE, "method": {"name": "plugin_method"}, "generator": {"name": "plugin_generator"}}
    assert validate_recipe(with_generator).method.needs_generator


def test_a_plugin_meta_phase_runs_on_its_own_cadence_in_the_shared_train_step(plugins: Any) -> None:
    method = {"name": "plugin_method", "meta": {"every": 2, "steps": 3}}
    with one_thread():
        components = toy_components(method, tiny_classifier(), ToyData(), TinyGenerator())
        scaler = grad_scaler(components)
        for iteration in range(5):
            train_step(components, iteration, scaler)
    assert isinstance(components.method, PluginMethod)
    assert components.method.meta_calls == [(0, 3), (2, 3), (4, 3)]
    # The recipe's cross-block rule on phase (i) holds for it as for the built-in method.
    too_rare = {**BASE, "method": {"name": "plugin_method", "meta": {"every": 5}}, "schedule": {"iterations": 4}}
    too_rare["generator"] = {"name": "plugin_generator"}
    assert "method.meta.every: 5 exceeds schedule.iterations (4)" in recipe_error(too_rare)


def test_a_meta_phase_without_a_meta_block_is_refused_at_class_definition(plugins: Any) -> None:
    with pytest.raises(TypeError, match="a method with a meta phase declares `meta: <a MetaCadence subclass>`"):

        class NoCadence(MethodBase):
            has_meta_phase: ClassVar[bool] = True


def test_a_plugin_generator_with_a_source_classifier_gets_pseudo_latents(plugins: Any) -> None:
    pseudo = {"name": "generative", "latents": {"bank_size": 6, "classes": "pseudo"}}
    assert validate_recipe({**BASE, "method": pseudo, "generator": {"name": "plugin_generator"}})
    assert "has none, use 'random' or 'uniform'" in recipe_error(
        {**BASE, "method": pseudo, "generator": {"name": "biggan"}}
    )
    images = ToyData().labeled_images()
    init = LatentInit(bank_size=6, classes="pseudo")
    latents = initial_latents(PluginGenerator(), init, seed=0, labeled_images=lambda: images)
    assert torch.equal(latents["condition"], PluginGenerator().source_logits(images)[torch.arange(6) % len(images)])
    with pytest.raises(UserError, match="'pseudo' needs a source classifier, and generator 'TinyGenerator' has none"):
        initial_latents(TinyGenerator(), init, seed=0, labeled_images=lambda: images)


def test_a_plugin_generator_source_record_is_checked_against_the_recipe(plugins: Any) -> None:
    recipe = validate_recipe(
        {
            **BASE,
            "data": {"name": "fashion_mnist", "source_fraction": 0.5},
            "method": {"name": "generative"},
            "generator": {"name": "plugin_generator"},
        }
    )
    with pytest.raises(UserError, match=r"source_fraction: 0\.5 differs from the 0\.3 generator 'plugin_generator'"):
        check_source_disjoint(recipe, PluginGenerator())
    check_source_disjoint(recipe, TinyGenerator())  # no record: nothing to check


def test_a_plugin_generator_preparer_is_the_step_a_run_takes_before_building(plugins: Any) -> None:
    PREPARED.clear()
    GENERATORS.prepare(plugins.generator(), tracking=Tracking(experiment="prep"), runtime=Runtime(device="cpu"))
    assert PREPARED == [("plugin_generator", "prep", "cpu")]
    GENERATORS.prepare(validate_recipe({**BASE, "method": {"name": "supervised"}}).generator)  # none declared
    assert len(PREPARED) == 1
