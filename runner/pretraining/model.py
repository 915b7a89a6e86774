"""The project's own small one-step conditional generator, a diffusers `ModelMixin` so it saves and loads like any
foundation model. Its classes are its own source clusters (k-means ids), not a target task's labels."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from runner.common import portable


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ConditionalGenerator(ModelMixin, ConfigMixin):
    """DCGAN-style `G(z, c)`: `c` is a probability vector over `num_classes` clusters (one-hot or soft).

    The class embedding is mixed by `c` and concatenated to `z`; images come out in [0, 1].
    `source` records where the training images came from (split size, index hash, cluster sizes).
    The cluster centroids are kept as buffers: they are the generator's source classifier (`source_logits`).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        noise_dim: int = 64,
        num_classes: int = 10,
        embed_dim: int = 32,
        base_channels: int = 64,
        image_size: int = 28,
        channels: int = 1,
        source: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if image_size % 4 != 0:
            raise ValueError(f"image_size must be a multiple of 4, got {image_size}")
        self.start = image_size // 4
        width = base_channels * 2
        self.class_embedding = nn.Embedding(num_classes, embed_dim)
        self.project = nn.Sequential(
            nn.Linear(noise_dim + embed_dim, width * self.start * self.start, bias=False),
            nn.Unflatten(1, (width, self.start, self.start)),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.body = nn.Sequential(
            _up(width, base_channels),
            _up(base_channels, base_channels // 2),
            nn.Conv2d(base_channels // 2, channels, 3, padding=1),
        )
        self.register_buffer("centroids", torch.zeros(num_classes, channels, image_size, image_size))
        self.register_buffer("centroid_scale", torch.ones(()))

    def forward(self, noise: torch.Tensor, class_probs: torch.Tensor) -> torch.Tensor:
        embedding = class_probs.to(self.class_embedding.weight.dtype) @ self.class_embedding.weight
        hidden = self.project(torch.cat([noise, embedding], dim=1))
        return torch.tanh(self.body(hidden)) * 0.5 + 0.5

    def source_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Nearest-centroid logits: minus the squared distance to each cluster's mean image, in units of
        a quarter of the mean within-cluster squared distance. `images` in [0, 1] at the native size."""
        flat = images.flatten(1).to(self.centroids.dtype)
        distances = portable.squared_distances(flat, self.centroids.flatten(1))
        return -distances / (0.25 * self.centroid_scale)
