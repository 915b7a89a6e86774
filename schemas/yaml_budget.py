"""Safe YAML reading with an expansion budget: a recipe from someone else must never hang or exhaust the machine.

YAML aliases share one node, so a few lines ("billion laughs": anchors of anchors) stand for billions of values
that every later walk (validation, overrides, logging) would visit. The budget is checked on the composed node
graph, before anything is built, in time linear in the text: aliases used, values after expansion, nesting
depth and the characters read. One budget is shared by a recipe and its whole chain of bases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from schemas.errors import RecipeError

MAX_DEPTH = 32  # recipes nest four or five levels; deeper is a mistake (or an attack on the parser)
MAX_ALIASES = 1_000  # `*name` uses; a recipe that shares a block uses a handful
MAX_VALUES = 100_000  # scalars, lists and mappings after expanding every alias
MAX_CHARACTERS = 4 * 2**20  # text read plus the characters of scalars repeated by aliases


def too_deep(source: str) -> RecipeError:
    return RecipeError(f"{source}: nested deeper than {MAX_DEPTH} levels; a recipe is a few levels of blocks")


def over_budget(source: str, what: str, limit: int) -> RecipeError:
    return RecipeError(
        f"{source}: more than {limit:,} {what} (a recipe and its bases together); a recipe is a few blocks of"
        " settings, so this looks like an alias bomb: write the values out, or share blocks with `base:`"
    )


@dataclass
class ExpansionBudget:
    """What a document, or a recipe and its chain of bases, has spent so far."""

    aliases: int = 0
    values: int = 0
    characters: int = 0

    def charge_text(self, text: str, source: str) -> None:
        self.characters += len(text)
        if self.characters > MAX_CHARACTERS:
            raise over_budget(source, "characters", MAX_CHARACTERS)

    def charge_document(self, root: yaml.Node, aliases: int, source: str) -> None:
        self.aliases += aliases
        values, characters = _expanded_size(root, source, MAX_VALUES - self.values)
        self.values += values
        self.characters += characters
        if self.characters > MAX_CHARACTERS:
            raise over_budget(source, "characters after expanding aliases", MAX_CHARACTERS)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expanded_size(root: yaml.Node, source: str, values_left: int) -> tuple[int, int]:
    """(values, scalar characters) of the document with every alias expanded, and its depth checked.

    Each distinct node is measured once (an alias reuses its anchor's figures), iteratively, so neither an alias
    bomb nor a deep document costs more than the text itself. An anchor that contains itself is refused.
    """
    measured: dict[int, tuple[int, int, int]] = {}  # id -> (values, characters, depth)
    open_nodes: set[int] = set()  # on the current path: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in measured:
            continue
        children = _children(node)
        if not children_done:
            open_nodes.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes:
                    raise RecipeError(
                        f"{source}: line {child.start_mark.line + 1}: an alias refers to a block that contains it,"
                        " an endless recipe; write the values out"
                    )
                if id(child) not in measured:
                    stack.append((child, False))
            continue
        open_nodes.discard(key)
        if isinstance(node, yaml.ScalarNode):
            measured[key] = (1, len(node.value), 0)
            continue
        parts = [measured[id(child)] for child in children]
        values = 1 + sum(part[0] for part in parts)
        depth = 1 + max((part[2] for part in parts), default=0)
        if depth > MAX_DEPTH:
            raise too_deep(source)
        if values > values_left:
            raise over_budget(source, "values after expanding aliases", MAX_VALUES)
        measured[key] = (values, sum(part[1] for part in parts), depth)
    values, characters, _ = measured[id(root)]
    return values, characters


class BudgetedLoader(yaml.SafeLoader):
    """SafeLoader (no Python tags) that counts alias uses and refuses a key given twice in one mapping."""

    def __init__(self, stream: str, source: str, aliases_left: int) -> None:
        super().__init__(stream)
        self.source, self.aliases_left, self.alias_uses = source, aliases_left, 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):  # type: ignore[no-untyped-call]
            self.alias_uses += 1
            if self.alias_uses > self.aliases_left:
                raise over_budget(self.source, "aliases", MAX_ALIASES)
        return super().compose_node(parent, index)  # type: ignore[no-untyped-call]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (remove one of them)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str, budget: ExpansionBudget | None = None) -> Any:
    """Parse one YAML document within `budget` (a fresh one if None); every problem is a one-line RecipeError."""
    budget = budget or ExpansionBudget()
    budget.charge_text(text, source)
    loader = BudgetedLoader(text, source, MAX_ALIASES - budget.aliases)
    try:
        root = loader.get_single_node()  # type: ignore[no-untyped-call]
        if root is None:
            return None
        budget.charge_document(root, loader.alias_uses, source)
        return loader.construct_document(root)  # type: ignore[no-untyped-call]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{source}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise too_deep(source) from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
