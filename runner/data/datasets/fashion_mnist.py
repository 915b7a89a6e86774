"""Fashion-MNIST from its IDX files (Debian's dataset-fashion-mnist, or torchvision's layout and download)."""

from __future__ import annotations

import gzip
from pathlib import Path

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
from schemas.data import FashionMNIST
from schemas.errors import UserError

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Independent of the recipe seed, so the source set (and any generator trained on it) is the same for every recipe.
SOURCE_SEED = 20230929


def find_files(root: Path) -> dict[str, Path] | None:
    """The four IDX files (gzipped or not) in `root` or in torchvision's `root/FashionMNIST/raw`, if all are there."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        found = {}
        for key, stem in FILES.items():
            candidates = [folder / stem, folder / f"{stem}.gz"]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                break
            found[key] = path
        else:
            return found
    return None


def read_idx(path: Path) -> torch.Tensor:
    """Read a uint8 IDX file (the MNIST format), gzipped or not."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim, dtype_code = data[3], data[2]
    if dtype_code != 0x08:
        raise UserError(f"data.root: {path} is not a uint8 IDX file; point data.root at the Fashion-MNIST files")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=4 + 4 * ndim).view(*shape).clone()


def source_split(num_train: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(source indices, train indices) into the original train split, sorted, from a fixed permutation."""
    permutation = torch.from_numpy(np.random.RandomState(SOURCE_SEED).permutation(num_train))
    num_source = round(fraction * num_train)
    return permutation[:num_source].sort().values, permutation[num_source:].sort().values


def locate(config: FashionMNIST) -> dict[str, Path]:
    root = user_root(config)
    searched = [root] if root is not None else [DEBIAN_ROOT, cache_dir("fashion_mnist")]
    for folder in searched:
        files = find_files(folder)
        if files is not None:
            return files
    if config.download:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        target = searched[-1]
        try:
            with download_folder(target, True):
                for train in (True, False):
                    TorchvisionFashionMNIST(str(target), train=train, download=True)
        except (RuntimeError, OSError) as exc:  # network failures surface as URLError (an OSError)
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = display(target)
            raise UserError(f"data.download: could not download Fashion-MNIST into {where}: {message}") from None
        files = find_files(target)
        if files is not None:
            return files
    raise missing("Fashion-MNIST", searched, hint="install Debian's dataset-fashion-mnist")


def build_fashion_mnist(config: FashionMNIST) -> DatasetSplits:
    """Fashion-MNIST, 28x28 grayscale, 10 classes; part of the train split is reserved as the generator's source."""
    files = locate(config)
    train_all = image_set(read_idx(files["train_images"]), read_idx(files["train_labels"]))
    test = image_set(read_idx(files["test_images"]), read_idx(files["test_labels"]))
    source_idx, train_idx = source_split(len(train_all), config.source_fraction)
    splits = DatasetSplits(
        train=train_all.subset(train_idx),
        test=test,
        classes=list(CLASSES),
        source=ImageSet(train_all.images[source_idx], train_all.labels[source_idx]),
    )
    return resize_splits(splits, config.image_size)
