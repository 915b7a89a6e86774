"""Optimizer and LR schedule from the recipe's `optim` block (its EMA of weights: runner/common/ema.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from runner.common import portable
from schemas.training import LRSchedule, Optimizer


def build_optimizer(config: Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters, as is usual for SSL training.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.name == "adam":
        return portable.adam(groups, lr=config.lr)
    return portable.adamw(groups, lr=config.lr)


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
