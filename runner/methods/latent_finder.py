"""A shared latent "finder": a small network that maps each bank row's fixed latents to the latents generated.

With a bank of free rows, a meta-step moves only the rows in its batch (each row about once every
`bank_size / latent_batch_size` meta-steps). The finder's weights are shared, so every meta-step moves the
latents of every row. Its last layers start at zero, so it starts as the identity: the bank's first images
are those of the generative baseline with the same latents.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from runner.generators.base import Latents
from runner.methods.latent_bank import constrain_noise


class LatentFinder(nn.Module):
    """(z, a) -> (z + dz, a + da) with [dz, da] = MLP([z, a]).

    `renormalize` keeps each row's norm |z| (rather than sqrt(d), as the bank's constraint does) so that the
    untrained finder is exactly the identity; `clip` bounds each coordinate.
    """

    def __init__(self, shapes: dict[str, torch.Size], hidden: int, constraint: str, clip: float) -> None:
        super().__init__()
        self.keys = tuple(shapes)
        self.shapes = shapes
        self.sizes = [math.prod(shape) for shape in shapes.values()]
        width = sum(self.sizes)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, width))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.constraint, self.clip = constraint, clip

    def forward(self, latents: Latents) -> Latents:
        flat = torch.cat([latents[key].flatten(1).float() for key in self.keys], dim=1)
        moved = flat + self.net(flat)
        out: Latents = {}
        for key, part in zip(self.keys, moved.split(self.sizes, dim=1), strict=True):
            out[key] = part.view(-1, *self.shapes[key]).to(latents[key].dtype)
        noise = out["noise"]
        if self.constraint == "renormalize":
            norms = noise.flatten(1).norm(dim=1).clamp_min(1e-12)
            noise = noise * (latents["noise"].flatten(1).norm(dim=1) / norms).view((-1,) + (1,) * (noise.dim() - 1))
        else:
            noise = constrain_noise(noise, self.constraint, self.clip)
        out["noise"] = noise
        return out
