"""The `generator` block: a frozen generator whose output is differentiable in its latents."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt

from schemas.base import Block


class GeneratorBase(Block):
    # What its latents condition on, and whether it has a source classifier (for pseudo-conditional latents).
    conditioning: ClassVar[Literal["class", "prompt", "none"]] = "class"
    has_source_classifier: ClassVar[bool] = False


class NoGenerator(GeneratorBase):
    """No generator: for methods that use no synthetic samples."""

    conditioning: ClassVar[Literal["class", "prompt", "none"]] = "none"
    name: Literal["none"] = "none"


class PretrainedSource(GeneratorBase):
    """Where a foundation model's weights come from: a local directory or a hub id."""

    model: str = Field(description="a local directory or a Hugging Face hub id")
    local_files_only: bool = Field(default=True, description="never reach the network for weights")
    gradient_checkpointing: bool = Field(default=False, description="trade compute for memory in the generator")


class Consistency(PretrainedSource):
    """A diffusers UNet2DModel consistency model, one step (e.g. openai/diffusers-cd_imagenet64_l2)."""

    name: Literal["consistency"] = "consistency"
    model: str = "openai/diffusers-cd_imagenet64_l2"
    sigma: float = Field(default=80.0, gt=0.0, description="noise level of the single step (the scheduler's sigma_max)")


class DiT(PretrainedSource):
    """DiTTransformer2DModel + AutoencoderKL, a few differentiable DDIM steps."""

    name: Literal["dit"] = "dit"
    model: str = "facebook/DiT-XL-2-256"
    steps: PositiveInt = Field(default=4, le=50, description="deterministic DDIM steps (trailing timesteps)")
    guidance_scale: float = Field(
        default=1.0, ge=1.0, le=20.0, description="classifier-free guidance; 1 = off (one network call per step)"
    )


class SDTurbo(PretrainedSource):
    """One-step text-to-image UNet + VAE; latents are noise plus optimizable prompt embeddings."""

    conditioning: ClassVar[Literal["class", "prompt", "none"]] = "prompt"
    name: Literal["sd_turbo"] = "sd_turbo"
    model: str = "stabilityai/sd-turbo"
    prompt_template: str = Field(default="a photo of a {}", description="'{}' is replaced by each target class name")
    resolution: PositiveInt = Field(default=512, description="generated image size in pixels")
    timestep: int = Field(default=999, ge=0, le=999, description="the one denoising step's timestep")


class BigGAN(GeneratorBase):
    """BigGAN through the optional `pytorch-pretrained-biggan` package (pip install 'metassl[biggan]')."""

    name: Literal["biggan"] = "biggan"
    model: str = Field(
        default="biggan-deep-128", description="a pretrained name (biggan-deep-128/256/512) or a directory"
    )
    local_files_only: bool = Field(default=True, description="never reach the network for weights")
    truncation: float = Field(
        default=0.4, gt=0.0, le=1.0, description="BigGAN's truncation (its batch-norm statistics)"
    )


class Pretrain(Block):
    """How to build the project's own generator when its checkpoint is missing (`metassl pretrain`)."""

    dataset: Literal["fashion_mnist"] = Field(
        default="fashion_mnist", description="its `source` split (disjoint from the target's train/test) is used"
    )
    root: Path | None = Field(default=None, description="dataset directory; default: the adapter's usual places")
    source_fraction: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="must match the target recipe's data.source_fraction"
    )
    clusters: PositiveInt = Field(default=10, le=1000, description="the generator's own source classes (k-means ids)")
    iterations: PositiveInt = Field(default=2000, description="generator updates (one discriminator update each)")
    batch_size: PositiveInt = 32
    lr: PositiveFloat = Field(default=2e-4, description="Adam learning rate of G (D uses twice this)")
    ema_decay: float = Field(default=0.995, ge=0.0, lt=1.0, description="the saved G is this moving average")
    noise_dim: PositiveInt = 64
    base_channels: PositiveInt = Field(default=32, description="width of G and D")
    grid_every: PositiveInt = Field(default=500, description="log a sample grid every N iterations")
    threads: PositiveInt | None = Field(default=None, description="torch CPU threads; default: runtime.threads, then 1")
    seed: int = 0


class LocalGAN(GeneratorBase):
    """The project's own small one-step generator, trained with `metassl pretrain` on a source split."""

    has_source_classifier: ClassVar[bool] = True
    name: Literal["local_gan"] = "local_gan"
    path: Path = Field(description="directory written by save_pretrained (relative paths: from the working directory)")
    pretrain: Pretrain | None = Field(default=None, description="build the checkpoint on first use if missing")


GENERATOR_CONFIGS: tuple[type[GeneratorBase], ...] = (NoGenerator, Consistency, DiT, SDTurbo, BigGAN, LocalGAN)
