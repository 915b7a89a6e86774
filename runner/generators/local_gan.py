"""`local_gan`: the project's own one-step generator, loaded with `from_pretrained` like the foundation models.

With a `pretrain` block, a missing checkpoint is trained on first use and cached at `path`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from runner.generators.base import Generator, Latents, LatentSpec, adapt_images
from runner.generators.loading import load_pretrained
from runner.generators.local_gan_model import ConditionalGenerator
from schemas.errors import UserError
from schemas.generators import LocalGAN
from schemas.training import Runtime, Tracking

PRETRAIN_RECORD = "pretrain.json"
# Fields that change how pretraining runs, not what it trains.
_RUN_ONLY_FIELDS = {"threads", "grid_every"}


def has_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file()


def check_pretrain_matches(config: LocalGAN) -> None:
    """A cached checkpoint must have been trained with the recipe's pretrain block (it is cached by path only)."""
    record = config.path / PRETRAIN_RECORD
    if config.pretrain is None or not record.is_file():
        return
    trained = json.loads(record.read_text())
    wanted = config.pretrain.model_dump(mode="json")
    differing = sorted(k for k in wanted if k not in _RUN_ONLY_FIELDS and trained.get(k) != wanted[k])
    if differing:
        detail = ", ".join(f"{k}={trained.get(k)!r} (recipe: {wanted[k]!r})" for k in differing)
        raise UserError(
            f"generator.pretrain: the checkpoint at {config.path} was trained with {detail}; "
            "retrain with `metassl pretrain RECIPE --force` or set generator.path to another folder"
        )


class LocalGANGenerator(Generator):
    def __init__(self, model: ConditionalGenerator) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.spec = LatentSpec((config.noise_dim,), "class", (config.num_classes,))
        self.native_size = config.image_size
        self.channels = config.channels
        self.freeze()

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


def build_local_gan(
    config: LocalGAN,
    *,
    class_names: list[str],
    device: torch.device,
    tracking: Tracking | None = None,
    runtime: Runtime | None = None,
) -> Generator:
    """The project's own generator; trained and cached at `path` on first use when a `pretrain` block is set.

    `tracking` / `runtime` (optional) say where that first-use pretraining logs and runs; default: the defaults.
    """
    if not has_checkpoint(config.path):
        if config.pretrain is None:
            raise UserError(
                f"generator.path: no checkpoint at '{config.path}'; train one with"
                " `metassl pretrain recipes/generators/fashion_mnist_gan.yaml` or add a generator.pretrain block"
            )
        from runner.generators.pretrain import pretrain_generator

        runtime = runtime or Runtime(device="cuda" if device.type == "cuda" else "cpu")
        pretrain_generator(config, tracking=tracking or Tracking(), runtime=runtime)
    check_pretrain_matches(config)
    return load_local_gan(config.path, device)
