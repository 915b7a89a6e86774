"""`dit`: DiTTransformer2DModel + AutoencoderKL, a few deterministic DDIM steps, differentiable end to end.

`DiTPipeline` runs under no_grad, so the DDIM update and `vae.decode` are called here. Every transformer block
has its own class-embedding table (AdaLayerNormZero); each is wrapped to accept the soft class vector.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding

from runner.generators.base import Generator, Latents, LatentSpec
from runner.generators.consistency import enable_checkpointing, square_size
from runner.generators.loading import load_pretrained
from runner.generators.soft_class import soften
from schemas.errors import UserError
from schemas.generators import DiT


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps from the last one down, evenly spaced (the first starts from pure noise)."""
    return [round(num_train_timesteps - 1 - i * num_train_timesteps / steps) for i in range(steps)]


class DiTGenerator(Generator):
    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        vae: AutoencoderKL,
        alphas_cumprod: torch.Tensor,
        steps: int,
        guidance_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.transformer, self.vae = transformer, vae
        tables = [module for module in transformer.modules() if isinstance(module, LabelEmbedding)]
        if not tables:
            raise UserError("generator.model: this DiT has no class-label embedding (num_embeds_ada_norm)")
        for table in tables:
            soften(table, "embedding_table")
        self.num_classes = tables[0].num_classes
        self.has_null_class = tables[0].dropout_prob > 0
        if guidance_scale > 1.0 and not self.has_null_class:
            raise UserError("generator.guidance_scale: this DiT has no null class; set 1")
        config = transformer.config
        latent_size = square_size(config.sample_size)
        self.latent_channels = config.in_channels
        self.spec = LatentSpec((config.in_channels, latent_size, latent_size), "class", (self.num_classes,))
        self.native_size = latent_size * 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = vae.config.out_channels
        self.guidance_scale = guidance_scale
        self.timesteps = trailing_timesteps(len(alphas_cumprod), steps)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.freeze()

    def epsilon(self, x: torch.Tensor, t: torch.Tensor, class_probs: torch.Tensor) -> torch.Tensor:
        out = self.transformer(x, timestep=t, class_labels=class_probs).sample
        eps = out[:, : self.latent_channels]  # learned-sigma models also predict a variance
        if self.guidance_scale > 1.0:
            null = torch.full((len(x),), self.num_classes, device=x.device, dtype=torch.long)
            eps_null = self.transformer(x, timestep=t, class_labels=null).sample[:, : self.latent_channels]
            eps = eps_null + self.guidance_scale * (eps - eps_null)
        return eps

    def generate(self, latents: Latents) -> torch.Tensor:
        x = latents["noise"].to(self.transformer.dtype)
        class_probs = self.class_probabilities(latents)
        for i, step in enumerate(self.timesteps):
            previous = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1
            alpha = self.alphas_cumprod[step]
            alpha_prev = self.alphas_cumprod[previous] if previous >= 0 else torch.ones_like(alpha)
            t = torch.full((len(x),), step, device=x.device, dtype=torch.long)
            eps = self.epsilon(x, t, class_probs)
            x0 = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
            x = alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps
        images = self.vae.decode(x / self.vae.config.scaling_factor).sample
        return self.to_unit_range(images)


def build_dit(config: DiT, *, class_names: list[str], device: torch.device) -> Generator:
    """DiT (diffusers layout: transformer/, vae/, scheduler/)."""
    load = {"local_files_only": config.local_files_only}
    transformer = load_pretrained(DiTTransformer2DModel, config.model, subfolder="transformer", **load)
    vae = load_pretrained(AutoencoderKL, config.model, subfolder="vae", **load)
    scheduler = load_pretrained(DDIMScheduler, config.model, subfolder="scheduler", **load)
    if config.gradient_checkpointing:
        enable_checkpointing(transformer, vae)
    return DiTGenerator(transformer, vae, scheduler.alphas_cumprod, config.steps, config.guidance_scale).to(device)
