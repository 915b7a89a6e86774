"""Shared base for every recipe block."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Block(BaseModel):
    """A recipe block. Unknown keys are errors, so a typo never passes silently; so are `.inf` and `.nan`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
