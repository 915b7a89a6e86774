"""Shared helpers for dataset adapters: where data lives, the missing-data error, resizing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runner.data.types import DatasetSplits, ImageSet
from schemas.data import DataBase
from schemas.errors import UserError, display

CACHE_ROOT = Path("~/.cache/metassl/data")


def cache_dir(name: str) -> Path:
    """The default download/cache directory of a dataset: ~/.cache/metassl/data/<name>."""
    return (CACHE_ROOT / name).expanduser()


def user_root(config: DataBase) -> Path | None:
    """`config.root`, expanded, once the block's own checks of it passed (`check_inputs`, as `metassl validate`)."""
    config.check_inputs()
    return None if config.root is None else Path(config.root).expanduser()


@contextmanager
def download_folder(root: Path, download: bool) -> Iterator[None]:
    """Create `root` for a download, and remove it again if the download fails, so a failed download leaves no
    empty or half-filled cache folder behind (a folder that already existed is left as it was)."""
    created = download and not root.exists()
    if created:
        root.mkdir(parents=True)
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise


def missing(dataset: str, searched: Sequence[Path], hint: str = "") -> UserError:
    """The one-line error for a dataset that is not on disk while downloads are off."""
    where = " or ".join(display(p) for p in searched)
    fixes = f"{hint}, set data.root, or set data.download: true" if hint else "set data.root or data.download: true"
    return UserError(f"data.root: {dataset} not found in {where}; {fixes}")


def image_set(images: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray | torch.Tensor) -> ImageSet:
    """An ImageSet from NCHW (or NHW, read as one channel) uint8 images and integer labels."""
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    return ImageSet(images.to(torch.uint8).contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.int64))


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 NCHW images to size x size (bilinear, antialiased when shrinking), chunked to bound memory."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def resize_splits(splits: DatasetSplits, size: int | None) -> DatasetSplits:
    """Resize every split once at load time when `size` is set and differs from the native size."""
    if size is None or size == splits.image_size:
        return splits

    def resized(part: ImageSet | None) -> ImageSet | None:
        return None if part is None else ImageSet(resize_images(part.images, size), part.labels)

    return DatasetSplits(
        train=resized(splits.train),  # type: ignore[arg-type]
        test=resized(splits.test),  # type: ignore[arg-type]
        classes=splits.classes,
        unlabeled=resized(splits.unlabeled),
        source=resized(splits.source),
    )
