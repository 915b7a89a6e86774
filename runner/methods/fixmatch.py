"""`fixmatch`: FixMatch with *real* unlabeled data (weak view -> confident pseudo-label, strong view -> CE)."""

from __future__ import annotations

from typing import Any

import torch

from runner.methods.base import Method, TrainContext
from runner.methods.losses import make_unsup_loss
from runner.methods.semi_supervised import ssl_objective, two_views
from schemas import UserError
from schemas.methods import FixMatch as FixMatchConfig


class FixMatch(Method):
    config: FixMatchConfig

    def __init__(self, config: FixMatchConfig, ctx: TrainContext) -> None:
        super().__init__(config, ctx)
        if not ctx.data.has_unlabeled:
            raise UserError(
                "method.name: 'fixmatch' needs real unlabeled images, and this data split has none;"
                " use a dataset with unlabeled images or a generative method"
            )
        self.unsup = make_unsup_loss("fixmatch", threshold=config.threshold)

    def ssl_loss(
        self, iteration: int, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        unlabeled = self.ctx.data.unlabeled_batch(self.config.unlabeled_batch_size)
        views = two_views(self.ctx.data.augment, unlabeled, "strong_weak")
        assert self.unsup is not None
        return ssl_objective(self.ctx.classifier, images, labels, views, self.unsup, self.config.lambda_u)


def build_fixmatch(config: FixMatchConfig, ctx: TrainContext) -> Method:
    """FixMatch with real unlabeled data."""
    return FixMatch(config, ctx)
