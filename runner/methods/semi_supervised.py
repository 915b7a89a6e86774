"""Phase (ii)'s objective: L_sup + lambda_u * L_u, with the labeled batch and both unlabeled views in one forward."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runner.methods.losses import UnsupLoss, full


def two_views(augment: Any, images: torch.Tensor, views: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(online, target) views: `strong_weak` (online strong, target weak) or `weak_weak` (two weak draws)."""
    if views == "strong_weak":
        return augment.strong(images), augment.weak(images)
    if views == "weak_weak":
        return augment.weak(images), augment.weak(images)
    raise ValueError(f"unknown views '{views}'")


def ssl_objective(
    classifier: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    views: tuple[torch.Tensor, torch.Tensor],
    unsup: UnsupLoss,
    lambda_u: float,
    index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One forward of `[labeled, online, target]`, so BatchNorm sees the whole batch as in FixMatch.

    `index`: the unlabeled images' indices in their pool, for confidence policies that remember each image.
    """
    n_l, n_u = len(images), len(views[0])
    logits, features = classifier(torch.cat([images, *views]))
    sup = F.cross_entropy(full(logits[:n_l]), labels)
    online = (logits[n_l : n_l + n_u], features[n_l : n_l + n_u])
    target = (logits[n_l + n_u :], features[n_l + n_u :])
    unsup_loss, metrics = unsup(online, target, index)
    loss = sup + lambda_u * unsup_loss
    return loss, {"loss/sup": sup.detach(), "loss/unsup": unsup_loss.detach(), **metrics}
