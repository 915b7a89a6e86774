"""Seeding, determinism and autocast from the recipe's `runtime` block (its device: runner/common/device.py)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from schemas.training import Runtime


def configure(runtime: Runtime, seed: int, device: torch.device) -> None:
    """Seed every RNG and set threads and determinism before anything random happens."""
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)
    # Tiny (denormal) floats make CPU arithmetic up to 100x slower; weights and latents decay toward them.
    torch.set_flush_denormal(True)
    if runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def autocast_factory(runtime: Runtime, device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    """AMP on CUDA in the recipe's precision; plain fp32 on CPU (bf16 there is slow and changes results)."""
    if device.type != "cuda" or runtime.precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if runtime.precision == "bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


def rng_state() -> dict[str, Any]:
    """Tensors and plain lists only, so a checkpoint loads with `torch.load(weights_only=True)`."""
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
