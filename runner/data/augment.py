"""Batched, on-device augmentation of float images in [0, 1], shaped N x C x H x W.

Every op is differentiable with respect to the images where it is not piecewise constant
(posterize), so a meta-gradient can flow through augmented synthetic samples.

All randomness comes from the global torch RNG of the images' device, and the amount
drawn never depends on the data, so restoring RNG states on resume replays the same
augmentations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from schemas.data import Augment

STRONG_OPS = (
    "autocontrast",
    "brightness",
    "contrast",
    "solarize",
    "posterize",
    "sharpness",
    "rotate",
    "shear_x",
    "shear_y",
)
GEOMETRIC = ("rotate", "shear_x", "shear_y")
MAX_ROTATE_DEG = 30.0
MAX_SHEAR = 0.3


def per_sample(values: torch.Tensor) -> torch.Tensor:
    """A length-N vector viewed for broadcasting against N x C x H x W."""
    return values.view(-1, 1, 1, 1)


def _rand(x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.shape[0], device=x.device)


def flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    return torch.where(per_sample(_rand(x) < 0.5), x.flip(-1), x)


def translate(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image by up to `pad` pixels per axis: reflect-pad once, then gather a per-image window."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offset_y = (_rand(x) * (2 * pad + 1)).long().clamp_(max=2 * pad)
    offset_x = (_rand(x) * (2 * pad + 1)).long().clamp_(max=2 * pad)
    rows = offset_y[:, None] + torch.arange(h, device=x.device)
    cols = offset_x[:, None] + torch.arange(w, device=x.device)
    padded = padded.gather(2, rows[:, None, :, None].expand(n, c, h, padded.shape[-1]))
    return padded.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: factor 0 gives `degenerate`, 1 the image, above 1 extrapolates."""
    return (degenerate + per_sample(factor) * (x - degenerate)).clamp(0.0, 1.0)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3 ones, centre weight 5, over 13), as a box filter plus extra centre weight."""
    box = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1) * 9.0
    return (box + 4.0 * x) / 13.0


def photometric(op: str, x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """One photometric op at a per-sample magnitude in [0, 1)."""
    factor = 0.1 + 1.8 * magnitude  # enhance factors in [0.1, 1.9]
    if op == "autocontrast":
        low = x.amin(dim=(2, 3), keepdim=True)
        high = x.amax(dim=(2, 3), keepdim=True)
        return torch.where(high > low, (x - low) / (high - low).clamp_min(1e-6), x)
    if op == "brightness":
        return blend(torch.zeros_like(x), x, factor)
    if op == "contrast":
        return blend(grayscale(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), x, factor)
    if op == "solarize":
        return torch.where(x >= per_sample(magnitude), 1.0 - x, x)
    if op == "posterize":
        step = per_sample(torch.pow(2.0, (magnitude * 5).floor()))  # keep 8 down to 4 bits
        return (torch.floor(x * 255.0 / step) * step / 255.0).clamp(0.0, 1.0)
    if op == "sharpness":
        return blend(smooth(x), x, factor)
    raise ValueError(f"unknown photometric op {op}")


def affine(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Rotate or shear the images whose `op` is geometric, in one grid_sample; the rest pass through unchanged."""
    signed = 2.0 * magnitude - 1.0
    angle = signed * math.radians(MAX_ROTATE_DEG)
    shear = signed * MAX_SHEAR
    index = {name: STRONG_OPS.index(name) for name in GEOMETRIC}
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    rotate = op == index["rotate"]
    theta[:, 0, 0] = torch.where(rotate, angle.cos(), theta[:, 0, 0])
    theta[:, 0, 1] = torch.where(rotate, -angle.sin(), torch.where(op == index["shear_x"], shear, 0.0))
    theta[:, 1, 0] = torch.where(rotate, angle.sin(), torch.where(op == index["shear_y"], shear, 0.0))
    theta[:, 1, 1] = torch.where(rotate, angle.cos(), theta[:, 1, 1])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample x - 0.5 with zero padding so the uncovered corners come out mid-grey, as in FixMatch.
    moved = F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5
    geometric = (op >= index["rotate"]) & (op <= index["shear_y"])
    return torch.where(per_sample(geometric), moved.clamp(0.0, 1.0), x)


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Grey out one size x size square per image, centred anywhere (clipped at the borders)."""
    if size <= 0:
        return x
    h, w = x.shape[-2:]
    centre_y = (_rand(x) * h).floor()
    centre_x = (_rand(x) * w).floor()
    top, left = centre_y - size // 2, centre_x - size // 2
    ys = torch.arange(h, device=x.device, dtype=x.dtype)
    xs = torch.arange(w, device=x.device, dtype=x.dtype)
    inside_y = (ys[None] >= top[:, None]) & (ys[None] < top[:, None] + size)
    inside_x = (xs[None] >= left[:, None]) & (xs[None] < left[:, None] + size)
    mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    return torch.where(mask, torch.full_like(x, 0.5), x)


class Augmenter:
    """Weak (flip + translate) and strong (weak + `strong_ops` random ops per image + cutout) views."""

    def __init__(self, config: Augment) -> None:
        self.config = config

    def weak(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.flip:
            x = flip(x)
        return translate(x, round(self.config.crop_padding * x.shape[-1]))

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype  # per-sample magnitudes are float32 and would promote half-precision images
        x = self.weak(x)
        for _ in range(self.config.strong_ops):
            op = (_rand(x) * len(STRONG_OPS)).long().clamp_(max=len(STRONG_OPS) - 1)
            magnitude = _rand(x)
            # Each photometric op runs on the whole batch and is kept where chosen: no data-dependent
            # shapes (so no device sync), and the RNG draws are the same whatever the images hold.
            for index, name in enumerate(STRONG_OPS):
                if name not in GEOMETRIC:
                    x = torch.where(per_sample(op == index), photometric(name, x, magnitude), x)
            x = affine(x, op, magnitude)
        return cutout(x, round(self.config.cutout * x.shape[-1])).to(dtype)
