"""A `metassl tune` search space: YAML, typed ranges over recipe fields, validated before any trial runs.

parameters:
  optim.classifier.lr: {type: float, low: 0.01, high: 0.3, log: true}
  classifier.width: {type: int, low: 8, high: 32, step: 8}
  method.name: {type: choice, values: [supervised, fixmatch]}
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runner.studies.sweep_grid import as_overrides
from schemas import Recipe, UserError, set_override, validate_recipe
from schemas.recipe import parse_yaml


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatRange(_Range):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log scale needs low > 0")
        return self

    def corners(self) -> list[Any]:
        return [self.low, self.high]

    def distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log)


class IntRange(_Range):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("a log scale needs low > 0 and step 1")
        return self

    def corners(self) -> list[Any]:
        return [self.low, self.high - (self.high - self.low) % self.step]

    def distribution(self) -> Any:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, step=self.step, log=self.log)


class Choice(_Range):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    def corners(self) -> list[Any]:
        return list(self.values)

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        # Optuna stores choices as str/int/float/bool/None; blocks and lists travel as their JSON text.
        return CategoricalDistribution([_storable(v) for v in self.values])


Range = Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]


class _SpaceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Range] = Field(min_length=1)


def _storable(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(value)


def _restore(choice: Choice, stored: Any) -> Any:
    for value in choice.values:
        if _storable(value) == stored:
            return value
    return stored


@dataclass
class SearchSpace:
    path: Path
    parameters: dict[str, FloatRange | IntRange | Choice]
    text: str

    def distributions(self) -> dict[str, Any]:
        return {key: spec.distribution() for key, spec in self.parameters.items()}

    def values(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's stored params back to recipe values (choices of blocks or lists are stored as JSON)."""
        return {
            key: _restore(spec, params[key]) if isinstance(spec, Choice) else params[key]
            for key, spec in self.parameters.items()
        }

    @property
    def digest(self) -> str:
        canonical = {key: spec.model_dump() for key, spec in sorted(self.parameters.items())}
        return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()[:16]


def apply(document: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The recipe document with each parameter set (as a `-o key=value` override would)."""
    document = copy.deepcopy(document)
    for assignment in as_overrides(values):
        set_override(document, assignment)
    return document


def trial_recipe(document: dict[str, Any], values: dict[str, Any], source: str) -> Recipe:
    return validate_recipe(apply(document, values), source)


def load_space(path: Path, document: dict[str, Any]) -> SearchSpace:
    """Read and check the space: known keys, typed ranges, and every range's ends giving a valid recipe."""
    if not path.is_file():
        raise UserError(f"--space: no search space file at {path} (see recipes/spaces/ for examples)")
    text = path.read_text()
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict) or "parameters" not in raw:
        raise UserError(f"{path}: a search space is a mapping with a 'parameters' block (see recipes/spaces/)")
    try:
        parsed = _SpaceFile.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if part not in ("float", "int", "choice"))
        raise UserError(
            f"{path}: {where}: {error['msg']} (a range is {{type: float|int, low, high[, log]}} "
            "or {type: choice, values: [...]})"
        ) from None
    for key in parsed.parameters:
        if key.split(".")[0] == "tracking":
            raise UserError(f"{path}: {key}: a study keeps all its trials in one store; set tracking.* with -o")
    # Each end of each range (the other keys at the recipe's own values) must be a valid recipe.
    for key, spec in parsed.parameters.items():
        for value in spec.corners():
            trial_recipe(document, {key: value}, f"{path}: {key}={json.dumps(value, default=str)}")
    return SearchSpace(path, dict(parsed.parameters), text)
