"""`fixmatch`, `flexmatch`, `freematch`, `softmatch`: FixMatch's step with *real* unlabeled data (weak view ->
pseudo-label, strong view -> CE), each with its own confidence policy (runner/methods/confidence.py)."""

from __future__ import annotations

from typing import Any

import torch

from runner.methods.base import Method, TrainContext
from runner.methods.confidence import make_policy
from runner.methods.losses import PseudoLabelLoss
from runner.methods.semi_supervised import ssl_objective, two_views
from schemas import UserError
from schemas.methods import FixMatch as FixMatchConfig
from schemas.methods import FlexMatch as FlexMatchConfig
from schemas.methods import FreeMatch as FreeMatchConfig
from schemas.methods import RealDataSSL
from schemas.methods import SoftMatch as SoftMatchConfig


class FixMatch(Method):
    """One SSL step for every real-data method; `config.name` picks the confidence policy."""

    config: RealDataSSL

    def __init__(self, config: RealDataSSL, ctx: TrainContext) -> None:
        super().__init__(config, ctx)
        data = ctx.data
        if not data.has_unlabeled:
            raise UserError(
                f"method.name: '{config.name}' needs real unlabeled images, and this data split has none;"
                " use a dataset with unlabeled images or a generative method"
            )
        self.policy = make_policy(
            config.name, config, data.num_classes, data.unlabeled_count, data.device, ctx.dist.gather_batches
        )
        self.unsup = PseudoLabelLoss(self.policy)

    def ssl_loss(
        self, iteration: int, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        unlabeled, index = self.ctx.data.indexed_unlabeled_batch(self.config.unlabeled_batch_size)
        views = two_views(self.ctx.data.augment, unlabeled, "strong_weak")
        return ssl_objective(self.ctx.model, images, labels, views, self.unsup, self.config.lambda_u, index)

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state.get("policy", {}))  # a checkpoint from before policies: FixMatch's none


def build_fixmatch(config: FixMatchConfig, ctx: TrainContext) -> Method:
    """FixMatch with real unlabeled data."""
    return FixMatch(config, ctx)


def build_flexmatch(config: FlexMatchConfig, ctx: TrainContext) -> Method:
    """FlexMatch with real unlabeled data."""
    return FixMatch(config, ctx)


def build_freematch(config: FreeMatchConfig, ctx: TrainContext) -> Method:
    """FreeMatch with real unlabeled data."""
    return FixMatch(config, ctx)


def build_softmatch(config: SoftMatchConfig, ctx: TrainContext) -> Method:
    """SoftMatch with real unlabeled data."""
    return FixMatch(config, ctx)
