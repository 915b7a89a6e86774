"""The `generator` block: a frozen generator whose output is differentiable in its latents."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt

from schemas.base import Block


class GeneratorBase(Block):
    pass


class NoGenerator(GeneratorBase):
    """No generator: for methods that use no synthetic samples."""

    name: Literal["none"] = "none"


class PretrainedSource(GeneratorBase):
    """Where a foundation model's weights come from: a local directory or a hub id."""

    model: str = Field(description="a local directory or a Hugging Face hub id")
    local_files_only: bool = Field(default=True, description="never reach the network for weights")
    gradient_checkpointing: bool = False


class Consistency(PretrainedSource):
    """A diffusers UNet2DModel consistency model, one step (e.g. openai/diffusers-cd_imagenet64_l2)."""

    name: Literal["consistency"] = "consistency"
    model: str = "openai/diffusers-cd_imagenet64_l2"
    sigma: float = Field(default=80.0, gt=0.0, description="noise level of the single step")


class DiT(PretrainedSource):
    """DiTTransformer2DModel + AutoencoderKL, a few differentiable sampling steps."""

    name: Literal["dit"] = "dit"
    model: str = "facebook/DiT-XL-2-256"
    steps: PositiveInt = Field(default=4, le=50)


class SDTurbo(PretrainedSource):
    """One-step text-to-image UNet + VAE; latents are noise plus optimizable prompt embeddings."""

    name: Literal["sd_turbo"] = "sd_turbo"
    model: str = "stabilityai/sd-turbo"
    prompt_template: str = "a photo of a {}"
    resolution: PositiveInt = 512


class BigGAN(GeneratorBase):
    """BigGAN through the optional `pytorch-pretrained-biggan` package."""

    name: Literal["biggan"] = "biggan"
    model: str = Field(default="biggan-deep-128", description="a pretrained name or a local directory")


class Pretrain(Block):
    """How to build the project's own generator when its checkpoint is missing."""

    dataset: Literal["fashion_mnist", "digits"] = "fashion_mnist"
    clusters: PositiveInt = Field(default=10, description="the generator's own source classes (k-means ids)")
    iterations: PositiveInt = 3000
    batch_size: PositiveInt = 128
    seed: int = 0


class LocalGAN(GeneratorBase):
    """The project's own small one-step generator, trained with `metassl pretrain` on a source split."""

    name: Literal["local_gan"] = "local_gan"
    path: Path = Field(description="directory written by save_pretrained")
    pretrain: Pretrain | None = Field(default=None, description="build the checkpoint on first use if missing")


GENERATOR_CONFIGS: tuple[type[GeneratorBase], ...] = (NoGenerator, Consistency, DiT, SDTurbo, BigGAN, LocalGAN)
