"""Every classifier: (logits, features) shapes for 1 and 3 channels, gradients, feature blocks, dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from runner.classifiers.base import Classifier
from runner.registry import CLASSIFIERS
from schemas.classifiers import ResNet18, SmallCNN, WideResNet28_2
from schemas.errors import UserError

CASES = [
    (SmallCNN(width=8), 8, 64),
    (SmallCNN(width=8), 28, 64),
    (SmallCNN(width=8), 64, 64),
    (ResNet18(), 32, 512),
    (ResNet18(small_stem=False), 32, 512),
    (WideResNet28_2(depth=10), 28, 128),
    (WideResNet28_2(), 32, 128),
]


@pytest.mark.parametrize(("config", "size", "feature_dim"), CASES, ids=lambda v: getattr(v, "name", str(v)))
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_gradients(config, size: int, feature_dim: int, channels: int):
    torch.manual_seed(0)
    model = CLASSIFIERS.build(config, 7, channels, size)
    assert isinstance(model, Classifier) and model.feature_dim == feature_dim
    assert len(model.feature_blocks()) >= 3
    x = torch.rand(2, channels, size, size)
    logits, features = model(x)
    assert logits.shape == (2, 7) and features.shape == (2, feature_dim)
    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    first_block = model.feature_blocks()[0]
    grads = [p.grad for p in first_block.parameters()]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_resnet18_blocks_follow_torchvision_layout():
    model = CLASSIFIERS.build(ResNet18(), 10, 3, 32)
    assert len(model.feature_blocks()) == 6
    stem = model.feature_blocks()[0]
    conv = next(m for m in stem.modules() if isinstance(m, nn.Conv2d))
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in stem.modules())


def test_wide_resnet_is_wrn_28_2():
    model = CLASSIFIERS.build(WideResNet28_2(), 10, 3, 32)
    params = sum(p.numel() for p in model.parameters())
    assert 1.4e6 < params < 1.6e6  # WRN-28-2 has about 1.47M parameters
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.momentum == 0.001 for bn in bns)
    assert any(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1 for m in model.modules())
    with pytest.raises(UserError, match=r"^classifier\.depth:"):
        CLASSIFIERS.build(WideResNet28_2(depth=27), 10, 3, 32)


def test_normalizes_inputs_inside_the_model():
    """A [0, 1] input and its [-1, 1] counterpart must differ: normalization is the model's job."""
    model = CLASSIFIERS.build(SmallCNN(width=4), 3, 1, 8).eval()
    x = torch.rand(2, 1, 8, 8)
    assert not torch.allclose(model(x)[0], model(x * 2 - 1)[0])


def test_dropout_is_honoured():
    model = CLASSIFIERS.build(SmallCNN(width=4, dropout=0.5), 3, 1, 8)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    plain = CLASSIFIERS.build(SmallCNN(width=4), 3, 1, 8)
    assert isinstance(plain.dropout, nn.Identity)
