"""The `generator` block: a frozen generator whose output is differentiable in its latents."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from schemas.base import Block
from schemas.components import Component
from schemas.errors import UserError, display


class GeneratorBase(Component, kind="generator"):
    # What its latents condition on, and whether it has a source classifier (for pseudo-conditional latents).
    conditioning: ClassVar[Literal["class", "prompt", "none"]] = "class"
    has_source_classifier: ClassVar[bool] = False

    def pretrained_here(self) -> Path | None:
        """Where `metassl pretrain` saves this generator, for one it trains itself; None for one it loads."""
        return None


class NoGenerator(GeneratorBase, builder="runner.generators.none:build_no_generator"):
    """No generator: for methods that use no synthetic samples."""

    conditioning: ClassVar[Literal["class", "prompt", "none"]] = "none"
    name: Literal["none"] = "none"


class PretrainedSource(GeneratorBase):
    """Where a foundation model's weights come from: a local directory or a hub id."""

    model: str = Field(description="a local directory or a Hugging Face hub id")
    local_files_only: bool = Field(default=True, description="never reach the network for weights")
    gradient_checkpointing: bool = Field(default=False, description="trade compute for memory in the generator")


class Consistency(PretrainedSource, builder="runner.generators.consistency:build_consistency"):
    """A diffusers UNet2DModel consistency model, one step (e.g. openai/diffusers-cd_imagenet64_l2)."""

    name: Literal["consistency"] = "consistency"
    model: str = "openai/diffusers-cd_imagenet64_l2"
    sigma: float = Field(default=80.0, gt=0.0, description="noise level of the single step (the scheduler's sigma_max)")


class DiT(PretrainedSource, builder="runner.generators.dit:build_dit"):
    """DiTTransformer2DModel + AutoencoderKL, a few differentiable DDIM steps."""

    name: Literal["dit"] = "dit"
    model: str = "facebook/DiT-XL-2-256"
    steps: PositiveInt = Field(default=4, le=50, description="deterministic DDIM steps (trailing timesteps)")
    guidance_scale: float = Field(
        default=1.0, ge=1.0, le=20.0, description="classifier-free guidance; 1 = off (one network call per step)"
    )


class SDTurbo(PretrainedSource, builder="runner.generators.sd_turbo:build_sd_turbo"):
    """One-step text-to-image UNet + VAE (Stable Diffusion Turbo); needs the sd extra: pip install 'metassl[sd]'.

    Its latents are noise plus optimizable prompt embeddings.
    """

    conditioning: ClassVar[Literal["class", "prompt", "none"]] = "prompt"
    name: Literal["sd_turbo"] = "sd_turbo"
    model: str = "stabilityai/sd-turbo"
    prompt_template: str = Field(default="a photo of a {}", description="'{}' is replaced by each target class name")
    resolution: PositiveInt = Field(default=512, description="generated image size in pixels")
    timestep: int = Field(default=999, ge=0, le=999, description="the one denoising step's timestep")


class BigGAN(GeneratorBase, builder="runner.generators.biggan:build_biggan"):
    """BigGAN-deep (pytorch-pretrained-biggan); needs the biggan extra: pip install 'metassl[biggan]'."""

    name: Literal["biggan"] = "biggan"
    model: str = Field(
        default="biggan-deep-128", description="a pretrained name (biggan-deep-128/256/512) or a directory"
    )
    local_files_only: bool = Field(default=True, description="never reach the network for weights")
    truncation: float = Field(
        default=0.4, gt=0.0, le=1.0, description="BigGAN's truncation (its batch-norm statistics)"
    )


def source_dataset_configs() -> dict[str, type[Block]]:
    """The registered datasets that reserve a source split for a generator: their block has `source_fraction`."""
    from schemas.components import COMPONENT_CONFIGS  # imported here: every data block must have registered

    data = COMPONENT_CONFIGS["data"]
    return {name: model for name, model in data.items() if "source_fraction" in model.model_fields}


class Pretrain(Block):
    """How to build the project's own generator when its checkpoint is missing (`metassl pretrain`)."""

    dataset: str = Field(
        default="fashion_mnist",
        description="a dataset with a `source` split (disjoint from the target's train/test), e.g. fashion_mnist",
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
    # Fixed, not runtime.threads: CPU float sums depend on the thread count, and the generator's weights must
    # not depend on which path (first use in a run, or `metassl pretrain`) or which machine load trains it.
    threads: PositiveInt = Field(default=1, description="torch CPU threads while pretraining (part of the recipe)")
    seed: int = 0

    @field_validator("dataset")
    @classmethod
    def _has_source_split(cls, name: str) -> str:
        known = source_dataset_configs()
        if name not in known:
            raise ValueError(f"'{name}' has no source split; use one of: {', '.join(sorted(known))}")
        return name


def has_checkpoint(path: Path) -> bool:
    """A saved local_gan (a diffusers folder) is at `path`."""
    return (Path(path) / "config.json").is_file()


class LocalGAN(GeneratorBase, builder="runner.generators.local_gan:build_local_gan"):
    """The project's own small one-step generator, trained with `metassl pretrain` on a source split."""

    has_source_classifier: ClassVar[bool] = True
    preparer: ClassVar[str | None] = "runner.pretraining.pretrain:ensure_generator"
    name: Literal["local_gan"] = "local_gan"
    path: Path = Field(description="directory written by save_pretrained (relative paths: from the working directory)")
    pretrain: Pretrain | None = Field(default=None, description="build the checkpoint on first use if missing")

    def pretrained_here(self) -> Path | None:
        return Path(self.path).expanduser().resolve()

    def check_inputs(self) -> None:
        """A checkpoint at `path`, unless the pretrain block says how to train a missing one."""
        if has_checkpoint(self.path):
            return
        if self.pretrain is None:
            raise self.missing_checkpoint()
        root = self.pretrain.root
        if root is not None and not Path(root).expanduser().is_dir():
            raise UserError(
                f"generator.pretrain.root: {display(Path(root).expanduser())} is not a directory; fix the path or"
                " remove it"
            )

    def missing_checkpoint(self) -> UserError:
        return UserError(
            f"generator.path: no checkpoint at '{self.path}'; train one with"
            " `metassl pretrain recipes/generators/fashion_mnist_gan.yaml` or add a generator.pretrain block"
        )
