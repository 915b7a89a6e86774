"""`supervised`: L_sup only (the `Method` base class)."""

from __future__ import annotations

from runner.methods.base import Method, TrainContext
from schemas.methods import Supervised


def build_supervised(config: Supervised, ctx: TrainContext) -> Method:
    """Cross-entropy on the labeled set only."""
    return Method(config, ctx)
