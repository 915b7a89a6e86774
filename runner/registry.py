"""One Registry class for every component kind.

Builders register themselves with a decorator when their module is imported; the
package imports every module under its folder (`locations`), so nothing is kept in a
hand-written list. Third-party packages add components through the `metassl.plugins`
entry-point group: each entry point names a callable that registers its components.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from schemas import COMPONENT_CONFIGS, UserError

Builder = TypeVar("Builder", bound=Callable[..., Any])

PLUGIN_GROUP = "metassl.plugins"


class Registry(Generic[Builder]):
    """Maps a component `name` (the recipe block's discriminator) to its builder."""

    def __init__(self, kind: str, locations: tuple[str, ...]) -> None:
        self.kind = kind
        self.locations = locations
        self._builders: dict[str, Builder] = {}
        self._imported = False

    def register(self, name: str) -> Callable[[Builder], Builder]:
        def decorate(builder: Builder) -> Builder:
            if name in self._builders and self._builders[name] is not builder:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._builders[name] = builder
            return builder

        return decorate

    def _import_locations(self) -> None:
        if self._imported:
            return
        self._imported = True
        for location in self.locations:
            package = importlib.import_module(location)
            for module in pkgutil.iter_modules(package.__path__, prefix=f"{location}."):
                importlib.import_module(module.name)
        load_plugins()

    def _import_namesake(self, name: str) -> None:
        """Import only `<location>.<name>` when it exists: a supervised run need not import diffusers."""
        for location in self.locations:
            package = importlib.import_module(location)
            if any(module.name == name for module in pkgutil.iter_modules(package.__path__)):
                importlib.import_module(f"{location}.{name}")

    def names(self) -> list[str]:
        self._import_locations()
        return sorted(self._builders)

    def get(self, name: str) -> Builder:
        if name not in self._builders:
            self._import_namesake(name)
        if name not in self._builders:
            self._import_locations()
        if name not in self._builders:
            known = self.names()
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown {self.kind} '{name}'; registered: {', '.join(known)}{hint}")
        return self._builders[name]

    def build(self, config: Any, *args: Any, **kwargs: Any) -> Any:
        """Build from a validated recipe block: its `name` picks the builder, which receives the block."""
        return self.get(config.name)(config, *args, **kwargs)

    def describe(self) -> dict[str, str]:
        """name -> first line of the builder's (or its config's) docstring, for `metassl list`."""
        configs = COMPONENT_CONFIGS.get(_SCHEMA_KIND[self.kind], {})
        out = {}
        for name in self.names():
            doc = (configs[name].__doc__ if name in configs else None) or self._builders[name].__doc__ or ""
            out[name] = doc.strip().splitlines()[0] if doc.strip() else ""
        return out


_plugins_loaded = False


def load_plugins() -> None:
    """Run every `metassl.plugins` entry point once; each registers its configs and builders."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()()
        except Exception as exc:  # a broken plugin must not break the tool
            raise UserError(f"plugin '{entry.name}' ({entry.value}) failed to load: {exc}") from None


_SCHEMA_KIND = {"dataset": "data", "classifier": "classifier", "generator": "generator", "method": "method"}

DATASETS: Registry[Callable[..., Any]] = Registry("dataset", ("runner.data.datasets",))
CLASSIFIERS: Registry[Callable[..., Any]] = Registry("classifier", ("runner.classifiers",))
GENERATORS: Registry[Callable[..., Any]] = Registry("generator", ("runner.generators",))
METHODS: Registry[Callable[..., Any]] = Registry("method", ("runner.methods",))

REGISTRIES = {"datasets": DATASETS, "classifiers": CLASSIFIERS, "generators": GENERATORS, "methods": METHODS}
