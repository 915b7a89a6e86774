"""The method contract the loop drives: phase (i) `meta_phase`, phase (ii) `ssl_loss`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from runner.classifiers.base import Classifier
from runner.distributed import SINGLE, Distributed

if TYPE_CHECKING:
    from runner.data.device_data import DeviceData
    from runner.generators.base import Generator
    from runner.tracking import Tracker


@dataclass
class TrainContext:
    """Everything a method may use besides its own config. The loop owns the optimizer, scheduler and EMA.

    Two handles on one classifier, as nanoGPT keeps `model` and `raw_model`: phase (ii)'s forward goes through
    `model` (DistributedDataParallel under torchrun, which averages the gradients over ranks; the classifier itself
    otherwise); `classifier` is the raw module, for phase (i)'s `functional_call` and anything reading its blocks.
    """

    classifier: Classifier
    data: DeviceData
    generator: Generator | None
    autocast: Callable[[], AbstractContextManager[Any]]
    current_lr: Callable[[], float]
    seed: int
    dist: Distributed = SINGLE
    model: nn.Module = field(default=None)  # type: ignore[assignment]  # the classifier itself unless wrapped

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = self.classifier


class Method:
    """Base method: supervised cross-entropy. Subclasses add an unsupervised term and/or a meta phase.

    What a method needs and does (a generator, a meta phase) is declared by its config block (schemas/methods.py).
    """

    def __init__(self, config: Any, ctx: TrainContext) -> None:
        self.config = config
        self.ctx = ctx

    def supervised_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits, _ = self.ctx.model(images)
        loss = F.cross_entropy(logits, labels)
        return loss, {"loss/sup": loss.detach()}

    def ssl_loss(
        self, iteration: int, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Phase (ii): the loss to minimise this iteration, given a weakly augmented labeled batch."""
        return self.supervised_loss(images, labels)

    def meta_phase(self, iteration: int, steps: int) -> dict[str, Any]:
        """Phase (i): `steps` updates of whatever the method meta-learns. No-op by default."""
        return {}

    def log_artifacts(self, iteration: int, tracker: Tracker) -> None:
        """Log method-specific pictures (sample grids) at evaluation time."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
