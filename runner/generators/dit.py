"""`dit`: DiTTransformer2DModel + AutoencoderKL, a few deterministic DDIM steps, differentiable end to end.

`DiTPipeline` runs under no_grad, so the DDIM update and `vae.decode` are called here. Every transformer block
has its own class-embedding table (AdaLayerNormZero); each is wrapped to accept the soft class vector. The update
is DDIMScheduler.step's with eta = 0, on trailing timesteps, honouring the checkpoint scheduler's prediction_type,
clip_sample and set_alpha_to_one; a scheduler with thresholding is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class DDIMRules:
    """The settings of a checkpoint's DDIM scheduler that change its update."""

    prediction_type: str = "epsilon"  # what the transformer predicts: epsilon, v_prediction or sample
    clip_range: float | None = None  # clip_sample: the predicted x0 is clamped to [-range, range]
    final_alpha_is_one: bool = True  # set_alpha_to_one: the last step lands on alpha = 1, else alphas_cumprod[0]


def ddim_rules(scheduler: DDIMScheduler) -> DDIMRules:
    config = scheduler.config
    if config.get("thresholding", False):
        raise UserError(
            "generator.model: its scheduler sets thresholding (dynamic thresholding of x0), which the dit adapter does"
            " not apply; use a checkpoint whose scheduler has thresholding: false"
        )
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise UserError(
            f"generator.model: its scheduler's prediction_type '{prediction_type}' is not one of epsilon, v_prediction,"
            " sample"
        )
    clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", False) else None
    return DDIMRules(prediction_type, clip, bool(config.get("set_alpha_to_one", True)))


class DiTGenerator(Generator):
    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        vae: AutoencoderKL,
        alphas_cumprod: torch.Tensor,
        steps: int,
        guidance_scale: float = 1.0,
        rules: DDIMRules = DDIMRules(),
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
        self.rules = rules
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        final = torch.ones(()) if rules.final_alpha_is_one else alphas_cumprod[0].float()
        self.register_buffer("final_alpha", final, persistent=False)
        self.freeze()

    def prediction(self, x: torch.Tensor, t: torch.Tensor, class_probs: torch.Tensor) -> torch.Tensor:
        """The transformer's output (of the scheduler's prediction_type), with classifier-free guidance."""
        out = self.transformer(x, timestep=t, class_labels=class_probs).sample
        out = out[:, : self.latent_channels]  # learned-sigma models also predict a variance
        if self.guidance_scale > 1.0:
            null = torch.full((len(x),), self.num_classes, device=x.device, dtype=torch.long)
            out_null = self.transformer(x, timestep=t, class_labels=null).sample[:, : self.latent_channels]
            out = out_null + self.guidance_scale * (out - out_null)
        return out

    def x0_and_epsilon(
        self, x: torch.Tensor, out: torch.Tensor, alpha: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIMScheduler.step's predicted x0 (clipped if clip_sample) and noise, from the transformer's output."""
        kind = self.rules.prediction_type
        if kind == "epsilon":
            eps = out
            x0 = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        elif kind == "sample":
            x0 = out
            eps = (x - alpha.sqrt() * x0) / (1 - alpha).sqrt()
        else:  # v_prediction
            x0 = alpha.sqrt() * x - (1 - alpha).sqrt() * out
            eps = alpha.sqrt() * out + (1 - alpha).sqrt() * x
        if self.rules.clip_range is not None:
            x0 = x0.clamp(-self.rules.clip_range, self.rules.clip_range)
        return x0, eps

    def generate(self, latents: Latents) -> torch.Tensor:
        x = latents["noise"].to(self.transformer.dtype)
        class_probs = self.class_probabilities(latents)
        for i, step in enumerate(self.timesteps):
            previous = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1
            alpha = self.alphas_cumprod[step]
            alpha_prev = self.alphas_cumprod[previous] if previous >= 0 else self.final_alpha
            t = torch.full((len(x),), step, device=x.device, dtype=torch.long)
            x0, eps = self.x0_and_epsilon(x, self.prediction(x, t, class_probs), alpha)
            x = alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps
        images = self.vae.decode(x / self.vae.config.scaling_factor).sample
        return self.to_unit_range(images)


def build_dit(config: DiT, *, class_names: list[str], device: torch.device) -> Generator:
    """DiT (diffusers layout: transformer/, vae/, scheduler/)."""
    load = {"local_files_only": config.local_files_only}
    transformer = load_pretrained(DiTTransformer2DModel, config.model, subfolder="transformer", **load)
    vae = load_pretrained(AutoencoderKL, config.model, subfolder="vae", **load)
    scheduler = load_pretrained(DDIMScheduler, config.model, subfolder="scheduler", **load)
    rules = ddim_rules(scheduler)
    if config.gradient_checkpointing:
        enable_checkpointing(transformer, vae)
    generator = DiTGenerator(transformer, vae, scheduler.alphas_cumprod, config.steps, config.guidance_scale, rules)
    return generator.to(device)
