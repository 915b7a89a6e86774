"""The images a run trains on, kept as uint8 (on the device when `device_resident`) and served as float batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from runner.data.augment import Augmenter
from runner.data.split import LabelSplit
from runner.data.types import DatasetSplits, ImageSet
from schemas.data import DataBase


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]."""
    return images.float().div_(255.0)


def cap(images: ImageSet, limit: int | None) -> ImageSet:
    """At most `limit` images of a dataset's own unlabeled split, a fixed random subset (the train pool's
    unlabeled indices are capped, seeded, by `make_label_split`)."""
    if limit is None or len(images) <= limit:
        return images
    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:limit]
    return images.subset(keep.sort().values)


class DeviceData:
    """Labeled, validation, unlabeled and test images with batch samplers.

    With a `seed`, the labeled batches are drawn from their own RNG, so every method of a paired comparison sees
    the same labeled images in the same order whatever else it draws; the other samplers use the global torch RNG.
    """

    def __init__(
        self,
        splits: DatasetSplits,
        split: LabelSplit,
        config: DataBase,
        device: torch.device,
        seed: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.labeled_order = None if seed is None else torch.Generator().manual_seed(seed)
        self.storage = self.device if config.device_resident else torch.device("cpu")
        self.num_classes = len(splits.classes)
        self.channels = splits.channels
        self.image_size = splits.image_size
        self.classes = list(splits.classes)
        self.augment = Augmenter(config.augment)
        self.labeled = self._store(splits.train.subset(split.labeled))
        self.validation = self._store(splits.train.subset(split.validation)) if len(split.validation) else None
        unlabeled = splits.train.subset(split.unlabeled)
        if splits.unlabeled is not None:
            unlabeled = cap(splits.unlabeled, config.unlabeled_limit)
        self.unlabeled = self._store(unlabeled) if len(unlabeled) else None
        self.test = self._store(splits.test)

    def _store(self, images: ImageSet) -> ImageSet:
        return ImageSet(images.images.to(self.storage), images.labels.to(self.storage))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.labeled_order is None else {"labeled_order": self.labeled_order.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.labeled_order is not None and "labeled_order" in state:
            self.labeled_order.set_state(state["labeled_order"])

    def _draw(
        self, images: ImageSet, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n images drawn uniformly with replacement, as float on the training device, and their labels."""
        batch, labels, _ = self._draw_indexed(images, n, generator)
        return batch, labels

    def _draw_indexed(
        self, images: ImageSet, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`_draw`, plus the drawn images' indices in `images` (on the training device)."""
        if generator is None:
            index = torch.randint(len(images), (n,), device=self.storage)
        else:
            index = torch.randint(len(images), (n,), generator=generator).to(self.storage)
        batch = images.images[index].to(self.device, non_blocking=True)
        labels = images.labels[index].to(self.device, non_blocking=True)
        return to_float(batch), labels, index.to(self.device, non_blocking=True)

    def labeled_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weakly augmented labeled images and their labels."""
        images, labels = self._draw(self.labeled, n, self.labeled_order)
        return self.augment.weak(images), labels

    def validation_batch(
        self, n: int, source: str = "auto", augment: str = "weak"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation images for the meta-step, `weak`ly or `strong`ly augmented.

        `source`: `labeled` (another draw of the labeled set), `holdout` (the held-out validation set), or `auto`
        (the holdout if there is one, else the labeled set).
        """
        if source == "holdout" and self.validation is None:
            raise ValueError("no held-out validation set; set data.validation.source: holdout")
        use_holdout = source == "holdout" or (source == "auto" and self.validation is not None)
        images, labels = self._draw(self.validation if use_holdout else self.labeled, n)
        views = self.augment.strong if augment == "strong" else self.augment.weak
        return views(images), labels

    @property
    def has_unlabeled(self) -> bool:
        return self.unlabeled is not None

    @property
    def unlabeled_count(self) -> int:
        return 0 if self.unlabeled is None else len(self.unlabeled)

    def unlabeled_batch(self, n: int) -> torch.Tensor:
        """Real unlabeled images as float in [0, 1], not augmented (methods augment their own views)."""
        return self.indexed_unlabeled_batch(n)[0]

    def indexed_unlabeled_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`unlabeled_batch`, plus each image's index in the unlabeled set (for policies that remember images)."""
        if self.unlabeled is None:
            raise RuntimeError("this dataset split has no real unlabeled images")
        images, _, index = self._draw_indexed(self.unlabeled, n)
        return images, index

    def labeled_images(self) -> torch.Tensor:
        """The whole labeled set as float in [0, 1], not augmented."""
        return to_float(self.labeled.images.to(self.device))

    def test_batches(
        self, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test set in order, as float batches without augmentation; `shard=(rank, world_size)`: the batches
        rank, rank + world_size, ... of that same order."""
        return self._in_order(self.test, batch_size, shard)

    def holdout_batches(
        self, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The held-out validation set (data.validation.source=holdout) in order, for tuning without the test set."""
        if self.validation is None:
            raise ValueError("no held-out validation set; set data.validation.source: holdout")
        return self._in_order(self.validation, batch_size, shard)

    def _in_order(
        self, images: ImageSet, batch_size: int, shard: tuple[int, int]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, world_size = shard
        for start in range(rank * batch_size, len(images), batch_size * world_size):
            batch = images.images[start : start + batch_size].to(self.device, non_blocking=True)
            yield to_float(batch), images.labels[start : start + batch_size].to(self.device, non_blocking=True)
