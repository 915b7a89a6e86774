"""The classifier contract: h = g_phi o f_psi, returning `(logits, features)`."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """A feature extractor `f_psi` (a sequence of blocks) and a linear head `g_phi`.

    `feature_blocks` lists the extractor's blocks from input to output, so a method can
    restrict a virtual step to the last k of them.
    """

    def __init__(self, blocks: list[nn.Module], feature_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor, start_block: int = 0) -> torch.Tensor:
        for block in self.blocks[start_block:]:
            x = block(x)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor, start_block: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """`(logits, features)`; with `start_block` = k, `x` is the output of the first k blocks."""
        features = self.features(x, start_block)
        return self.head(self.dropout(features)), features

    def feature_blocks(self) -> list[nn.Module]:
        return list(self.blocks)
