"""The data contract between dataset adapters and the rest of the runner."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageSet:
    """Images as uint8 `N x C x H x W` with int64 labels (-1 where a label is unknown)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 NCHW, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[indices], self.labels[indices])


@dataclass
class DatasetSplits:
    """What a dataset adapter returns.

    `train` is the pool the labeled, validation and (FixMatch) unlabeled images come from.
    `unlabeled` is an extra unlabeled-only split (STL-10). `source` is a part of the
    original train split set aside for pretraining the project's own generator; it
    never overlaps `train` or `test`.
    """

    train: ImageSet
    test: ImageSet
    classes: list[str]
    unlabeled: ImageSet | None = None
    source: ImageSet | None = None

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])
