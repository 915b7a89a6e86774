"""An exponential moving average of a model's weights (the classifier's `optim.ema`, the pretrained generator)."""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn


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
