"""Training checkpoints, written atomically so a killed run always leaves a readable one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.pt"


def checkpoint_path(artifact_dir: Path) -> Path:
    return artifact_dir / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the old checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """Load on the CPU: RNG states must stay CPU tensors; `load_state_dict` moves the rest."""
    if not path.exists():
        return None
    # Our own file (it holds Python RNG state and optimizer state), so a full unpickle is acceptable.
    return torch.load(path, map_location="cpu", weights_only=False)
