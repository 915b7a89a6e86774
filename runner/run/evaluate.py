"""Test-set evaluation: top-1 accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runner.distributed import SINGLE, Distributed


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    per_class_accuracy: list[float]
    confusion: torch.Tensor  # K x K counts, rows = true class

    def metrics(self, classes: list[str], prefix: str = "test") -> dict[str, float]:
        out = {f"{prefix}/accuracy": self.accuracy, f"{prefix}/loss": self.loss}
        for name, value in zip(classes, self.per_class_accuracy, strict=True):
            out[f"{prefix}/class_accuracy/{_metric_safe(name)}"] = value
        return out


def _metric_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    dist: Distributed = SINGLE,
) -> Evaluation:
    """Under torchrun, `batches` are this rank's shard (batches rank, rank + W, ... of one order): the confusion
    matrices are summed and the batch losses added in that order, so the result is one process's, exactly."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    batch_losses: list[float] = []
    for images, labels in batches:
        with autocast():
            logits, _ = model(images)
        logits = logits.float()
        batch_losses.append(float(F.cross_entropy(logits, labels, reduction="sum")))
        index = labels.cpu() * num_classes + logits.argmax(1).cpu()
        confusion += torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)
    model.train(was_training)
    dist.sum_(confusion)
    shards = dist.gather_objects(batch_losses)
    total_loss = 0.0
    for batch in range(sum(len(shard) for shard in shards)):
        total_loss += shards[batch % len(shards)][batch // len(shards)]
    count = int(confusion.sum())
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    accuracy = float(confusion.diag().sum()) / max(1, count)
    return Evaluation(
        accuracy=accuracy, loss=total_loss / max(1, count), per_class_accuracy=per_class, confusion=confusion
    )
