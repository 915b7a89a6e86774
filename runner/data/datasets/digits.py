"""scikit-learn's bundled 8x8 digits: tiny, always available, for smoke tests and CPU work."""

from __future__ import annotations

import numpy as np
import torch

from runner.data.datasets.common import image_set, resize_splits
from runner.data.types import DatasetSplits
from schemas.data import Digits

# Fixed so the test split is the same for every recipe seed.
SPLIT_SEED = 0


def build_digits(config: Digits) -> DatasetSplits:
    """sklearn digits, 8x8 grayscale scaled from 0..16 to 0..255, split stratified by `test_fraction`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=config.test_fraction, stratify=labels, random_state=SPLIT_SEED
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    splits = DatasetSplits(
        train=image_set(torch.from_numpy(images[train_idx]), labels[train_idx]),
        test=image_set(torch.from_numpy(images[test_idx]), labels[test_idx]),
        classes=[str(digit) for digit in range(10)],
    )
    return resize_splits(splits, config.image_size)
