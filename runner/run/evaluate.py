"""Test-set evaluation: top-1 accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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
) -> Evaluation:
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    total_loss, count = 0.0, 0
    for images, labels in batches:
        with autocast():
            logits, _ = model(images)
        logits = logits.float()
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += len(labels)
        index = labels.cpu() * num_classes + logits.argmax(1).cpu()
        confusion += torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)
    model.train(was_training)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    accuracy = float(confusion.diag().sum()) / max(1, count)
    return Evaluation(
        accuracy=accuracy, loss=total_loss / max(1, count), per_class_accuracy=per_class, confusion=confusion
    )
