"""The unsupervised losses L_u, on a model's outputs for two views of the same images."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Outputs = tuple[torch.Tensor, torch.Tensor]
"""A classifier's `(logits, features)` for one view."""

UnsupLoss = Callable[[Outputs, Outputs], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""L_u(online view outputs, target view outputs) -> (loss, metrics)."""


def full(x: torch.Tensor) -> torch.Tensor:
    """Losses are taken in at least float32 (autocast outputs are bf16/fp16); float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def feature_cosine(online: torch.Tensor, target: torch.Tensor, stop_grad: bool = True) -> torch.Tensor:
    """mean_j [1 - cos(f(aug1(x_j)), stopgrad f(aug2(x_j)))]: touches the feature extractor only."""
    if stop_grad:
        target = target.detach()
    return (1.0 - F.cosine_similarity(full(online), full(target), dim=1)).mean()


def fixmatch(
    online_logits: torch.Tensor, target_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the online (strong) view against confident pseudo-labels of the target (weak) view.

    Returns the loss (mean over all images; those below the threshold count as zero) and the fraction kept.
    """
    probs = torch.softmax(full(target_logits.detach()), dim=1)
    confidence, pseudo = probs.max(dim=1)
    mask = (confidence >= threshold).to(probs.dtype)
    loss = (F.cross_entropy(full(online_logits), pseudo, reduction="none") * mask).mean()
    return loss, mask.mean()


def make_unsup_loss(name: str, stop_grad: bool = True, threshold: float = 0.95) -> UnsupLoss | None:
    """The L_u a method block names (`feature_cosine`, `fixmatch`), or None for `none`."""
    if name == "feature_cosine":

        def cosine(online: Outputs, target: Outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return feature_cosine(online[1], target[1], stop_grad), {}

        return cosine
    if name == "fixmatch":

        def pseudo_label(online: Outputs, target: Outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            loss, mask_rate = fixmatch(online[0], target[0], threshold)
            return loss, {"unsup/mask_rate": mask_rate.detach()}

        return pseudo_label
    if name == "none":
        return None
    raise ValueError(f"unknown unsup_loss '{name}'")
