"""A sweep's grid: parse `key=v1,v2` options, expand the cross product, name each child canonically.

Pure functions, no MLflow and no torch, so they are cheap to test.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import yaml

from schemas import UserError

Grid = dict[str, list[Any]]
Assignment = dict[str, Any]

_OPEN, _CLOSE = "[{", "]}"


def split_values(raw: str) -> list[str]:
    """Split on commas outside brackets and quotes, so `x=[1,2],[3,4]` is two values."""
    parts, current, depth, quote = [], [], 0, ""
    for char in raw:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def parse_value(text: str, option: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"--grid '{option}': value '{text}' is not valid YAML: {problem}") from None


def parse_grid(options: list[str]) -> Grid:
    """`["seed=0,1", "method.name=supervised,fixmatch"]` -> `{"seed": [0, 1], "method.name": [...]}` (YAML values)."""
    grid: Grid = {}
    for option in options:
        key, sep, raw = option.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--grid '{option}': write it as key.path=v1,v2 (e.g. --grid seed=0,1,2)")
        if any(not part for part in key.split(".")):
            raise UserError(f"--grid '{option}': '{key}' is not a key path like data.labels_per_class")
        if key in grid:
            raise UserError(f"--grid '{option}': {key} is given twice; put all its values in one --grid")
        texts = split_values(raw)
        if any(not text for text in texts):
            raise UserError(f"--grid '{option}': empty value; separate values with single commas (e.g. {key}=0,1)")
        values = [parse_value(text, option) for text in texts]
        if len({canonical_value(v) for v in values}) != len(values):
            raise UserError(f"--grid '{option}': a value is repeated")
        grid[key] = values
    return grid


def expand(grid: Grid) -> list[Assignment]:
    """The cross product, the first grid key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def canonical_value(value: Any) -> str:
    """A YAML flow rendering that parses back to `value` (`1`, `fixmatch`, `[1, 2]`, `'1'`)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=True).strip()
    return text.removesuffix("...").strip()


def as_overrides(assignment: Assignment) -> list[str]:
    """`-o` strings for one child, in the grid's key order."""
    return [f"{key}={canonical_value(value)}" for key, value in assignment.items()]


def child_key(assignment: Assignment) -> str:
    """A child's identity within its sweep: its overrides sorted by key (readable in the MLflow UI)."""
    return " ".join(sorted(as_overrides(assignment)))


def sweep_identity(base_recipe: dict[str, Any], grid: Grid) -> str:
    """Hash of the resolved base recipe and the grid: the same sweep, re-invoked, finds its parent run."""
    document = {"recipe": base_recipe, "grid": {key: [canonical_value(v) for v in grid[key]] for key in sorted(grid)}}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]
