"""The unsupervised losses L_u, on a model's outputs for two views of the same images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from runner.methods.confidence import ConfidencePolicy

Outputs = tuple[torch.Tensor, torch.Tensor]
"""A classifier's `(logits, features)` for one view."""


class UnsupLoss(Protocol):
    """L_u(online view outputs, target view outputs, the images' indices in their pool) -> (loss, metrics).

    The indices (into the real unlabeled set, or the latent bank) matter only to policies that remember each image.
    """

    def __call__(
        self, online: Outputs, target: Outputs, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def full(x: torch.Tensor) -> torch.Tensor:
    """Losses are taken in at least float32 (autocast outputs are bf16/fp16); float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def feature_cosine(online: torch.Tensor, target: torch.Tensor, stop_grad: bool = True) -> torch.Tensor:
    """mean_j [1 - cos(f(aug1(x_j)), stopgrad f(aug2(x_j)))]: touches the feature extractor only."""
    if stop_grad:
        target = target.detach()
    return (1.0 - F.cosine_similarity(full(online), full(target), dim=1)).mean()


class PseudoLabelLoss:
    """mean_b w_b * CE(online_b, argmax q_b) (+ the policy's own term): q the target view's probabilities as the
    policy reads them, w its confidence policy's weights. With `learn`, the policy's state takes in the batch."""

    def __init__(self, policy: ConfidencePolicy, learn: bool = True) -> None:
        self.policy, self.learn = policy, learn

    def __call__(
        self, online: Outputs, target: Outputs, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        probs = self.policy.align(torch.softmax(full(target[0].detach()), dim=1), self.learn)
        pseudo = probs.max(dim=1).indices
        weight = self.policy.weigh(probs, index, self.learn)
        loss = (F.cross_entropy(full(online[0]), pseudo, reduction="none") * weight).mean()
        metrics = {"unsup/mask_rate": weight.detach().mean(), **self.policy.metrics()}
        extra = self.policy.regularizer(online[0], weight)
        if extra is not None:
            loss = loss + extra
            metrics["unsup/regularizer"] = extra.detach()
        return loss, metrics


POLICIES = ("fixmatch", "flexmatch", "freematch", "softmatch")
"""The pseudo-label losses, one per confidence policy (runner/methods/confidence.py)."""


def make_unsup_loss(
    name: str, stop_grad: bool = True, policy: ConfidencePolicy | None = None, learn: bool = True
) -> UnsupLoss | None:
    """The L_u a method block names: `feature_cosine`, a pseudo-label loss with `policy`, or None for `none`."""
    if name == "feature_cosine":

        def cosine(
            online: Outputs, target: Outputs, index: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return feature_cosine(online[1], target[1], stop_grad), {}

        return cosine
    if name in POLICIES:
        if policy is None:
            raise ValueError(f"unsup_loss '{name}' needs its confidence policy")
        return PseudoLabelLoss(policy, learn)
    if name == "none":
        return None
    raise ValueError(f"unknown unsup_loss '{name}'")
