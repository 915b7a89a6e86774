"""CIFAR-10, CIFAR-100, SVHN and STL-10 through torchvision's readers (and its downloads when allowed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.data.datasets.common import (
    cache_dir,
    display,
    download_folder,
    image_set,
    missing,
    resize_splits,
    user_root,
)
from runner.data.types import DatasetSplits, ImageSet
from schemas.data import CIFAR10, CIFAR100, STL10, SVHN, DataBase
from schemas.errors import UserError


def resolve_root(config: DataBase, name: str) -> Path:
    root = user_root(config)
    return root if root is not None else cache_dir(name)


def open_split(title: str, root: Path, download: bool, make: Callable[..., Any], **kwargs: Any) -> Any:
    """Construct a torchvision dataset, turning "not found" and failed downloads into one-line user errors."""
    if not root.is_dir():
        raise missing(title, [root])
    try:
        return make(str(root), download=download, **kwargs)
    except RuntimeError as exc:
        if not download:
            raise missing(title, [root]) from None
        raise UserError(f"data.download: could not download {title} into {display(root)}: {exc}") from None
    except OSError as exc:  # network failures surface as URLError (an OSError)
        raise UserError(f"data.download: could not download {title} into {display(root)}: {exc}") from None


def nhwc_set(dataset: Any) -> ImageSet:
    """CIFAR keeps images as N x H x W x C numpy arrays."""
    return image_set(torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2), dataset.targets)


def nchw_set(dataset: Any) -> ImageSet:
    """SVHN and STL-10 keep images as N x C x H x W numpy arrays."""
    return image_set(torch.from_numpy(np.ascontiguousarray(dataset.data)), dataset.labels)


def build_cifar(config: DataBase, name: str, title: str, make: Callable[..., Any]) -> DatasetSplits:
    root = resolve_root(config, name)
    with download_folder(root, config.download):
        train = open_split(title, root, config.download, make, train=True)
        test = open_split(title, root, config.download, make, train=False)
    splits = DatasetSplits(train=nhwc_set(train), test=nhwc_set(test), classes=list(train.classes))
    return resize_splits(splits, config.image_size)


def build_cifar10(config: CIFAR10) -> DatasetSplits:
    """CIFAR-10, 32x32 RGB, 10 classes."""
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    return build_cifar(config, "cifar10", "CIFAR-10", TorchvisionCIFAR10)


def build_cifar100(config: CIFAR100) -> DatasetSplits:
    """CIFAR-100, 32x32 RGB, 100 classes."""
    from torchvision.datasets import CIFAR100 as TorchvisionCIFAR100

    return build_cifar(config, "cifar100", "CIFAR-100", TorchvisionCIFAR100)


def build_svhn(config: SVHN) -> DatasetSplits:
    """SVHN (train and test splits), 32x32 RGB, 10 digit classes."""
    from torchvision.datasets import SVHN as TorchvisionSVHN

    root = resolve_root(config, "svhn")
    with download_folder(root, config.download):
        train = open_split("SVHN", root, config.download, TorchvisionSVHN, split="train")
        test = open_split("SVHN", root, config.download, TorchvisionSVHN, split="test")
    splits = DatasetSplits(train=nchw_set(train), test=nchw_set(test), classes=[str(d) for d in range(10)])
    return resize_splits(splits, config.image_size)


def build_stl10(config: STL10) -> DatasetSplits:
    """STL-10, 96x96 RGB, 10 classes, plus its 100k-image unlabeled split."""
    from torchvision.datasets import STL10 as TorchvisionSTL10

    root = resolve_root(config, "stl10")
    with download_folder(root, config.download):
        train = open_split("STL-10", root, config.download, TorchvisionSTL10, split="train")
        test = open_split("STL-10", root, config.download, TorchvisionSTL10, split="test")
        unlabeled = open_split("STL-10", root, config.download, TorchvisionSTL10, split="unlabeled")
    unlabeled_images = torch.from_numpy(np.ascontiguousarray(unlabeled.data))
    splits = DatasetSplits(
        train=nchw_set(train),
        test=nchw_set(test),
        classes=list(train.classes),
        unlabeled=ImageSet(unlabeled_images, torch.full((len(unlabeled_images),), -1, dtype=torch.int64)),
    )
    return resize_splits(splits, config.image_size)
