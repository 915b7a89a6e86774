"""A generator pretraining recipe (`metassl pretrain RECIPE`): the `local_gan` block plus tracking and runtime."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Block
from schemas.generators import LocalGAN
from schemas.training import Runtime, Tracking


class PretrainRecipe(Block):
    """Trains the project's own generator; its `generator.pretrain` block says how."""

    name: str = Field(description="a short name; also the default MLflow run name (pretrain-<name>)")
    generator: LocalGAN
    tracking: Tracking = Tracking()
    runtime: Runtime = Runtime()
