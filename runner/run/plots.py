"""Pictures a person would rather look at than numbers: confusion matrix and learning curves."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def confusion_figure(confusion: torch.Tensor, classes: list[str]) -> Any:
    k = len(classes)
    normalized = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    figure, axes = plt.subplots(figsize=(1.0 + 0.55 * k, 1.0 + 0.5 * k))
    axes.imshow(normalized.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(k), classes, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for row in range(k):
        for col in range(k):
            value = int(confusion[row, col])
            if value:
                color = "white" if normalized[row, col] > 0.5 else "black"
                axes.text(col, row, str(value), ha="center", va="center", fontsize=7, color=color)
    axes.set_title(f"test accuracy {float(confusion.diag().sum()) / max(1, int(confusion.sum())):.3f}")
    figure.tight_layout()
    return figure


def learning_curves_figure(history: dict[str, list[tuple[int, float]]]) -> Any:
    """One panel per metric group (`loss/...`, `test/...`), each curve under its logged MLflow metric name;
    `history` maps metric name -> [(step, value), ...]."""
    groups: dict[str, list[str]] = {}
    for name, points in history.items():
        if points:
            groups.setdefault(name.split("/", 1)[0], []).append(name)
    panels = list(groups.values())
    figure, axes_list = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 3.2), squeeze=False)
    for axes, names in zip(axes_list[0], panels, strict=False):
        for name in names:
            steps, values = zip(*history[name], strict=True)
            axes.plot(steps, values, marker="." if len(steps) < 30 else None, label=name)
        axes.set_title(", ".join(names), fontsize=9)
        axes.set_xlabel("iteration")
        if len(names) > 1:
            axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def close(figure: Any) -> None:
    plt.close(figure)
