"""The `classifier` block. Every classifier returns `(logits, features)`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from schemas.components import Component


class ClassifierBase(Component, kind="classifier"):
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class SmallCNN(ClassifierBase, builder="runner.classifiers.small_cnn:build_small_cnn"):
    """A four-block CNN for 8-32 px images and CPU work."""

    name: Literal["small_cnn"] = "small_cnn"
    width: PositiveInt = 32


class ResNet18(ClassifierBase, builder="runner.classifiers.resnet:build_resnet18"):
    """torchvision ResNet-18; `small_stem` swaps in a 3x3 stem without max-pool for 32-96 px inputs."""

    name: Literal["resnet18"] = "resnet18"
    small_stem: bool = True


class WideResNet28_2(ClassifierBase, builder="runner.classifiers.wide_resnet:build_wide_resnet"):
    """WRN-28-2 as used across the SSL literature (FixMatch, USB)."""

    name: Literal["wide_resnet28_2"] = "wide_resnet28_2"
    widen_factor: PositiveInt = 2
    depth: int = Field(default=28, ge=10)
