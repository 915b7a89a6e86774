"""The float operations that `runtime.cpu_isa: avx2`'s pins don't reach, made exact in portable mode.

`torch.sqrt` on a CPU tensor is not IEEE's correctly rounded square root in this torch build: its bits depend on
the CPU it runs on, whatever ATen's capability or MKL's mode (docs/RESULTS.md, "Where it parts"). Adam's
denominators are its first use in a run. In portable mode a square root is taken in float64 and rounded once (the
correctly rounded float32 result), and Adam is torch's fused kernel, whose square root is the vector unit's exact
one. Native mode keeps torch's defaults, so its figures don't move.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from runner import cpu_isa


def sqrt(tensor: torch.Tensor) -> torch.Tensor:
    if cpu_isa.portable() and tensor.device.type == "cpu" and tensor.dtype == torch.float32:
        return tensor.double().sqrt().float()
    return tensor.sqrt()


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of `a` and of `b`. `torch.cdist` takes a square root inside."""
    if cpu_isa.portable() and a.device.type == "cpu":
        return (a.unsqueeze(1) - b.unsqueeze(0)).square().sum(-1)
    return torch.cdist(a, b).square()


def _fused() -> dict[str, bool]:
    return {"fused": True} if cpu_isa.portable() else {}


def adam(params: Iterable[Any], **options: Any) -> torch.optim.Adam:
    return torch.optim.Adam(params, **options, **_fused())


def adamw(params: Iterable[Any], **options: Any) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, **options, **_fused())
