"""WRN-28-2 as in the SSL literature (FixMatch, USB): pre-activation blocks, BN momentum 0.001, LeakyReLU 0.1."""

from __future__ import annotations

import torch
from torch import nn

from runner.classifiers.base import Classifier
from runner.classifiers.small_cnn import Normalize
from schemas.classifiers import WideResNet28_2
from schemas.errors import UserError

BN_MOMENTUM = 0.001  # PyTorch's momentum; TF's decay 0.999 in the FixMatch code
BN_EPS = 0.001
LEAKY_SLOPE = 0.1


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class PreActBlock(nn.Module):
    """bn-act-conv-bn-act-conv plus a shortcut (1x1 conv when the shape changes).

    Follows FixMatch's TF `residual`: the first conv always sees the activated input; the
    shortcut sees it only with `activate_before_residual` (the first block of the network).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, activate_before_residual: bool) -> None:
        super().__init__()
        self.bn1 = batch_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=True)
        self.bn2 = batch_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=True)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.activate_before_residual = activate_before_residual
        reshape = in_channels != out_channels or stride != 1
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True) if reshape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act(self.bn1(x))
        out = self.conv2(self.act(self.bn2(self.conv1(activated))))
        return self.shortcut(activated if self.activate_before_residual else x) + out


def group(in_channels: int, out_channels: int, count: int, stride: int, activate_first: bool) -> nn.Sequential:
    return nn.Sequential(
        *(
            PreActBlock(
                in_channels if i == 0 else out_channels,
                out_channels,
                stride=stride if i == 0 else 1,
                activate_before_residual=activate_first and i == 0,
            )
            for i in range(count)
        )
    )


def init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        nn.init.zeros_(module.bias)


def build_wide_resnet(config: WideResNet28_2, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    """WRN-depth-k with three groups of (depth - 4) / 6 blocks at widths 16k, 32k, 64k (strides 1, 2, 2)."""
    if (config.depth - 4) % 6 != 0:
        raise UserError(f"classifier.depth: {config.depth} is not 6n + 4 (e.g. 10, 16, 22, 28, 34, 40); fix the depth")
    count = (config.depth - 4) // 6
    widths = [16, 16 * config.widen_factor, 32 * config.widen_factor, 64 * config.widen_factor]
    blocks = [
        nn.Sequential(Normalize(), nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=True)),
        group(widths[0], widths[1], count, stride=1, activate_first=True),
        group(widths[1], widths[2], count, stride=2, activate_first=False),
        group(widths[2], widths[3], count, stride=2, activate_first=False),
        nn.Sequential(batch_norm(widths[3]), nn.LeakyReLU(LEAKY_SLOPE), nn.AdaptiveAvgPool2d(1)),
    ]
    model = Classifier(blocks, feature_dim=widths[3], num_classes=num_classes, dropout=config.dropout)
    model.apply(init_weights)
    return model
