"""The one registration of a component: its config class, which names its builder.

    class Consistency(GeneratorBase, builder="runner.generators.consistency:build_consistency"):
        name: Literal["consistency"] = "consistency"

Defining the class makes `consistency` a valid `generator.name` and tells the runner which function builds it.
The builder is named as `module:function` and imported only when a run builds the component, so validating a
recipe imports no torch. Plugins register the same way: a `metassl.plugins` entry point names a module (kept
free of heavy imports) whose config classes are registered when it is imported.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, ClassVar

from schemas.base import Block
from schemas.errors import UserError

PLUGIN_GROUP = "metassl.plugins"
KIND_LABELS = {"data": "dataset", "generator": "generator", "classifier": "classifier", "method": "method"}

# kind -> name -> config class, in the order the classes were defined.
COMPONENT_CONFIGS: dict[str, dict[str, type[Component]]] = {kind: {} for kind in KIND_LABELS}
_registrations = 0


class Component(Block):
    """A recipe block that picks an implementation by `name`.

    A kind's base class passes `kind=` (data, generator, classifier, method); a concrete block passes
    `builder="package.module:function"` and declares `name: Literal["..."] = "..."`.
    """

    kind: ClassVar[str]
    builder: ClassVar[str]
    # A step a run takes before building the block ("package.module:function", called with the block and the
    # recipe's tracking and runtime), e.g. local_gan's pretraining of a missing checkpoint; None: nothing to do.
    preparer: ClassVar[str | None] = None

    def check_inputs(self) -> None:
        """Cheap checks of what the block names outside the recipe (folders, checkpoints): a UserError naming the
        field. `metassl validate` runs them; so does a run, before it reads the inputs."""

    def __init_subclass__(cls, kind: str | None = None, builder: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # the class keywords are handled once pydantic has built the fields

    @classmethod
    def __pydantic_init_subclass__(cls, kind: str | None = None, builder: str | None = None, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if kind is not None:
            if kind not in COMPONENT_CONFIGS:
                raise TypeError(f"{cls.__name__}: kind '{kind}' is not one of {', '.join(COMPONENT_CONFIGS)}")
            cls.kind = kind
        if builder is not None:
            register(cls, builder)


def register(config: type[Component], builder: str) -> None:
    """Make `config` the block for its `name` and `builder` the function that builds it."""
    kind = getattr(config, "kind", None)
    field = config.model_fields.get("name")
    name = None if field is None else field.default
    if kind is None or not isinstance(name, str):
        raise TypeError(f"{config.__name__}: a registered block derives from a kind's base and sets a default name")
    module, _, function = builder.partition(":")
    if not module or not function:
        raise TypeError(f"{config.__name__}: builder '{builder}' must read 'package.module:function'")
    known = COMPONENT_CONFIGS[kind].get(name)
    if known is not None and _qualified(known) != _qualified(config):
        twice = f"{_qualified(known)} and {_qualified(config)}"
        raise TypeError(f"{KIND_LABELS[kind]} '{name}' is registered twice: {twice}")
    config.builder = builder
    COMPONENT_CONFIGS[kind][name] = config
    global _registrations
    _registrations += 1


def registrations() -> int:
    """How many registrations have happened so far; a model built over them is stale when this changes."""
    return _registrations


def _qualified(config: type) -> str:
    return f"{config.__module__}.{config.__qualname__}"


_plugins_loaded = False


def load_plugins() -> None:
    """Import every `metassl.plugins` entry point once; their config classes register themselves."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()
        except Exception as exc:  # a broken plugin must not break the tool with a traceback
            raise UserError(f"plugin '{entry.name}' ({entry.value}) failed to load: {exc}") from None
