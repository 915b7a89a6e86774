"""The discriminator used only to pretrain `local_gan`: spectral-norm convs with a projection on the cluster id."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm


class ProjectionDiscriminator(nn.Module):
    """`D(x, y) = w . h(x) + embed(y) . h(x)` (Miyato & Koyama's projection), `x` in [-1, 1]."""

    def __init__(self, num_classes: int, channels: int = 1, image_size: int = 28, width: int = 32) -> None:
        super().__init__()
        features = 2 * width * (image_size // 4) ** 2
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.linear = spectral_norm(nn.Linear(features, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, features))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.body(images)
        return self.linear(hidden).squeeze(1) + (self.embed(labels) * hidden).sum(1)
