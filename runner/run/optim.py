"""Optimizer, LR schedule and EMA of weights, from the recipe's `optim` block."""

from __future__ import annotations

import math
from copy import deepcopy

import torch
from torch import nn

from schemas.training import LRSchedule, Optimizer


def build_optimizer(config: Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters, as is usual for SSL training.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(config: LRSchedule, iteration: int, total: int) -> float:
    """Multiplier of the base learning rate at `iteration` (linear warm-up, then the schedule)."""
    if iteration < config.warmup_iterations:
        return (iteration + 1) / config.warmup_iterations
    if config.name == "constant":
        return 1.0
    if config.name == "step":
        return config.gamma ** (iteration // config.step_size)
    progress = (iteration - config.warmup_iterations) / max(1, total - config.warmup_iterations)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def build_scheduler(
    config: LRSchedule, optimizer: torch.optim.Optimizer, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(config, it, total))


class EMA:
    """Exponential moving average of a model's parameters; buffers (BN statistics) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """One step toward `model`, at this EMA's decay or the given one (a warm-up schedule)."""
        keep = self.decay if decay is None else decay
        for average, current in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(current.detach(), 1.0 - keep)
        for average, current in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
