"""`consistency`: a diffusers UNet2DModel consistency model, one differentiable step.

`CMStochasticIterativeScheduler.step` runs under the pipeline's no_grad, so its arithmetic is done here:
`x0 = c_skip * x + c_out * unet(c_in * x, t(sigma), class_embedding)` with `x = sigma * z`.
"""

from __future__ import annotations

import math

import torch
from diffusers import CMStochasticIterativeScheduler, UNet2DModel

from runner.generators.base import Generator, Latents, LatentSpec
from runner.generators.loading import load_pretrained
from runner.generators.soft_class import soften
from schemas.errors import UserError
from schemas.generators import Consistency


def square_size(sample_size: int | tuple[int, int] | list[int]) -> int:
    if isinstance(sample_size, int):
        return sample_size
    if sample_size[0] != sample_size[1]:
        raise UserError(f"generator.model: non-square sample_size {tuple(sample_size)} is not supported")
    return int(sample_size[0])


def enable_checkpointing(*models: torch.nn.Module) -> None:
    for model in models:
        if not getattr(model, "_supports_gradient_checkpointing", False):
            raise UserError(f"generator.gradient_checkpointing: {type(model).__name__} does not support it; set false")
        model.enable_gradient_checkpointing()  # type: ignore[operator]


class ConsistencyGenerator(Generator):
    def __init__(self, unet: UNet2DModel, scheduler: CMStochasticIterativeScheduler, sigma: float) -> None:
        super().__init__()
        self.unet = unet
        config = unet.config
        if config.class_embed_type is not None:
            raise UserError(f"generator.model: class_embed_type '{config.class_embed_type}' is not supported")
        self.num_classes = soften(unet, "class_embedding") if unet.class_embedding is not None else 0
        self.native_size = square_size(config.sample_size)
        self.channels = config.out_channels
        noise_shape = (config.in_channels, self.native_size, self.native_size)
        if self.num_classes:
            self.spec = LatentSpec(noise_shape, "class", (self.num_classes,))
        else:
            self.spec = LatentSpec(noise_shape)
        sigma_data, sigma_min = scheduler.config.sigma_data, scheduler.config.sigma_min
        self.sigma = sigma
        self.c_in = 1.0 / math.sqrt(sigma**2 + sigma_data**2)
        self.c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
        self.c_out = (sigma - sigma_min) * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
        self.timestep = float(scheduler.sigma_to_t(sigma))
        self.freeze()

    def generate(self, latents: Latents) -> torch.Tensor:
        noise = latents["noise"]
        x = noise.to(self.unet.dtype) * self.sigma
        class_probs = None
        if self.num_classes:
            class_probs = self.class_probabilities(latents)
        t = torch.full((len(x),), self.timestep, device=x.device)
        model_output = self.unet(x * self.c_in, t, class_labels=class_probs).sample
        x0 = self.c_skip * x + self.c_out * model_output
        return self.to_unit_range(x0)


def build_consistency(config: Consistency, *, class_names: list[str], device: torch.device) -> Generator:
    """A one-step consistency model (diffusers layout: unet/ and scheduler/)."""
    load = {"local_files_only": config.local_files_only}
    unet = load_pretrained(UNet2DModel, config.model, subfolder="unet", **load)
    scheduler = load_pretrained(CMStochasticIterativeScheduler, config.model, subfolder="scheduler", **load)
    if config.gradient_checkpointing:
        enable_checkpointing(unet)
    return ConsistencyGenerator(unet, scheduler, config.sigma).to(device)
