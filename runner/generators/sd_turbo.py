"""`sd_turbo`: a one-step text-to-image UNet2DConditionModel + AutoencoderKL.

The latents are the noise plus the prompt embeddings themselves (`tokens x dim`), so the meta-step can move the
prompt. The text encoder runs once, at build time, to embed the prompt template over the target class names.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from runner.generators.base import Generator, Latents, LatentSpec
from runner.generators.consistency import enable_checkpointing
from runner.generators.loading import load_pretrained
from schemas.errors import UserError
from schemas.generators import SDTurbo


def embed_prompts(model: str, prompts: list[str], *, local_files_only: bool) -> torch.Tensor:
    """`len(prompts) x tokens x dim` CLIP text embeddings (the last hidden state, as Stable Diffusion uses)."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise UserError("generator 'sd_turbo' needs transformers: pip install 'metassl[sd]'") from None
    tokenizer = load_pretrained(CLIPTokenizer, model, subfolder="tokenizer", local_files_only=local_files_only)
    text_encoder = load_pretrained(CLIPTextModel, model, subfolder="text_encoder", local_files_only=local_files_only)
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return text_encoder.eval()(tokens.input_ids).last_hidden_state.float()


class SDTurboGenerator(Generator):
    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDPMScheduler,
        prompt_embeddings: torch.Tensor,
        resolution: int,
        timestep: int = 999,
    ) -> None:
        super().__init__()
        self.unet, self.vae = unet, vae
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        if resolution % scale != 0:
            raise UserError(f"generator.resolution: {resolution} is not a multiple of the VAE's factor {scale}")
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise UserError(f"generator.model: prediction_type '{scheduler.config.prediction_type}' is not supported")
        self.v_prediction = scheduler.config.prediction_type == "v_prediction"
        self.native_size = resolution
        self.channels = vae.config.out_channels
        latent = resolution // scale
        self.spec = LatentSpec((unet.config.in_channels, latent, latent), "prompt", tuple(prompt_embeddings.shape[1:]))
        self.timestep = timestep
        self.register_buffer("alpha", scheduler.alphas_cumprod[timestep].float().clone(), persistent=False)
        self.register_buffer("prompt_embeddings", prompt_embeddings.float().clone(), persistent=False)
        self.freeze()

    def initial_condition(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """The class prompts' embeddings, cycled over the `n` latents."""
        rows = torch.arange(n, device=self.prompt_embeddings.device) % len(self.prompt_embeddings)
        return self.prompt_embeddings[rows].clone().cpu()

    def generate(self, latents: Latents) -> torch.Tensor:
        x = latents["noise"].to(self.unet.dtype)
        prompt = latents["condition"].to(self.unet.dtype)
        t = torch.full((len(x),), self.timestep, device=x.device, dtype=torch.long)
        out = self.unet(x, t, encoder_hidden_states=prompt).sample
        alpha = self.alpha.to(out.dtype)
        if self.v_prediction:
            x0 = alpha.sqrt() * x - (1 - alpha).sqrt() * out
        else:
            x0 = (x - (1 - alpha).sqrt() * out) / alpha.sqrt()
        images = self.vae.decode(x0 / self.vae.config.scaling_factor).sample
        return self.to_unit_range(images)


def build_sd_turbo(config: SDTurbo, *, class_names: list[str], device: torch.device) -> Generator:
    """SD-Turbo-style one-step model (diffusers layout: unet/, vae/, scheduler/, text_encoder/, tokenizer/)."""
    if "{}" not in config.prompt_template:
        raise UserError(f"generator.prompt_template: '{config.prompt_template}' has no '{{}}' for the class name")
    if not class_names:
        raise UserError("generator 'sd_turbo' needs the target class names to build its prompts")
    load = {"local_files_only": config.local_files_only}
    prompts = [config.prompt_template.format(name) for name in class_names]
    embeddings = embed_prompts(config.model, prompts, **load)
    unet = load_pretrained(UNet2DConditionModel, config.model, subfolder="unet", **load)
    vae = load_pretrained(AutoencoderKL, config.model, subfolder="vae", **load)
    scheduler = load_pretrained(DDPMScheduler, config.model, subfolder="scheduler", **load)
    if config.gradient_checkpointing:
        enable_checkpointing(unet, vae)
    return SDTurboGenerator(unet, vae, scheduler, embeddings, config.resolution, config.timestep).to(device)
