"""A small four-stage CNN for 8-64 px images and quick CPU runs."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from runner.classifiers.base import Classifier
from schemas.classifiers import SmallCNN


class Normalize(nn.Module):
    """Maps images in [0, 1] to [-1, 1]; the first module of every classifier here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.5


def conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def build_small_cnn(config: SmallCNN, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    """Stages of width w, 2w, 4w, 8w, each halving the resolution (the first only from 24 px up); average pooling."""
    widths = [config.width * 2**i for i in range(4)]
    # Striding the first stage too keeps a 28 px step at about a third of the cost; tiny images keep their pixels.
    first_stride = 2 if image_size >= 24 else 1
    blocks: list[nn.Module] = [nn.Sequential(Normalize(), *conv_bn_relu(in_channels, widths[0], first_stride))]
    for previous, width in itertools.pairwise(widths):
        blocks.append(nn.Sequential(*conv_bn_relu(previous, width, stride=2)))
    # Pooling sits inside the last stage so that every block holds parameters (a "last k blocks" scope never
    # selects an empty block).
    blocks[-1].append(nn.AdaptiveAvgPool2d(1))
    return Classifier(blocks, feature_dim=widths[-1], num_classes=num_classes, dropout=config.dropout)
