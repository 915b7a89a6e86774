"""`generator: {name: none}`: methods that use no synthetic samples."""

from __future__ import annotations

from typing import Any

from runner.registry import GENERATORS


@GENERATORS.register("none")
def build_no_generator(config: Any, *, class_names: list[str], device: Any) -> None:
    """No generator."""
    return None
