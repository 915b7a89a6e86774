"""Reading a recipe file: its checks as text, and its chain of `base:` recipes merged into one document.

`base: other.yaml` (a path relative to the recipe's own folder) makes the recipe a set of changes to another one,
merged field by field as mmengine's `_base_`: a mapping merges key by key, any other value (a list included)
replaces the base's. A component block that names another component (`method: {name: supervised}` over a
`metassl` block) replaces the base's block, since the options of two components do not mix.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from schemas.errors import RecipeError
from schemas.yaml_budget import MAX_DEPTH, ExpansionBudget, parse_yaml, too_deep

BASE_FIELD = "base"
MAX_BASES = 16  # a chain longer than this is a mistake


class RecipeDocument(dict[str, Any]):
    """A recipe's merged fields, plus which file set each one (`origins`: dotted field -> file), so that an error
    in a field that came from a base names that file. `-o` overrides drop the origin of what they set."""

    origins: dict[str, str]

    def __init__(self, fields: dict[str, Any] | None = None, origins: dict[str, str] | None = None) -> None:
        super().__init__(fields or {})
        self.origins = dict(origins or {})

    def forget_origin(self, field: str) -> None:
        self.origins = {
            key: file for key, file in self.origins.items() if key != field and not key.startswith(field + ".")
        }

    def origin(self, field: str) -> str | None:
        """The file that set `field`, or the nearest enclosing field (an item of a list, a block set whole)."""
        parts = field.split(".")
        for end in range(len(parts), 0, -1):
            found = self.origins.get(".".join(parts[:end]))
            if found is not None:
                return found
        return None


def _depth(document: Any) -> int:
    """Nesting depth of lists and mappings, without recursion (a deep document must not overflow the stack)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def check_document(document: Any, source: str) -> dict[str, Any]:
    """The parsed YAML is a mapping of sane depth (before overrides or validation touch it)."""
    if not isinstance(document, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping of fields, got {type(document).__name__}")
    if _depth(document) > MAX_DEPTH:
        raise too_deep(source)
    return document


def _read_one(path: Path, budget: ExpansionBudget) -> dict[str, Any]:
    if not path.exists():
        raise RecipeError(f"recipe file not found: {path} (check the path; recipes live in recipes/)")
    if path.is_dir():
        raise RecipeError(f"{path} is a directory; pass a recipe .yaml file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); a recipe is a YAML"
            " text file"
        ) from None
    if "\x00" in text:
        raise RecipeError(f"{path}: a binary file (it contains NUL bytes); a recipe is a YAML text file")
    document = parse_yaml(text, str(path), budget)
    if document is None:
        raise RecipeError(f"{path}: the recipe is empty")
    return check_document(document, str(path))


def _base_path(document: dict[str, Any], path: Path) -> Path | None:
    base = document.pop(BASE_FIELD, None)
    if base is None:
        return None
    if not isinstance(base, str) or not base.strip():
        raise RecipeError(
            f"{path}: {BASE_FIELD}: a recipe file to start from, relative to this file's folder (e.g."
            f" base: fashion_mnist_40labels.yaml), got {base!r}"
        )
    base_path = Path(os.path.normpath(path.parent / base))
    if not base_path.is_file():
        raise RecipeError(
            f"{path}: {BASE_FIELD}: no recipe file at {base_path} (the path is relative to {path.parent or '.'})"
        )
    return base_path


def _chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The recipe and its bases, the recipe first; one budget for the whole chain."""
    budget = ExpansionBudget()
    chain = [(path, _read_one(path, budget))]
    while (base := _base_path(chain[-1][1], chain[-1][0])) is not None:
        names = [str(file) for file, _ in chain]
        if base.resolve() in {file.resolve() for file, _ in chain}:
            raise RecipeError(f"{chain[-1][0]}: {BASE_FIELD}: a cycle of bases: {' -> '.join([*names, str(base)])}")
        if len(chain) > MAX_BASES:
            raise RecipeError(f"{path}: {BASE_FIELD}: more than {MAX_BASES} bases in a chain ({' -> '.join(names)})")
        chain.append((base, _read_one(base, budget)))
    return chain


def _record(origins: dict[str, str], fields: dict[str, Any], file: str, prefix: str = "") -> None:
    for key, value in fields.items():
        field = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            _record(origins, value, file, f"{field}.")
        else:
            origins[field] = file


def _merge(into: RecipeDocument, fields: dict[str, Any], file: str, base: dict[str, Any], prefix: str = "") -> None:
    """Merge one layer's `fields` over `base` (a block of `into`), field by field, recording where each came from."""
    for key, value in fields.items():
        field = f"{prefix}{key}"
        below = base.get(key)
        replaces = not (isinstance(value, dict) and isinstance(below, dict))
        if not replaces and "name" in value and "name" in below and value["name"] != below["name"]:
            replaces = True  # another component: its options do not mix with the base's
        if replaces:
            into.forget_origin(field)
            base[key] = copy.deepcopy(value)  # unshared: a later layer merges into it
            _record(into.origins, {key: value}, file, prefix)
        else:
            _merge(into, value, file, below, f"{field}.")


def read_recipe_document(path: Path) -> RecipeDocument:
    """A recipe file with its chain of bases merged in (the fields of the recipe over those of its bases)."""
    chain = _chain(path)
    document = RecipeDocument()
    for file, fields in reversed(chain):
        _merge(document, fields, str(file), document)
    return document
