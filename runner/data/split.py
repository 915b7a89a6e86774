"""Which train images are labeled, held out for validation, or used as real unlabeled data."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from schemas.data import DataBase
from schemas.errors import UserError


@dataclass
class LabelSplit:
    """int64 indices into `DatasetSplits.train`; the three sets never overlap."""

    labeled: torch.Tensor
    validation: torch.Tensor
    unlabeled: torch.Tensor

    def to_dict(self) -> dict[str, list[int]]:
        return {
            "labeled": self.labeled.tolist(),
            "validation": self.validation.tolist(),
            "unlabeled": self.unlabeled.tolist(),
        }


def labels_per_class(num_classes: int, config: DataBase) -> list[int]:
    """How many labels each class gets: `labels_per_class`, or `total_labels` spread evenly (remainder first)."""
    if config.total_labels is None:
        assert config.labels_per_class is not None  # the schema demands one label budget
        return [config.labels_per_class] * num_classes
    if config.total_labels < num_classes:
        raise UserError(
            f"data.total_labels: {config.total_labels} labels cannot cover {num_classes} classes; "
            f"use at least {num_classes}"
        )
    base, remainder = divmod(config.total_labels, num_classes)
    return [base + (1 if c < remainder else 0) for c in range(num_classes)]


def make_label_split(labels: torch.Tensor, num_classes: int, config: DataBase, seed: int) -> LabelSplit:
    """Draw the labeled (and holdout validation) images per class, deterministically from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    holdout = config.validation.per_class if config.validation.source == "holdout" else 0
    counts = labels_per_class(num_classes, config)
    labeled, validation = [], []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        needed = counts[c] + holdout
        if len(members) < needed:
            field = "data.total_labels" if config.total_labels is not None else "data.labels_per_class"
            raise UserError(
                f"{field}: class {c} has {len(members)} train images, fewer than the {counts[c]} labeled"
                f" + {holdout} validation requested; lower it or validation.per_class"
            )
        members = members[torch.randperm(len(members), generator=generator)]
        labeled.append(members[: counts[c]])
        validation.append(members[counts[c] : needed])
    labeled_idx = torch.cat(labeled).sort().values
    validation_idx = torch.cat(validation).sort().values
    taken = torch.zeros(len(labels), dtype=torch.bool)
    taken[labeled_idx] = True
    taken[validation_idx] = True
    unlabeled_idx = (~taken).nonzero().flatten()
    if config.unlabeled_limit is not None and len(unlabeled_idx) > config.unlabeled_limit:
        keep = torch.randperm(len(unlabeled_idx), generator=generator)[: config.unlabeled_limit]
        unlabeled_idx = unlabeled_idx[keep].sort().values
    return LabelSplit(labeled=labeled_idx, validation=validation_idx, unlabeled=unlabeled_idx)
