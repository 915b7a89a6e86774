"""The `data` block: which dataset, how labels are drawn, how images are prepared."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from schemas.base import Block
from schemas.components import Component


class Validation(Block):
    """Where validation batches for the meta-step and tuning come from.

    `labeled` (default) draws them from the labeled set with another augmentation, as
    METHOD.md describes; `holdout` sets aside `per_class` extra labeled images per class.
    """

    source: Literal["labeled", "holdout"] = "labeled"
    per_class: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _holdout_needs_count(self) -> Validation:
        if self.source == "holdout" and self.per_class == 0:
            raise ValueError("validation.source 'holdout' needs validation.per_class >= 1")
        return self


class Augment(Block):
    """Batched, on-device augmentation. Weak: flip + pad-and-crop. Strong: weak + RandAugment-lite + cutout."""

    flip: bool = True
    crop_padding: float = Field(default=0.125, ge=0.0, le=0.5, description="fraction of the image size")
    strong_ops: int = Field(default=2, ge=0, le=6, description="random ops per image in the strong view")
    cutout: float = Field(default=0.5, ge=0.0, le=1.0, description="cutout side as a fraction of the image")


class DataBase(Component, kind="data"):
    root: Path | None = Field(
        default=None, description="dataset directory; default: the dataset's usual places, then ~/.cache/metassl"
    )
    download: bool = Field(default=False, description="allow downloading the dataset if it is missing")
    labels_per_class: PositiveInt | None = Field(default=4, description="labeled images per class")
    total_labels: PositiveInt | None = Field(
        default=None, description="instead of labels_per_class: this many labels, spread evenly over classes"
    )
    classes: list[int] | None = Field(
        default=None,
        min_length=2,
        description="keep only these classes (indices into the dataset's class list), relabeled 0..k-1 in this"
        " order; the generator's source split is not filtered",
    )
    validation: Validation = Validation()
    image_size: PositiveInt | None = Field(default=None, description="resize to this size; default: native")
    augment: Augment = Augment()
    batch_size: PositiveInt = Field(default=64, description="labeled images per step")
    eval_batch_size: PositiveInt = 512
    unlabeled_limit: PositiveInt | None = Field(
        default=None, description="cap on real unlabeled images kept (FixMatch); default: all"
    )
    device_resident: bool = Field(default=True, description="keep images on the training device as uint8")

    @model_validator(mode="before")
    @classmethod
    def _one_label_budget(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("total_labels") is not None:
            if data.get("labels_per_class") is not None:
                raise ValueError("set data.labels_per_class or data.total_labels, not both")
            data = {**data, "labels_per_class": None}
        return data

    @model_validator(mode="after")
    def _has_label_budget(self) -> DataBase:
        if self.labels_per_class is None and self.total_labels is None:
            raise ValueError("set data.labels_per_class or data.total_labels")
        if self.classes is not None:
            if min(self.classes) < 0:
                raise ValueError("data.classes: class indices start at 0")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError("data.classes: each class may appear once")
        return self


class FashionMNIST(DataBase, builder="runner.data.datasets.fashion_mnist:build_fashion_mnist"):
    """Fashion-MNIST, 28x28 grayscale, 10 classes; part of the train split is reserved as the generator's source."""

    name: Literal["fashion_mnist"] = "fashion_mnist"
    source_fraction: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="fraction of the train split reserved as the generator's source set (never labeled here)",
    )


class Digits(DataBase, builder="runner.data.datasets.digits:build_digits"):
    """sklearn digits, 8x8 grayscale scaled from 0..16 to 0..255, split stratified by `test_fraction`."""

    name: Literal["digits"] = "digits"
    test_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)


class CIFAR10(DataBase, builder="runner.data.datasets.torchvision_sets:build_cifar10"):
    """CIFAR-10, 32x32 RGB, 10 classes."""

    name: Literal["cifar10"] = "cifar10"


class CIFAR100(DataBase, builder="runner.data.datasets.torchvision_sets:build_cifar100"):
    """CIFAR-100, 32x32 RGB, 100 classes."""

    name: Literal["cifar100"] = "cifar100"


class SVHN(DataBase, builder="runner.data.datasets.torchvision_sets:build_svhn"):
    """SVHN (train and test splits), 32x32 RGB, 10 digit classes."""

    name: Literal["svhn"] = "svhn"


class STL10(DataBase, builder="runner.data.datasets.torchvision_sets:build_stl10"):
    """STL-10, 96x96 RGB, 10 classes, plus its 100k-image unlabeled split."""

    name: Literal["stl10"] = "stl10"


class ImageFolder(DataBase, builder="runner.data.datasets.image_folder:build_image_folder"):
    """Your own images, one sub-folder per class under train/ and test/, resized to `image_size`."""

    name: Literal["image_folder"] = "image_folder"
    root: Path = Field(description="folder with train/<class>/*.png and test/<class>/*.png")
    image_size: PositiveInt = 32
    grayscale: bool = False
