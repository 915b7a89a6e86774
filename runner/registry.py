"""The builders of every component kind, resolved from the config classes' one registration.

A config class names its builder (`class X(GeneratorBase, builder="package.module:function")`, see
schemas/components.py), so there is no second list to keep in step: the registry imports a builder's module only
when a run builds that component (a supervised run never imports diffusers). Plugins from the `metassl.plugins`
entry-point group register the same way, through their config classes.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

from schemas import COMPONENT_CONFIGS, Component, UserError, load_plugins
from schemas.components import KIND_LABELS


def resolve_function(config: type[Component], target: str, role: str = "builder") -> Callable[..., Any]:
    """Import the function a config class names (`package.module:function`) as its builder or preparer."""
    module, _, name = target.partition(":")
    function = getattr(importlib.import_module(module), name, None)
    if not callable(function):
        raise TypeError(f"{config.__name__}: {role} '{target}' is not a function")
    return function


def resolve_builder(config: type[Component]) -> Callable[..., Any]:
    return resolve_function(config, config.builder)


class Registry:
    """One kind's components (datasets, classifiers, generators, methods): `name` -> config class -> builder."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # the recipe block: data, classifier, generator, method
        self.label = KIND_LABELS[kind]

    def configs(self) -> dict[str, type[Component]]:
        load_plugins()
        return COMPONENT_CONFIGS[self.kind]

    def names(self) -> list[str]:
        return sorted(self.configs())

    def config(self, name: str) -> type[Component]:
        configs = self.configs()
        if name not in configs:
            close = difflib.get_close_matches(name, configs, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown {self.label} '{name}'; registered: {', '.join(self.names())}{hint}")
        return configs[name]

    def get(self, name: str) -> Callable[..., Any]:
        return resolve_builder(self.config(name))

    def build(self, config: Any, *args: Any, **kwargs: Any) -> Any:
        """Build from a validated recipe block: its `name` picks the builder, which receives the block."""
        return self.get(config.name)(config, *args, **kwargs)

    def prepare(self, config: Any, **context: Any) -> None:
        """Take the step the block declares before it is built (its `preparer`), if it declares one."""
        if config.preparer is not None:
            resolve_function(type(config), config.preparer, "preparer")(config, **context)

    def describe(self) -> dict[str, str]:
        """name -> first line of the config's docstring, for `metassl list` (imports no builder)."""
        out = {}
        for name in self.names():
            doc = (self.configs()[name].__doc__ or "").strip()
            out[name] = doc.splitlines()[0] if doc else ""
        return out


DATASETS = Registry("data")
CLASSIFIERS = Registry("classifier")
GENERATORS = Registry("generator")
METHODS = Registry("method")

REGISTRIES = {"datasets": DATASETS, "classifiers": CLASSIFIERS, "generators": GENERATORS, "methods": METHODS}
