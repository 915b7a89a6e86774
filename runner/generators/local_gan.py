"""`local_gan`: the project's own one-step generator, loaded with `from_pretrained` like the foundation models.

Its checkpoint comes from `runner.pretraining` (`metassl pretrain`, or the session's first-use step); this builder
only loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runner.generators.base import Generator, Latents, LatentSpec, adapt_images
from runner.generators.loading import load_pretrained
from runner.pretraining.model import ConditionalGenerator
from schemas.generators import LocalGAN, has_checkpoint


class LocalGANGenerator(Generator):
    def __init__(self, model: ConditionalGenerator) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.spec = LatentSpec((config.noise_dim,), "class", (config.num_classes,))
        self.native_size = config.image_size
        self.channels = config.channels
        self.freeze()

    @property
    def source(self) -> dict[str, Any] | None:  # type: ignore[override]
        return self.model.config.source

    def generate(self, latents: Latents) -> torch.Tensor:
        class_probs = self.class_probabilities(latents)
        return self.model(latents["noise"].float(), class_probs)

    def source_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The generator's source classifier (nearest k-means centroid), for pseudo-conditional latents."""
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        images = adapt_images(images, self.native_size, self.channels)
        return self.model.source_logits(images)


def load_local_gan(path: Path, device: torch.device | str = "cpu") -> LocalGANGenerator:
    model = load_pretrained(
        ConditionalGenerator, str(path), subfolder=None, local_files_only=True, low_cpu_mem_usage=False
    )
    return LocalGANGenerator(model).to(device)


def build_local_gan(config: LocalGAN, *, class_names: list[str], device: torch.device) -> Generator:
    """The project's own generator, loaded from `path` (pretrained by `metassl pretrain` or on first use)."""
    if not has_checkpoint(config.path):
        raise config.missing_checkpoint()
    return load_local_gan(config.path, device)
