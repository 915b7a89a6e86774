"""`data.classes`: a task over a subset of a dataset's classes, relabeled 0..k-1 in the recipe's order."""

from __future__ import annotations

import torch

from runner.data.types import DatasetSplits, ImageSet
from schemas.errors import UserError


def _keep(images: ImageSet, selection: list[int]) -> ImageSet:
    wanted = torch.tensor(selection, dtype=torch.int64)
    kept = torch.isin(images.labels, wanted).nonzero().flatten()
    relabeled = (images.labels[kept].unsqueeze(1) == wanted).to(torch.int64).argmax(dim=1)
    return ImageSet(images.images[kept], relabeled)


def restrict_classes(splits: DatasetSplits, selection: list[int] | None) -> DatasetSplits:
    """Keep the selected classes of the train pool and the test split.

    The dataset's unlabeled-only split (STL-10) has no labels to filter and stays whole; the generator's source
    split stays whole too: it is the broad set the generator was trained on without labels.
    """
    if selection is None:
        return splits
    unknown = [c for c in selection if c >= len(splits.classes)]
    if unknown:
        raise UserError(
            f"data.classes: {unknown} out of range; this dataset has classes 0..{len(splits.classes) - 1}"
            f" ({', '.join(splits.classes)})"
        )
    return DatasetSplits(
        train=_keep(splits.train, selection),
        test=_keep(splits.test, selection),
        classes=[splits.classes[c] for c in selection],
        unlabeled=splits.unlabeled,
        source=splits.source,
    )
