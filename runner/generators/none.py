"""`generator: {name: none}`: methods that use no synthetic samples."""

from __future__ import annotations

from typing import Any

from schemas.generators import NoGenerator


def build_no_generator(config: NoGenerator, *, class_names: list[str], device: Any) -> None:
    """No generator."""
    return None
