"""R(Lam_B): how far the synthetic batch's features are from the real labeled ones (theta held fixed)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from runner.methods.losses import full

Resemblance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""R(features of x~, features of real labeled images) -> scalar; the real features carry no gradient."""

MMD_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Multiples of the mean pairwise squared distance used as RBF bandwidths.

The scale is part of the function (not detached), so the gradient is the gradient of the reported R."""


def mmd(synthetic: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Biased MMD^2 with a sum of RBF kernels whose bandwidths scale with the mean pairwise squared distance."""
    synthetic, real = full(synthetic), full(real.detach())
    joint = torch.cat([synthetic, real])
    sq_norm = joint.pow(2).sum(1)
    sq_dist = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * joint @ joint.T).clamp_min(0.0)
    n = len(joint)
    scale = (sq_dist.sum() / max(n * (n - 1), 1)).clamp_min(1e-12)
    kernel = sum(torch.exp(-sq_dist / (scale * bandwidth)) for bandwidth in MMD_BANDWIDTHS)
    m = len(synthetic)
    return kernel[:m, :m].mean() + kernel[m:, m:].mean() - 2.0 * kernel[:m, m:].mean()


def mean_feature_l2(synthetic: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Squared distance between the mean features of the two sets."""
    return (full(synthetic).mean(0) - full(real.detach()).mean(0)).pow(2).sum()


def nearest_cosine(synthetic: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """mean_j [1 - max_i cos(f(x~_j), f(x_i))]: each synthetic sample is pulled toward its nearest real one."""
    similarity = F.normalize(full(synthetic), dim=1) @ F.normalize(full(real.detach()), dim=1).T
    return (1.0 - similarity.max(dim=1).values).mean()


RESEMBLANCES: dict[str, Resemblance] = {
    "mmd": mmd,
    "mean_feature_l2": mean_feature_l2,
    "nearest_cosine": nearest_cosine,
}


def make_resemblance(name: str) -> Resemblance | None:
    """The R a `meta.resemblance` names, or None for `none`."""
    if name == "none":
        return None
    if name not in RESEMBLANCES:
        raise ValueError(f"unknown resemblance '{name}'")
    return RESEMBLANCES[name]
