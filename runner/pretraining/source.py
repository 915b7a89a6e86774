"""The generator's source set: images from a dataset's `source` split and its own classes (k-means clusters)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runner.registry import DATASETS
from schemas.errors import UserError
from schemas.generators import Pretrain, source_dataset_configs


@dataclass
class SourceSet:
    images: torch.Tensor  # float N x C x H x W in [0, 1]
    clusters: torch.Tensor  # int64 N, the generator's own class ids
    centroids: torch.Tensor  # K x C x H x W, each cluster's mean image
    centroid_scale: float  # mean squared distance of an image to its own centroid
    record: dict[str, Any]  # what identifies the split, for MLflow and the checkpoint's config


def load_source(pretrain: Pretrain) -> tuple[torch.Tensor, dict[str, Any]]:
    """The dataset adapter's `source` split (disjoint from its train and test splits) as uint8 NCHW."""
    config = source_dataset_configs()[pretrain.dataset](root=pretrain.root, source_fraction=pretrain.source_fraction)
    splits = DATASETS.build(config)
    if splits.source is None:
        raise UserError(f"generator.pretrain.dataset: '{pretrain.dataset}' has no source split")
    images = splits.source.images
    record = {
        "dataset": pretrain.dataset,
        "source_fraction": pretrain.source_fraction,
        "source_count": len(images),
        "source_sha256": hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16],
        "train_count": len(splits.train),
        "test_count": len(splits.test),
    }
    return images, record


def cluster(images: torch.Tensor, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means on a 32-dim PCA of the pixels: the generator's own classes, no target labels involved."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    flat = images.flatten(1).numpy().astype(np.float32)
    features = PCA(n_components=min(32, *flat.shape), random_state=seed).fit_transform(flat)
    kmeans = KMeans(n_clusters=clusters, n_init=3, random_state=seed).fit(features)
    ids = kmeans.labels_.astype(np.int64)
    centroids = np.stack([flat[ids == k].mean(0) for k in range(clusters)])
    return ids, centroids


def build_source(pretrain: Pretrain) -> SourceSet:
    raw, record = load_source(pretrain)
    images = raw.float() / 255.0
    if len(images) < pretrain.clusters:
        raise UserError(f"generator.pretrain.clusters: {pretrain.clusters} exceeds the {len(images)} source images")
    ids, centroids = cluster(images, pretrain.clusters, pretrain.seed)
    clusters = torch.from_numpy(ids)
    centroid_images = torch.from_numpy(centroids).view(-1, *images.shape[1:])
    scale = float((images - centroid_images[clusters]).flatten(1).square().sum(1).mean())
    record["clusters"] = pretrain.clusters
    record["cluster_sizes"] = torch.bincount(clusters, minlength=pretrain.clusters).tolist()
    return SourceSet(images, clusters, centroid_images, scale, record)
