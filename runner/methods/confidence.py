"""Confidence policies: how the confidence of a pseudo-label becomes its weight in the pseudo-label loss L_u.

One concept behind FixMatch, FlexMatch, FreeMatch and SoftMatch. The pseudo-label step is the same for all of
them (`losses.PseudoLabelLoss`): the target (weak) view's probabilities q give the pseudo-label argmax q, and the
online (strong) view is trained on it with cross-entropy times the policy's weight. The policies differ only in
that weight and in what they remember between steps:

- `fixmatch`: 1 if max q >= tau, else 0 (Sohn et al., 2020).
- `flexmatch`: curriculum pseudo-labeling (Zhang et al., 2021): per-class thresholds tau * M(beta(c)) from each
  class's learning effect sigma(c), the number of pool images whose latest confident prediction is c.
- `freematch`: self-adaptive thresholds (Wang et al., 2023): a global EMA of the confidence times the per-class
  EMA of the probabilities, max-normalised; plus the self-adaptive fairness term L_f.
- `softmatch`: a truncated Gaussian weight from the EMA mean and variance of the confidence (Chen et al., 2023),
  on probabilities under uniform alignment.

A policy's state is tensors only, so it travels in the method's state_dict and a checkpoint (weights_only).
`learn=False` weighs with the current state without changing it (the meta phase's virtual losses).
Under torchrun a policy learns from the global batch: `gather` concatenates every rank's rows (the identity on one
process), so each rank updates the same statistics from the same rows, and the ranks' states stay identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from runner.methods.losses import full

Gather = Callable[[torch.Tensor], torch.Tensor]


def one_process(rows: torch.Tensor) -> torch.Tensor:
    """The global batch of a single process: its own rows."""
    return rows


class ConfidencePolicy:
    """FixMatch's fixed threshold: weight 1 where max q >= tau. Subclasses keep state in `state_names`."""

    state_names: tuple[str, ...] = ()

    def __init__(self, threshold: float, gather: Gather = one_process) -> None:
        self.threshold = threshold
        self.gather = gather  # this rank's batch rows -> every rank's (Distributed.gather_batches)

    def align(self, probs: torch.Tensor, learn: bool) -> torch.Tensor:
        """The probabilities the pseudo-label and the weight are read from (SoftMatch aligns them)."""
        return probs

    def weigh(self, probs: torch.Tensor, index: torch.Tensor | None, learn: bool) -> torch.Tensor:
        """Each image's weight in [0, 1], given its (aligned) target probabilities and its index in the pool."""
        return (probs.max(dim=1).values >= self.threshold).to(probs.dtype)

    def regularizer(self, online_logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """An extra term of L_u (FreeMatch's fairness), or None."""
        return None

    def metrics(self) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone() for name in self.state_names}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.state_names:
            getattr(self, name).copy_(state[name])


MAPPINGS = {
    "convex": lambda beta: beta / (2.0 - beta),
    "linear": lambda beta: beta,
    "concave": lambda beta: torch.log1p(beta) / math.log(2.0),
}
"""FlexMatch's non-linear mappings M(beta), each with M(0) = 0 and M(1) = 1."""


class FlexMatchPolicy(ConfidencePolicy):
    """T(c) = tau * M(beta(c)), beta(c) = sigma(c) / max(max_c sigma, N - sum_c sigma) with the threshold warm-up,
    sigma(c) / max_c sigma without it.

    `selected[n]` is image n's latest prediction with confidence >= tau, or -1 while it has none (unused). An image's
    record changes only when it is predicted confidently again. The weight of a batch uses the thresholds from before
    the batch; the batch then updates the records.
    """

    state_names = ("selected",)

    def __init__(
        self,
        threshold: float,
        warmup: bool,
        mapping: str,
        num_classes: int,
        pool_size: int,
        device: torch.device,
        gather: Gather = one_process,
    ) -> None:
        super().__init__(threshold, gather)
        self.warmup, self.mapping, self.num_classes = warmup, MAPPINGS[mapping], num_classes
        self.selected = torch.full((pool_size,), -1, dtype=torch.long, device=device)

    def learning_effect(self) -> torch.Tensor:
        """beta(c), each class's normalised learning effect."""
        used = self.selected[self.selected >= 0]
        sigma = torch.bincount(used, minlength=self.num_classes).to(torch.float64)
        scale = sigma.max()
        if self.warmup:
            scale = torch.maximum(scale, torch.tensor(len(self.selected) - len(used), dtype=torch.float64))
        return sigma / scale.clamp_min(1.0)  # scale 0 only when sigma is all 0 (a count otherwise: >= 1)

    def thresholds(self) -> torch.Tensor:
        return self.threshold * self.mapping(self.learning_effect())

    def weigh(self, probs: torch.Tensor, index: torch.Tensor | None, learn: bool) -> torch.Tensor:
        confidence, pseudo = probs.max(dim=1)
        weight = (confidence >= self.thresholds().to(probs.device, probs.dtype)[pseudo]).to(probs.dtype)
        if learn:
            if index is None:
                raise ValueError("flexmatch remembers each image's prediction: pass the images' pool indices")
            confident = (confidence >= self.threshold).long()
            rows = self.gather(torch.stack([index.to(pseudo.device), pseudo, confident], dim=1))
            self.record(rows[:, 0].to(self.selected.device), rows[:, 1], rows[:, 2].bool())
        return weight

    def record(self, index: torch.Tensor, pseudo: torch.Tensor, confident: torch.Tensor) -> None:
        """selected[index] = pseudo where confident; an image drawn twice in one batch keeps its last draw's label."""
        positions = torch.arange(len(index), device=index.device)
        last = torch.full_like(self.selected, -1).scatter_reduce(0, index, positions, "amax")
        keep = confident.to(index.device) & (last[index] == positions)
        self.selected[index[keep]] = pseudo.to(index.device)[keep]

    def metrics(self) -> dict[str, torch.Tensor]:
        return {"unsup/threshold_mean": self.thresholds().mean().float()}


class FreeMatchPolicy(ConfidencePolicy):
    """tau_t(c) = MaxNorm(p~_t)(c) * tau_t, with EMAs (decay lambda) from tau_0 = 1/C and p~_0 = h~_0 = 1/C.

    tau_t is the EMA of the batch's mean confidence, p~_t of its mean probabilities, h~_t of the histogram of its
    pseudo-labels (for the fairness term). The batch updates the EMAs first, then is weighed with them.
    """

    state_names = ("global_threshold", "class_probs", "class_histogram")

    def __init__(
        self,
        ema_decay: float,
        fairness_weight: float,
        num_classes: int,
        device: torch.device,
        gather: Gather = one_process,
    ) -> None:
        super().__init__(0.0, gather)
        self.decay, self.fairness_weight, self.num_classes = ema_decay, fairness_weight, num_classes
        uniform = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64, device=device)
        self.global_threshold = torch.tensor(1.0 / num_classes, dtype=torch.float64, device=device)
        self.class_probs = uniform.clone()
        self.class_histogram = uniform.clone()

    def thresholds(self) -> torch.Tensor:
        return self.class_probs / self.class_probs.max() * self.global_threshold

    def weigh(self, probs: torch.Tensor, index: torch.Tensor | None, learn: bool) -> torch.Tensor:
        confidence, pseudo = probs.max(dim=1)
        if learn:
            decay, batch, labels = self.decay, self.gather(probs.detach().to(torch.float64)), self.gather(pseudo)
            histogram = torch.bincount(labels, minlength=self.num_classes).to(torch.float64) / len(labels)
            self.global_threshold.mul_(decay).add_((1 - decay) * batch.max(dim=1).values.mean())
            self.class_probs.mul_(decay).add_((1 - decay) * batch.mean(dim=0))
            self.class_histogram.mul_(decay).add_((1 - decay) * histogram)
        return (confidence >= self.thresholds().to(probs.dtype)[pseudo]).to(probs.dtype)

    def regularizer(self, online_logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """fairness_weight * L_f, L_f = -H(SumNorm(p~_t / h~_t), SumNorm(p_bar / h_bar)) over the kept images.

        p_bar is the kept images' mean online (strong-view) probabilities, h_bar the histogram of their online
        predictions; H(p, q) = -sum p log q. A class with an empty histogram bin gets weight 0 (1/0 is taken as 0).
        """
        if self.fairness_weight == 0:
            return None
        kept = weight > 0
        if not bool(kept.any()):
            return online_logits.new_zeros((), dtype=torch.float32)
        online = torch.softmax(full(online_logits[kept]), dim=1)
        histogram = torch.bincount(online.argmax(dim=1), minlength=self.num_classes).to(online.dtype)
        mean = sum_norm(online.mean(dim=0) * inverse_or_zero(histogram / histogram.sum()))
        target = sum_norm(self.class_probs * inverse_or_zero(self.class_histogram)).to(online.dtype)
        return self.fairness_weight * (target * torch.log(mean + 1e-12)).sum()

    def metrics(self) -> dict[str, torch.Tensor]:
        return {"unsup/threshold_global": self.global_threshold.float()}


def sum_norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum()


def inverse_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(1.0 / x, nan=0.0, posinf=0.0, neginf=0.0)


class SoftMatchPolicy(ConfidencePolicy):
    """lambda(p) = exp(-(max p - mu_t)^2 / (2 sigma_t^2 / n_sigma^2)) below mu_t, 1 at or above it.

    mu_t and sigma_t^2 are EMAs (decay m, from mu_0 = 1/C and sigma_0^2 = 1) of the batch's mean confidence and its
    unbiased variance (N/(N-1) times the batch variance). n_sigma = 1 is the paper's equation as printed; the
    published results used 2 (USB's default), a Gaussian half as wide. With uniform alignment the probabilities are
    first mapped to Normalize(p * u(C) / p^), p^ the EMA of the batch's mean probabilities (from its first batch).
    """

    state_names = ("confidence_mean", "confidence_var", "mean_probs", "aligned_batches")

    def __init__(
        self,
        ema_decay: float,
        n_sigma: float,
        uniform_alignment: bool,
        num_classes: int,
        device: torch.device,
        gather: Gather = one_process,
    ) -> None:
        super().__init__(0.0, gather)
        self.decay, self.n_sigma, self.uniform_alignment = ema_decay, n_sigma, uniform_alignment
        self.confidence_mean = torch.tensor(1.0 / num_classes, dtype=torch.float64, device=device)
        self.confidence_var = torch.tensor(1.0, dtype=torch.float64, device=device)
        self.mean_probs = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64, device=device)
        self.aligned_batches = torch.zeros((), dtype=torch.long, device=device)

    def align(self, probs: torch.Tensor, learn: bool) -> torch.Tensor:
        if not self.uniform_alignment:
            return probs
        if learn:
            batch_mean = self.gather(probs.detach().to(torch.float64)).mean(dim=0)
            moved = self.mean_probs * self.decay + (1 - self.decay) * batch_mean
            self.mean_probs.copy_(torch.where(self.aligned_batches == 0, batch_mean, moved))  # no host sync
            self.aligned_batches += 1
        aligned = probs / self.mean_probs.to(probs.dtype).clamp_min(torch.finfo(probs.dtype).tiny)
        return aligned / aligned.sum(dim=1, keepdim=True)

    def weigh(self, probs: torch.Tensor, index: torch.Tensor | None, learn: bool) -> torch.Tensor:
        confidence = probs.max(dim=1).values
        if learn:
            batch = self.gather(confidence.detach().to(torch.float64))
            self.confidence_mean.mul_(self.decay).add_((1 - self.decay) * batch.mean())
            if len(batch) > 1:  # the unbiased variance needs two images
                self.confidence_var.mul_(self.decay).add_((1 - self.decay) * batch.var(correction=1))
        return self.weights_at(confidence)

    def weights_at(self, confidence: torch.Tensor) -> torch.Tensor:
        below = (confidence - self.confidence_mean.to(confidence.dtype)).clamp(max=0.0)
        var = (self.confidence_var / self.n_sigma**2).clamp_min(torch.finfo(torch.float64).tiny)
        return torch.exp(-below.pow(2) / (2 * var.to(confidence.dtype)))

    def metrics(self) -> dict[str, torch.Tensor]:
        return {
            "unsup/confidence_mean": self.confidence_mean.float(),
            "unsup/confidence_var": self.confidence_var.float(),
        }


def make_policy(
    name: str,
    options: Any,
    num_classes: int,
    pool_size: int,
    device: torch.device,
    gather: Gather = one_process,
) -> ConfidencePolicy:
    """The policy `name` (a method's name, or a generative method's unsup_loss) with its options from `options`;
    `gather` gives it the global batch under torchrun."""
    if name == "fixmatch":
        return ConfidencePolicy(options.threshold, gather)
    if name == "flexmatch":
        return FlexMatchPolicy(
            options.threshold, options.threshold_warmup, options.mapping, num_classes, pool_size, device, gather
        )
    if name == "freematch":
        return FreeMatchPolicy(options.ema_decay, options.fairness_weight, num_classes, device, gather)
    if name == "softmatch":
        return SoftMatchPolicy(
            options.ema_decay, options.n_sigma, options.uniform_alignment, num_classes, device, gather
        )
    raise ValueError(f"unknown confidence policy '{name}'")
