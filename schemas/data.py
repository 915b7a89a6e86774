"""The `data` block: which dataset, how labels are drawn, how images are prepared."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveInt, model_validator

from schemas.base import Block
from schemas.components import Component
from schemas.errors import UserError, display


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
    # Images of the smallest class in the built-in train split (None: unknown, e.g. a user's folder).
    smallest_train_class: ClassVar[int | None] = None
    num_classes: ClassVar[int | None] = None
    reads_root: ClassVar[bool] = True

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

    def reserved_source_fraction(self) -> float | None:
        """The fraction of the train split kept as a generator's source set (never labeled); None: no such split."""
        return None

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

    @model_validator(mode="after")
    def _root_is_read(self) -> DataBase:
        if self.root is not None and not self.reads_root:
            name = self.model_fields["name"].default
            raise ValueError(f"data.root: the {name} dataset reads no files, so root would be ignored; remove it")
        return self

    def check_inputs(self) -> None:
        """`data.root`, if set, is a folder (or a download may create it)."""
        if self.root is None:
            return
        root = Path(self.root).expanduser()
        if not root.is_dir() and not (self.download and not root.exists()):
            raise UserError(f"data.root: {display(root)} is not a directory; fix the path or remove data.root")

    def labelable_per_class(self) -> int | None:
        """At most this many images per class can be labeled (None: unknown until the data loads)."""
        return self.smallest_train_class

    @model_validator(mode="after")
    def _labels_fit(self) -> DataBase:
        name = self.model_fields["name"].default
        classes = len(self.classes) if self.classes is not None else self.num_classes
        if self.total_labels is not None and classes and self.total_labels < classes:
            raise ValueError(
                f"data.total_labels: {self.total_labels} labels cannot cover the {classes} classes of {name};"
                f" use at least {classes}"
            )
        if self.classes is not None and self.num_classes and max(self.classes) >= self.num_classes:
            raise ValueError(f"data.classes: {name} has classes 0..{self.num_classes - 1}; got {max(self.classes)}")
        available = self.labelable_per_class()
        if available is None or not classes:
            return self
        per_class = self.labels_per_class or math.ceil((self.total_labels or 0) / classes)
        holdout = self.validation.per_class if self.validation.source == "holdout" else 0
        if per_class + holdout > available:
            asked = (
                f"data.labels_per_class: {per_class}"
                if self.labels_per_class is not None
                else f"data.total_labels: {self.total_labels} labels are {per_class}"
            )
            extra = f" + {holdout} validation" if holdout else ""
            raise ValueError(
                f"{asked}{extra} images per class, but {name} has at most {available} per class to label; lower it"
            )
        return self


class FashionMNIST(DataBase, builder="runner.data.datasets.fashion_mnist:build_fashion_mnist"):
    """Fashion-MNIST, 28x28 grayscale, 10 classes; part of the train split is reserved as the generator's source."""

    smallest_train_class: ClassVar[int | None] = 6000
    num_classes: ClassVar[int | None] = 10

    name: Literal["fashion_mnist"] = "fashion_mnist"
    source_fraction: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="fraction of the train split reserved as the generator's source set (never labeled here)",
    )

    def reserved_source_fraction(self) -> float | None:
        return self.source_fraction

    def labelable_per_class(self) -> int | None:
        # The source set is a random (not stratified) draw; 10% slack keeps this an upper bound.
        return math.ceil(6000 * (1 - self.source_fraction) * 1.1)


class Digits(DataBase, builder="runner.data.datasets.digits:build_digits"):
    """sklearn digits, 8x8 grayscale scaled from 0..16 to 0..255, split stratified by `test_fraction`."""

    smallest_train_class: ClassVar[int | None] = 174  # the whole bundled set; the test split comes off it
    num_classes: ClassVar[int | None] = 10
    reads_root: ClassVar[bool] = False  # bundled with scikit-learn

    name: Literal["digits"] = "digits"
    test_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)

    def labelable_per_class(self) -> int | None:
        return math.ceil(174 * (1 - self.test_fraction))  # the split is stratified


class CIFAR10(DataBase, builder="runner.data.datasets.torchvision_sets:build_cifar10"):
    """CIFAR-10, 32x32 RGB, 10 classes."""

    smallest_train_class: ClassVar[int | None] = 5000
    num_classes: ClassVar[int | None] = 10
    name: Literal["cifar10"] = "cifar10"


class CIFAR100(DataBase, builder="runner.data.datasets.torchvision_sets:build_cifar100"):
    """CIFAR-100, 32x32 RGB, 100 classes."""

    smallest_train_class: ClassVar[int | None] = 500
    num_classes: ClassVar[int | None] = 100
    name: Literal["cifar100"] = "cifar100"


class SVHN(DataBase, builder="runner.data.datasets.torchvision_sets:build_svhn"):
    """SVHN (train and test splits), 32x32 RGB, 10 digit classes."""

    smallest_train_class: ClassVar[int | None] = 4659
    num_classes: ClassVar[int | None] = 10
    name: Literal["svhn"] = "svhn"


class STL10(DataBase, builder="runner.data.datasets.torchvision_sets:build_stl10"):
    """STL-10, 96x96 RGB, 10 classes, plus its 100k-image unlabeled split."""

    smallest_train_class: ClassVar[int | None] = 500
    num_classes: ClassVar[int | None] = 10
    name: Literal["stl10"] = "stl10"


class ImageFolder(DataBase, builder="runner.data.datasets.image_folder:build_image_folder"):
    """Your own images, one sub-folder per class under train/ and test/, resized to `image_size`."""

    name: Literal["image_folder"] = "image_folder"
    root: Path = Field(description="folder with train/<class>/*.png and test/<class>/*.png")
    image_size: PositiveInt = 32
    grayscale: bool = False

    def check_inputs(self) -> None:
        super().check_inputs()
        root = Path(self.root).expanduser()
        for part in ("train", "test"):
            if not (root / part).is_dir():
                raise UserError(f"data.root: {display(root)} has no {part}/ folder; expected {part}/<class>/<image>")
