"""The torch device a recipe's `runtime.device` asks for."""

from __future__ import annotations

import torch

from schemas import UserError
from schemas.training import Runtime


def select_device(runtime: Runtime) -> torch.device:
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise UserError("runtime.device: 'cuda' requested but no CUDA device is available; use auto or cpu")
    if runtime.device == "cpu" or (runtime.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")
