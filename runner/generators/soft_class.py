"""Class-embedding tables that also take soft class vectors, for conditioning on a point of the simplex."""

from __future__ import annotations

import torch
from torch import nn


class SoftClassEmbedding(nn.Module):
    """Wraps an `nn.Embedding`: integer labels look rows up; a float `N x K` vector `c` returns `c @ table[:K]`.

    Rows beyond `K` (DiT's null class for classifier-free guidance) get no weight from a soft vector.
    """

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self.table = table

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if not labels.is_floating_point():
            return self.table(labels)
        weight = self.table.weight[: labels.shape[-1]]
        return labels.to(weight.dtype) @ weight


def soften(module: nn.Module, attribute: str) -> int:
    """Replace `module.<attribute>` (an nn.Embedding) by a SoftClassEmbedding; returns its number of rows."""
    table = getattr(module, attribute)
    if isinstance(table, SoftClassEmbedding):
        return table.table.num_embeddings
    if not isinstance(table, nn.Embedding):
        raise TypeError(f"{type(module).__name__}.{attribute} is {type(table).__name__}, not an nn.Embedding")
    setattr(module, attribute, SoftClassEmbedding(table))
    return table.num_embeddings
