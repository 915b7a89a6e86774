"""One registration per component: the config class names its builder, and a plugin registers the same way."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.registry import REGISTRIES, resolve_builder
from schemas import COMPONENT_CONFIGS, Component
from tests.helpers import RECIPES, ROOT, tracking_overrides

BUILDER_PACKAGES = ("runner.data.datasets", "runner.classifiers", "runner.generators", "runner.methods")
DIGITS = str(RECIPES / "digits_tiny.yaml")


def config_type_of(builder: Callable[..., Any]) -> Any:
    """The class a builder's first parameter is annotated with (evaluated in the builder's module)."""
    annotation = next(iter(inspect.signature(builder).parameters.values())).annotation
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(sys.modules[builder.__module__]))
    return annotation


def registered() -> list[type[Component]]:
    return [config for by_name in COMPONENT_CONFIGS.values() for config in by_name.values()]


@pytest.mark.parametrize("config", registered(), ids=lambda config: f"{config.kind}:{config.__name__}")
def test_every_registered_config_has_a_builder_that_takes_it(config: type[Component]) -> None:
    builder = resolve_builder(config)
    assert callable(builder) and builder.__name__.startswith("build_")
    assert issubclass(config, config_type_of(builder)), f"{config.builder} is not annotated to take {config.__name__}"


def test_every_builder_is_named_by_a_registered_config() -> None:
    configs = registered()
    named = {config.builder for config in configs}
    found = set()
    for package_name in BUILDER_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            module = importlib.import_module(info.name)
            for name, function in inspect.getmembers(module, inspect.isfunction):
                if function.__module__ != module.__name__ or not name.startswith("build_"):
                    continue
                if config_type_of(function) in configs:  # it builds a registered block (not a shared helper)
                    found.add(f"{module.__name__}:{name}")
    assert found - named == set(), "builders that no config class names"
    assert named - found == set(), "config classes naming a builder that is not there"


def test_each_kind_has_one_registry_over_the_schemas_components() -> None:
    assert {registry.kind for registry in REGISTRIES.values()} == set(COMPONENT_CONFIGS)
    for registry in REGISTRIES.values():
        assert registry.names() == sorted(COMPONENT_CONFIGS[registry.kind])


def test_a_second_block_with_a_taken_name_is_refused() -> None:
    from typing import Literal

    from schemas.classifiers import ClassifierBase

    with pytest.raises(TypeError, match="classifier 'small_cnn' is registered twice"):

        class Impostor(ClassifierBase, builder="somewhere:build_impostor"):
            name: Literal["small_cnn"] = "small_cnn"


PLUGIN_CONFIG = '''
"""A third-party classifier: this module registers it and imports no torch."""

from typing import Literal

from pydantic import PositiveInt

from schemas.classifiers import ClassifierBase


class TinyMLP(ClassifierBase, builder="metassl_tiny_mlp.build:build_tiny_mlp"):
    """A one-hidden-layer MLP from a plugin."""

    name: Literal["tiny_mlp"] = "tiny_mlp"
    hidden: PositiveInt = 32
'''

PLUGIN_BUILDER = """
from torch import nn

from metassl_tiny_mlp import TinyMLP
from runner.classifiers.base import Classifier


def build_tiny_mlp(config: TinyMLP, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    features = in_channels * image_size * image_size
    block = nn.Sequential(nn.Flatten(), nn.Linear(features, config.hidden), nn.ReLU())
    return Classifier([block], feature_dim=config.hidden, num_classes=num_classes)
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An installed plugin as pip leaves one: a package and a dist-info with a `metassl.plugins` entry point."""
    site = tmp_path_factory.mktemp("site")
    package = site / "metassl_tiny_mlp"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN_CONFIG))
    (package / "build.py").write_text(textwrap.dedent(PLUGIN_BUILDER))
    dist_info = site / "metassl_tiny_mlp-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: metassl-tiny-mlp\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[metassl.plugins]\ntiny_mlp = metassl_tiny_mlp\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "runner.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_plugin_entry_point_registers_its_block_for_list_and_validate(plugin_env: dict[str, str]) -> None:
    listed = cli(plugin_env, "list", "classifiers")
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:1] == ["tiny_mlp"] and "MLP from a plugin" in line for line in listed.stdout.splitlines())

    valid = cli(plugin_env, "validate", DIGITS, "-o", "classifier={name: tiny_mlp, hidden: 8}")
    assert valid.returncode == 0, valid.stderr
    typo = cli(plugin_env, "validate", DIGITS, "-o", "classifier={name: tiny_mlp, hiden: 8}")
    assert typo.returncode == 2
    assert "classifier.hiden: unknown field" in typo.stderr

    without = cli(
        {**plugin_env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        "validate",
        DIGITS,
        "-o",
        "classifier.name=tiny_mlp",
    )
    assert without.returncode == 2
    assert "unknown classifier 'tiny_mlp'" in without.stderr


def test_validating_a_plugin_recipe_imports_no_torch(plugin_env: dict[str, str]) -> None:
    code = (
        "import sys; from schemas import load_recipe; from pathlib import Path; "
        f"r = load_recipe(Path({DIGITS!r}), ['classifier={{name: tiny_mlp}}']); "
        "print(r.classifier.name, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=plugin_env, capture_output=True, text=True)
    assert out.stdout.split() == ["tiny_mlp", "False"], out.stderr


@pytest.mark.slow
def test_a_run_builds_the_plugin_block_through_its_builder(plugin_env: dict[str, str], tmp_path: Path) -> None:
    overrides = [
        "-o",
        "classifier={name: tiny_mlp, hidden: 16}",
        "-o",
        "schedule.iterations=4",
        "-o",
        "runtime.threads=1",
    ]
    result = cli(plugin_env, "run", DIGITS, *overrides, *tracking_overrides(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "finished: test accuracy" in result.stdout
