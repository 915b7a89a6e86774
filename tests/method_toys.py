"""Tiny real torch parts for the method's math tests: a linear-map generator, an MLP classifier, toy data.

The data object has DeviceData's methods; it stands in only where a test checks the
math on a smooth problem small enough for float64 finite differences.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runner.classifiers.base import Classifier
from runner.data.split import LabelSplit
from runner.distributed import SINGLE, Distributed
from runner.generators.base import Generator, LatentSpec
from runner.run.build import Components, assemble
from schemas import validate_recipe

SIZE = 4
CLASSES = 3


@contextmanager
def one_thread() -> Iterator[None]:
    """Toy-sized ops run faster on one thread, and do not slow down when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TinyGenerator(Generator):
    """A frozen differentiable G(z, c) = sigmoid(W z + E softmax(c) + b), shaped 1 x 4 x 4."""

    def __init__(self, noise_dim: int = 5, sources: int = 3, dtype: torch.dtype = torch.float32, seed: int = 0):
        super().__init__()
        rng = torch.Generator().manual_seed(seed)
        self.spec = LatentSpec(noise_shape=(noise_dim,), condition="class", condition_shape=(sources,))
        self.native_size, self.channels = SIZE, 1
        self.noise_map = nn.Parameter(torch.randn(SIZE * SIZE, noise_dim, generator=rng, dtype=dtype) * 0.7)
        self.class_map = nn.Parameter(torch.randn(SIZE * SIZE, sources, generator=rng, dtype=dtype) * 1.5)
        self.freeze()

    def generate(self, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        probs = torch.softmax(latents["condition"], dim=1)  # in its own dtype (float64 for finite differences)
        pixels = latents["noise"] @ self.noise_map.T + probs @ self.class_map.T
        return torch.sigmoid(pixels).view(-1, 1, SIZE, SIZE)


class SourceTinyGenerator(TinyGenerator):
    """The same generator with a source classifier, so pseudo-conditional latents are possible."""

    def source_logits(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :3] * 4.0


def tiny_classifier(dtype: torch.dtype = torch.float32, seed: int = 0) -> Classifier:
    """Two smooth feature blocks (one with BatchNorm) and a linear head."""
    torch.manual_seed(seed)
    blocks = [
        nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 12), nn.BatchNorm1d(12), nn.Tanh()),
        nn.Sequential(nn.Linear(12, 8), nn.Tanh()),
    ]
    return Classifier(blocks, feature_dim=8, num_classes=CLASSES).to(dtype).train()


class JitterAugment:
    """Differentiable, global-RNG augmentations: additive noise (strong adds more)."""

    def weak(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.05 * torch.randn_like(x)

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.15 * torch.randn_like(x)


class ToyData:
    """Three classes of 4x4 images: bright top rows, bright left columns, or a bright centre."""

    channels, image_size, num_classes = 1, SIZE, CLASSES
    classes = ("top", "left", "centre")
    has_unlabeled = True
    device = torch.device("cpu")

    def __init__(self, per_class: int = 6, dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        rng = torch.Generator().manual_seed(seed)
        templates = torch.full((CLASSES, 1, SIZE, SIZE), 0.2, dtype=dtype)
        templates[0, :, :2, :] = 0.8
        templates[1, :, :, :2] = 0.8
        templates[2, :, 1:3, 1:3] = 0.8
        labels = torch.arange(CLASSES).repeat_interleave(per_class * 3)
        noise = 0.1 * torch.randn((len(labels), 1, SIZE, SIZE), generator=rng, dtype=dtype)
        images = (templates[labels] + noise).clamp(0, 1)
        n = CLASSES * per_class
        order = torch.randperm(len(labels), generator=rng)
        images, labels = images[order], labels[order]
        self.images, self.labels = images[:n], labels[:n]
        self.val_images, self.val_labels = images[n : 2 * n], labels[n : 2 * n]
        self.unlabeled = images[2 * n :]
        self.augment = JitterAugment()

    def labeled_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.images), (n,))
        return self.augment.weak(self.images[index]), self.labels[index]

    def validation_batch(
        self, n: int, source: str = "auto", augment: str = "weak"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole validation set, unaugmented, so the meta objective is a fixed function of the latents."""
        return self.val_images, self.val_labels

    def unlabeled_batch(self, n: int) -> torch.Tensor:
        return self.unlabeled[torch.randint(len(self.unlabeled), (n,))]

    def labeled_images(self) -> torch.Tensor:
        return self.images


TOY_RECIPE = {
    "name": "toy",
    "data": {"name": "digits"},
    "classifier": {"name": "small_cnn"},
    "generator": {"name": "local_gan", "path": "unused"},  # the recipe must name one; tests pass their own
    "method": {"name": "metassl"},
}


def toy_components(
    method: dict,
    classifier: nn.Module,
    data: ToyData,
    generator: Generator | None,
    lr: float = 0.1,
    seed: int = 0,
    batch_size: int = 8,
    dist: Distributed = SINGLE,
) -> Components:
    """The toy parts assembled as the runner assembles real ones: plain SGD at a constant `lr`, meta every step."""
    recipe = validate_recipe(
        {
            **TOY_RECIPE,
            "seed": seed,
            "data": {"name": "digits", "batch_size": batch_size},
            "method": method,
            "optim": {
                "classifier": {"name": "sgd", "lr": lr, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
                "lr_schedule": {"name": "constant"},
            },
        }
    )
    every = torch.arange(len(data.images))
    split = LabelSplit(labeled=every, validation=every[:0], unlabeled=every[:0])
    return assemble(recipe, data, split, classifier, generator, dist)  # type: ignore[arg-type]


def write_tiny_metassl_recipe(folder: Path, name: str, batch_size: int) -> Path:
    """A small metassl recipe on digits (warm-up, then a meta phase every 2 iterations, 24 in all) with a tiny,
    randomly initialised local_gan saved like the real one; the CLI tests run it."""
    import yaml

    from runner.pretraining.model import ConditionalGenerator

    torch.manual_seed(0)
    model = ConditionalGenerator(noise_dim=16, num_classes=4, embed_dim=8, base_channels=16, image_size=8)
    model.centroids.uniform_()
    model.save_pretrained(folder / "gan")
    document = {
        "name": name,
        "data": {"name": "digits", "labels_per_class": 4, "batch_size": batch_size},
        "generator": {"name": "local_gan", "path": str(folder / "gan")},
        "classifier": {"name": "small_cnn", "width": 8},
        "method": {
            "name": "metassl",
            "unlabeled_batch_size": batch_size,
            "latents": {"bank_size": 32, "classes": "pseudo"},
            "meta": {"every": 2, "latent_batch_size": 8, "validation_batch_size": 8},
        },
        # The first checkpoint comes after meta-steps have moved rows the sample cache had rendered: a resume from
        # it starts with an empty cache, and must still render what the uninterrupted run served.
        "schedule": {"iterations": 24, "warmup": 3, "eval_every": 12, "checkpoint_every": 6, "log_every": 2},
        "optim": {"ema": {"enabled": True, "decay": 0.9}, "grad_clip": 1.0},
        "runtime": {"device": "cpu", "threads": 1},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def store_client(store: Path) -> Any:
    """A client on the store `tests.helpers.tracking_overrides(store)` points runs at."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlruns'}/mlflow.db")
