"""The latent bank Lambda = {(z_j, a_j)}: M generator latents held as parameters; a method with a meta phase moves
them with its own optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from runner.generators.base import Generator, Latents
from runner.methods.row_adam import RowAdam
from schemas import UserError
from schemas.methods import LatentInit

LATENT_KEYS = ("noise", "condition")


class LatentBank(nn.Module):
    """`noise` (M x *noise_shape) and, for conditional generators, `condition` (M x *condition_shape).

    For class-conditional generators `condition` holds the logits `a_j`; prompt-conditioned
    ones keep prompt embeddings there. The bank is fixed unless its owner steps it with an
    optimizer over `tensors()` (the method's row-wise Adam, `RowAdam`).

    `revision[j]` counts the changes to row j made through this API (step, constrain,
    load_state_dict), so a `SampleCache` knows which of its images are out of date.
    """

    def __init__(self, latents: Latents) -> None:
        super().__init__()
        self.noise = nn.Parameter(latents["noise"].detach().clone(), requires_grad=False)
        condition = latents.get("condition")
        self.condition = (
            nn.Parameter(condition.detach().clone(), requires_grad=False) if condition is not None else None
        )
        self.revision = torch.zeros(len(self.noise), dtype=torch.long, device=self.noise.device)

    def __len__(self) -> int:
        return len(self.noise)

    def tensors(self) -> list[torch.Tensor]:
        return [self.noise] if self.condition is None else [self.noise, self.condition]

    def keys(self) -> tuple[str, ...]:
        return LATENT_KEYS[: len(self.tensors())]

    def sample_indices(self, n: int) -> torch.Tensor:
        """n distinct rows when n <= M (else with replacement), from the global CPU RNG."""
        rows = torch.randperm(len(self))[:n] if n <= len(self) else torch.randint(len(self), (n,))
        return rows.to(self.noise.device)

    def batch(self, rows: torch.Tensor, requires_grad: bool = False) -> Latents:
        """Copies of the rows; with `requires_grad` they are leaves whose gradients `step` takes."""
        return {
            key: tensor[rows].detach().requires_grad_(requires_grad)
            for key, tensor in zip(self.keys(), self.tensors(), strict=True)
        }

    def step(self, optimizer: RowAdam, rows: torch.Tensor, grads: Latents) -> None:
        """One update of `rows` by the owner's `optimizer` (built over `tensors()`), with each key's gradients."""
        optimizer.step(rows, [grads[key] for key in self.keys()])
        self.revision[rows] += 1

    @torch.no_grad()
    def constrain(self, rows: torch.Tensor, kind: str, clip: float = 3.0) -> None:
        """Keep the rows' z near the generator's prior (`constrain_noise`)."""
        if kind == "none":
            return
        self.noise[rows] = constrain_noise(self.noise[rows], kind, clip)
        self.revision[rows] += 1

    @torch.no_grad()
    def noise_norm(self) -> torch.Tensor:
        return self.noise.flatten(1).norm(dim=1).mean()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {key: tensor.detach().clone() for key, tensor in zip(self.keys(), self.tensors(), strict=True)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        for key, tensor in zip(self.keys(), self.tensors(), strict=True):
            if key not in state or state[key].shape != tensor.shape:
                got = None if key not in state else tuple(state[key].shape)
                raise ValueError(
                    f"latent bank '{key}' in the checkpoint has shape {got}, expected {tuple(tensor.shape)}"
                )
            tensor.copy_(state[key])
        self.revision += 1


def constrain_noise(z: torch.Tensor, kind: str, clip: float = 3.0) -> torch.Tensor:
    """`renormalize` each z to norm sqrt(d) (where N(0, I) samples concentrate), or `clip` each coordinate."""
    if kind == "none":
        return z
    if kind == "renormalize":
        d = z[0].numel()
        norms = z.flatten(1).norm(dim=1).clamp_min(1e-12).view((-1,) + (1,) * (z.dim() - 1))
        return z * (math.sqrt(d) / norms)
    if kind == "clip":
        return z.clamp(-clip, clip)
    raise ValueError(f"unknown latent constraint '{kind}'")


def initial_latents(
    generator: Generator, init: LatentInit, seed: int, labeled_images: Callable[[], torch.Tensor]
) -> Latents:
    """The bank's starting latents, seeded: z ~ N(0, I) (truncated if asked) and the class logits `init.classes`."""
    rng = torch.Generator().manual_seed(seed)
    latents = generator.sample_latents(init.bank_size, generator=rng, truncation=init.truncation)
    condition = generator.spec.condition
    if init.classes == "random" or condition == "none":
        return latents
    if condition != "class":
        raise UserError(
            f"method.latents.classes: '{init.classes}' needs a class-conditional generator; this one is"
            f" {condition}-conditioned, use 'random'"
        )
    if init.classes == "uniform":
        latents["condition"] = torch.zeros_like(latents["condition"])
    else:
        latents["condition"] = pseudo_condition(generator, labeled_images(), init.bank_size)
    return latents


def pseudo_condition(generator: Generator, images: torch.Tensor, bank_size: int) -> torch.Tensor:
    """P-SSL-style class logits: the generator's source classifier on the labeled images, cycled over the bank."""
    with torch.no_grad():
        logits = generator.source_logits(images).float()
    rows = torch.arange(bank_size, device=logits.device) % len(logits)
    return logits[rows].to(generator_device(generator))


def generator_device(generator: Generator) -> torch.device:
    tensor = next(iter(generator.buffers()), None)
    if tensor is None:
        tensor = next(iter(generator.parameters()))
    return tensor.device
