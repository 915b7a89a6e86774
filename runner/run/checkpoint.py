"""Training checkpoints: written atomically, loaded without executing anything from the file."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from runner.faults import disk_full
from schemas import UserError

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.pt"
REQUIRED_KEYS = ("iteration", "history", "classifier", "optimizer", "scheduler", "method", "rng")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format; anything else is not one of our checkpoints


def checkpoint_path(artifact_dir: Path) -> Path:
    return artifact_dir / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the old checkpoint.

    A failed write (disk full) removes the temp file and leaves the previous checkpoint untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, Exception) and disk_full(exc):  # torch reports it without the file's name
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


def load_checkpoint(path: Path, label: str | None = None) -> dict[str, Any] | None:
    """Load on the CPU (RNG states must stay CPU tensors; `load_state_dict` moves the rest).

    `weights_only=True`: the file may come from anyone (a shared run, a tracking server), so unpickling
    is limited to tensors and plain containers and can never run code. Any unreadable file is a UserError
    naming `label` (the run's artifact, rather than the temp file it was fetched to) or `path`.
    """
    if not path.exists():
        return None
    remedy = "delete it to resume from the start of the run, or start a new run with `metassl run RECIPE`"
    name = label or str(path)
    with open(path, "rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC:
        what = "is empty" if not head else "is not a metassl checkpoint"
        raise UserError(f"checkpoint {name} {what}; {remedy}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "it holds Python objects beyond tensors and plain data, which are refused so that loading runs no code"
        raise UserError(f"checkpoint {name} is unsafe to load: {reason}; {remedy}") from None
    except Exception as exc:  # truncated or damaged zip
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(f"checkpoint {name} is unreadable ({reason}); {remedy}") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise UserError(f"checkpoint {name} lacks {', '.join(missing)}; {remedy}")
    return state


def newer_local(checkpoint: dict[str, Any] | None, local_file: Path) -> dict[str, Any] | None:
    """The run's checkpoint on this machine when it is further on than the store's (`checkpoint`).

    A run on a tracking server writes its checkpoint here first; after an outage the server's copy may lag behind.
    """
    local = load_checkpoint(local_file, f"{local_file} (the run's checkpoint on this machine)")
    if local is None or (checkpoint is not None and checkpoint["iteration"] >= local["iteration"]):
        return checkpoint
    return local
