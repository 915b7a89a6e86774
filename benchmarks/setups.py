"""What `phase_cost.py` times: synthetic in-memory data and real components, built through the registries.

Compute does not depend on weight or pixel values, so the data are random tensors and the large generator is
randomly initialised: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runner.classifiers.base import Classifier
from runner.data.device_data import DeviceData
from runner.data.split import LabelSplit
from runner.data.types import DatasetSplits, ImageSet
from runner.distributed import SINGLE, Distributed
from runner.generators.base import Generator
from runner.registry import CLASSIFIERS, GENERATORS
from runner.run.build import Components, assemble
from runner.run.runtime import configure
from schemas import Recipe, validate_recipe

LOCAL_GAN_PATH = Path(".cache/generators/fashion_mnist_gan")

# openai/diffusers-cd_imagenet64_l2's unet/config.json (as in diffusers' consistency-model conversion script):
# about 280 M parameters, class-conditional over 1000 ImageNet classes, 64 px.
CD_IMAGENET64_UNET = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 3,
    "num_class_embeds": 1000,
    "block_out_channels": (192, 384, 576, 768),
    "attention_head_dim": 64,
    "down_block_types": ("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "resnet_time_scale_shift": "scale_shift",
    "attn_norm_num_groups": 32,
    "upsample_type": "resnet",
    "downsample_type": "resnet",
}
CD_SCHEDULER = {"num_train_timesteps": 40, "sigma_min": 0.002, "sigma_max": 80.0}


@dataclass(frozen=True)
class Setup:
    """One benchmark configuration: image shape, classifier and generator."""

    name: str
    data_name: str
    image_size: int
    channels: int
    classifier: dict[str, Any]
    generator: str  # "local_gan" | "consistency"
    batch_size: int  # default labeled batch B; unlabeled and synthetic batches are mu * B
    train_images: int = 2048


SETUPS = {
    "cpu_demo": Setup("cpu_demo", "fashion_mnist", 28, 1, {"name": "small_cnn"}, "local_gan", 64),
    "stl10_shape": Setup("stl10_shape", "stl10", 96, 3, {"name": "resnet18"}, "consistency", 32, train_images=512),
}

METHOD_VARIANTS: dict[str, dict[str, Any]] = {
    "supervised": {"name": "supervised"},
    "fixmatch": {"name": "fixmatch"},
    "generative": {"name": "generative"},
    "metassl exact": {"name": "metassl", "meta": {"gradient": "exact"}},
    "metassl finite_difference": {"name": "metassl", "meta": {"gradient": "finite_difference"}},
    # The virtual step on the last feature block and the head only: the blocks before it run once per input.
    "metassl exact last_block": {"name": "metassl", "meta": {"gradient": "exact", "scope": "last_blocks"}},
    "metassl finite_difference last_block": {
        "name": "metassl",
        "meta": {"gradient": "finite_difference", "scope": "last_blocks"},
    },
    # One-sided differences: the theta- pass is not run.
    "metassl finite_difference forward": {
        "name": "metassl",
        "meta": {"gradient": "finite_difference", "fd_scheme": "forward"},
    },
    "metassl finite_difference forward last_block": {
        "name": "metassl",
        "meta": {"gradient": "finite_difference", "fd_scheme": "forward", "scope": "last_blocks"},
    },
    # The same two without the sample cache: every SSL step generates its whole synthetic batch.
    "generative uncached": {"name": "generative", "cache_samples": False},
    "metassl finite_difference uncached": {
        "name": "metassl",
        "meta": {"gradient": "finite_difference"},
        "cache_samples": False,
    },
}


def method_block(variant: str, batch: int, unlabeled: int) -> dict[str, Any]:
    """Equal batch sizes for every method: B labeled, mu * B unlabeled (real or synthetic), B latents per meta-step."""
    block = dict(METHOD_VARIANTS[variant])
    if block["name"] in ("fixmatch", "generative", "metassl"):
        block["unlabeled_batch_size"] = unlabeled
    if block["name"] in ("generative", "metassl"):
        block["latents"] = {"bank_size": max(1024, unlabeled, batch)}
    if block["name"] == "metassl":
        block["meta"] = {**block["meta"], "latent_batch_size": batch, "validation_batch_size": batch}
    return block


def recipe_for(setup: Setup, variant: str, batch: int, unlabeled: int, device: str, iterations: int) -> Recipe:
    method = method_block(variant, batch, unlabeled)
    # The generator is injected (`build`); the block names it so the recipe passes the schema's cross-block rules.
    generator = {"name": setup.generator} | ({"path": str(LOCAL_GAN_PATH)} if setup.generator == "local_gan" else {})
    return validate_recipe(
        {
            "name": f"phase_cost {setup.name} {variant}",
            "data": {"name": setup.data_name, "labels_per_class": 4, "batch_size": batch},
            "classifier": setup.classifier,
            "method": method,
            **({"generator": generator} if method["name"] in ("generative", "metassl") else {}),
            "schedule": {"iterations": iterations},
            "runtime": {"device": device, "precision": "bf16", "deterministic": False},
        },
        f"phase_cost {setup.name} {variant}",
    )


def synthetic_data(setup: Setup, seed: int = 0) -> tuple[DatasetSplits, LabelSplit]:
    """Random uint8 images with 10 balanced classes; 4 labels per class, the rest real unlabeled (FixMatch)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (setup.channels, setup.image_size, setup.image_size)
    n = setup.train_images
    train = ImageSet(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator), torch.arange(n) % 10)
    test = ImageSet(torch.randint(0, 256, (64, *shape), dtype=torch.uint8, generator=generator), torch.arange(64) % 10)
    classes = [f"class_{c}" for c in range(10)]
    labeled = torch.arange(40)  # arange(n) % 10: the first 40 images are 4 per class
    split = LabelSplit(labeled=labeled, validation=torch.empty(0, dtype=torch.long), unlabeled=torch.arange(40, n))
    return DatasetSplits(train=train, test=test, classes=classes), split


def random_local_gan(device: torch.device) -> Generator:
    """The project's generator at its default (pretrain-block) size, randomly initialised."""
    from runner.generators.local_gan import LocalGANGenerator
    from runner.pretraining.model import ConditionalGenerator
    from schemas.generators import Pretrain

    defaults = Pretrain()
    model = ConditionalGenerator(
        noise_dim=defaults.noise_dim, num_classes=defaults.clusters, base_channels=defaults.base_channels
    )
    return LocalGANGenerator(model).to(device)


def random_consistency(device: torch.device) -> Generator:
    from diffusers import CMStochasticIterativeScheduler, UNet2DModel

    from runner.generators.consistency import ConsistencyGenerator
    from schemas.generators import Consistency

    unet = UNet2DModel(**CD_IMAGENET64_UNET)
    return ConsistencyGenerator(unet, CMStochasticIterativeScheduler(**CD_SCHEDULER), Consistency().sigma).to(device)


def build_generator(setup: Setup, device: torch.device, classes: list[str]) -> tuple[Generator, str]:
    """(generator, where its weights came from)."""
    if setup.generator == "local_gan":
        if (LOCAL_GAN_PATH / "config.json").is_file():
            from schemas.generators import LocalGAN

            built = GENERATORS.build(LocalGAN(path=LOCAL_GAN_PATH), class_names=classes, device=device)
            return built, f"local_gan checkpoint {LOCAL_GAN_PATH}"
        return random_local_gan(device), "local_gan, random init (no checkpoint)"
    return random_consistency(device), "consistency UNet2DModel (cd_imagenet64_l2 config), random init"


def build(
    recipe: Recipe,
    data: tuple[DatasetSplits, LabelSplit],
    generator: Generator | None,
    dist: Distributed = SINGLE,
) -> Components:
    """`runner.run.build.build_components` with synthetic data and an injected generator."""
    device = torch.device("cuda" if recipe.runtime.device == "cuda" else "cpu")
    configure(recipe.runtime, recipe.seed, device)
    splits, split = data
    device_data = DeviceData(splits, split, recipe.data, device)
    classifier: Classifier = CLASSIFIERS.build(
        recipe.classifier, device_data.num_classes, device_data.channels, device_data.image_size
    ).to(device)
    return assemble(recipe, device_data, split, classifier, generator, dist)
