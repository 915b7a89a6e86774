"""Adam over the rows of the latent bank: only the latents in a meta-batch move.

`torch.optim.Adam` on the whole bank would keep moving latents that were *not* in the
batch (their stale first moments stay non-zero), and would count one step for all of
them. Here every row has its own moments and its own step count, so a latent's updates
are exactly Adam's over the meta-steps it took part in.
"""

from __future__ import annotations

from typing import Any

import torch

from runner.common import portable


class RowAdam:
    def __init__(
        self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        rows = {len(p) for p in params}
        if len(rows) != 1:
            raise ValueError(f"every bank tensor needs the same number of rows, got {sorted(rows)}")
        self.params = params
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = torch.zeros(rows.pop(), dtype=torch.float64, device=params[0].device)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """One Adam update of `params[i][rows]` with `grads[i]` (shaped like those rows); `rows` must be unique."""
        beta1, beta2 = self.betas
        self.steps[rows] += 1
        t = self.steps[rows]
        correction1 = (1 - beta1**t).to(self.params[0].dtype)
        correction2 = (1 - beta2**t).to(self.params[0].dtype)
        for param, exp_avg, exp_avg_sq, grad in zip(self.params, self.exp_avg, self.exp_avg_sq, grads, strict=True):
            shape = (-1,) + (1,) * (param.dim() - 1)
            m = exp_avg[rows].mul_(beta1).add_(grad, alpha=1 - beta1)
            v = exp_avg_sq[rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            exp_avg[rows] = m
            exp_avg_sq[rows] = v
            denom = portable.sqrt(v / correction2.view(shape)).add_(self.eps)
            param[rows] = param[rows] - self.lr * (m / correction1.view(shape)) / denom

    def state_dict(self) -> dict[str, Any]:
        return {
            "exp_avg": [t.clone() for t in self.exp_avg],
            "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
            "steps": self.steps.clone(),
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for mine, theirs in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"], strict=True):
            mine.copy_(theirs)
        self.steps.copy_(state["steps"])
