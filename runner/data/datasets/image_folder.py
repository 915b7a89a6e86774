"""A folder of images: root/train/<class>/* and root/test/<class>/*."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from runner.data.datasets.common import display, image_set, user_root
from runner.data.types import DatasetSplits, ImageSet
from schemas.data import ImageFolder
from schemas.errors import UserError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def class_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_split(folder: Path, classes: list[str], size: int, grayscale: bool) -> ImageSet:
    from PIL import Image

    images: list[np.ndarray] = []
    labels: list[int] = []
    mode = "L" if grayscale else "RGB"
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in EXTENSIONS):
            try:
                with Image.open(path) as image:
                    image = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                    images.append(np.asarray(image, dtype=np.uint8))
            except OSError as exc:
                raise UserError(f"data.root: cannot read image {display(path)}: {exc}") from None
            labels.append(label)
    if not images:
        raise UserError(
            f"data.root: no images in {display(folder)}/<class>/; expected e.g. {display(folder)}/cat/1.png"
        )
    stacked = np.stack(images)
    stacked = stacked[:, None] if grayscale else stacked.transpose(0, 3, 1, 2)
    return image_set(torch.from_numpy(np.ascontiguousarray(stacked)), labels)


def build_image_folder(config: ImageFolder) -> DatasetSplits:
    """Your own images, one sub-folder per class under train/ and test/, resized to `image_size`."""
    root = user_root(config)  # a folder with train/ and test/ (ImageFolder.check_inputs)
    assert root is not None  # ImageFolder.root is required by the schema
    classes = class_names(root / "train")
    if not classes:
        raise UserError(f"data.root: {display(root)}/train has no class folders; expected train/<class>/<image>")
    unknown = sorted(set(class_names(root / "test")) - set(classes))
    if unknown:
        raise UserError(f"data.root: test/ has classes not in train/: {', '.join(unknown)}; add them to train/")
    return DatasetSplits(
        train=load_split(root / "train", classes, config.image_size, config.grayscale),
        test=load_split(root / "test", classes, config.image_size, config.grayscale),
        classes=classes,
    )
