"""torchvision's ResNet-18, with any number of input channels and an optional small-image stem."""

from __future__ import annotations

from torch import nn

from runner.classifiers.base import Classifier
from runner.classifiers.small_cnn import Normalize
from schemas.classifiers import ResNet18


def build_resnet18(config: ResNet18, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    """ResNet-18 (random init); `small_stem` uses a 3x3 stride-1 conv1 and no max-pool, for 32-96 px images."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if config.small_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    stem = nn.Sequential(Normalize(), net.conv1, net.bn1, net.relu, net.maxpool)
    blocks = [stem, net.layer1, net.layer2, net.layer3, net.layer4, net.avgpool]
    return Classifier(blocks, feature_dim=512, num_classes=num_classes, dropout=config.dropout)
