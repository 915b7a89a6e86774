"""One interface for every frozen generator whose output is differentiable in its latents."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from schemas.errors import UserError

Latents = dict[str, torch.Tensor]
"""`{"noise": N x *noise_shape}` plus `{"condition": N x *condition_shape}` when the generator takes one.

For `condition == "class"` the condition holds logits `a` over the generator's own
classes; the generator applies `softmax(a)` itself (`class_probabilities`).
"""


@dataclass(frozen=True)
class LatentSpec:
    noise_shape: tuple[int, ...]
    condition: Literal["class", "prompt", "none"] = "none"
    condition_shape: tuple[int, ...] = ()


class Generator(nn.Module, ABC):
    """A frozen generator `G(z, c) -> x~` in [0, 1].

    Gradients flow to the latents, never to the weights: subclasses call `freeze()` after
    building their networks, which also puts them in eval mode for good.
    """

    spec: LatentSpec
    native_size: int
    channels: int
    # Optional features, off here; a generator that has one overrides it (and its config block declares it, e.g.
    # `has_source_classifier`, so that `metassl validate` knows without building it).
    source: dict[str, Any] | None = None
    """For a generator trained by this project: the dataset split it was trained on (`dataset`, `source_fraction`)."""

    def source_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The generator's own classifier of `images` over its source classes (pseudo-conditional latents)."""
        raise UserError(
            f"method.latents.classes: 'pseudo' needs a source classifier, and generator '{type(self).__name__}' has"
            " none; use 'random' or 'uniform'"
        )

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Generator:  # a frozen generator stays in eval mode
        return super().train(False)

    def sample_latents(
        self, n: int, generator: torch.Generator | None = None, truncation: float | None = None
    ) -> Latents:
        """Seeded initial latents: `z ~ N(0, I)` (resampled beyond `truncation`) and random class logits."""
        device = next(iter(self.buffers()), next(iter(self.parameters()))).device
        noise = torch.randn((n, *self.spec.noise_shape), generator=generator)
        if truncation is not None:
            for _ in range(100):
                outside = noise.abs() > truncation
                if not outside.any():
                    break
                noise[outside] = torch.randn(int(outside.sum()), generator=generator)
            noise = noise.clamp(-truncation, truncation)
        latents = {"noise": noise.to(device)}
        if self.spec.condition != "none":
            latents["condition"] = self.initial_condition(n, generator).to(device)
        return latents

    def initial_condition(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Random class logits by default; prompt-conditioned generators override this."""
        return torch.randn((n, *self.spec.condition_shape), generator=generator)

    def check_latents(self, latents: Latents) -> None:
        noise = latents.get("noise")
        if noise is None or tuple(noise.shape[1:]) != self.spec.noise_shape:
            got = None if noise is None else tuple(noise.shape[1:])
            raise ValueError(f"latent noise shape {got} does not match the generator's {self.spec.noise_shape}")
        if self.spec.condition != "none":
            cond = latents.get("condition")
            got = None if cond is None else tuple(cond.shape[1:])
            if got != self.spec.condition_shape:
                raise ValueError(
                    f"latent condition shape {got} does not match the generator's {self.spec.condition_shape}"
                )

    @staticmethod
    def class_probabilities(latents: Latents) -> torch.Tensor:
        """`c = softmax(a)` of the class logits in `latents["condition"]`, in float32."""
        return torch.softmax(latents["condition"].float(), dim=-1)

    @staticmethod
    def to_unit_range(images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], as most pretrained generators produce them, to float32 in [0, 1]."""
        return (images.float().clamp(-1.0, 1.0) + 1.0) / 2.0

    @abstractmethod
    def generate(self, latents: Latents) -> torch.Tensor:
        """Images in [0, 1], `N x channels x native_size x native_size`, differentiable in the latents."""

    def forward(self, latents: Latents, size: int | None = None, channels: int | None = None) -> torch.Tensor:
        """Generate, then adapt to the classifier's input size and channel count."""
        self.check_latents(latents)
        images = self.generate(latents)
        return adapt_images(images, size, channels)


def adapt_images(images: torch.Tensor, size: int | None, channels: int | None) -> torch.Tensor:
    if channels is not None and channels != images.shape[1]:
        if channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
            images = (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif images.shape[1] == 1:
            images = images.expand(-1, channels, -1, -1)
        else:
            raise ValueError(f"cannot map {images.shape[1]} generator channels to {channels}")
    if size is not None and size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images.clamp(0.0, 1.0)
