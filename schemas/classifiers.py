"""The `classifier` block. Every classifier returns `(logits, features)`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from schemas.base import Block


class ClassifierBase(Block):
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class SmallCNN(ClassifierBase):
    """A four-block CNN for 8-32 px images and CPU work."""

    name: Literal["small_cnn"] = "small_cnn"
    width: PositiveInt = 32


class ResNet18(ClassifierBase):
    """torchvision ResNet-18; `small_stem` swaps in a 3x3 stem without max-pool for 32-96 px inputs."""

    name: Literal["resnet18"] = "resnet18"
    small_stem: bool = True


class WideResNet28_2(ClassifierBase):
    """WRN-28-2 as used across the SSL literature (FixMatch, USB)."""

    name: Literal["wide_resnet28_2"] = "wide_resnet28_2"
    widen_factor: PositiveInt = 2
    depth: int = Field(default=28, ge=10)


CLASSIFIER_CONFIGS: tuple[type[ClassifierBase], ...] = (SmallCNN, ResNet18, WideResNet28_2)
