"""The pretrained generator on disk: a diffusers folder plus `pretrain.json`, the pretrain block that made it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from runner.pretraining.model import ConditionalGenerator
from schemas.errors import UserError
from schemas.generators import LocalGAN, Pretrain

PRETRAIN_RECORD = "pretrain.json"
# Fields that change how pretraining reports, not what it trains.
_RUN_ONLY_FIELDS = {"grid_every"}


def check_pretrain_matches(config: LocalGAN) -> None:
    """A cached checkpoint must have been trained with the recipe's pretrain block (it is cached by path only)."""
    record = Path(config.path) / PRETRAIN_RECORD
    if config.pretrain is None or not record.is_file():
        return
    trained = json.loads(record.read_text())
    wanted = config.pretrain.model_dump(mode="json")
    differing = sorted(k for k in wanted if k not in _RUN_ONLY_FIELDS and trained.get(k) != wanted[k])
    if differing:
        detail = ", ".join(f"{k}={trained.get(k)!r} (recipe: {wanted[k]!r})" for k in differing)
        raise UserError(
            f"generator.pretrain: the checkpoint at {config.path} was trained with {detail}; "
            "retrain with `metassl pretrain RECIPE --force` or set generator.path to another folder"
        )


def save_atomically(generator: ConditionalGenerator, path: Path, pretrain: Pretrain | None = None) -> None:
    """Save into a staging folder, then rename it into place; `pretrain.json` records how it was trained."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    generator.save_pretrained(staging, safe_serialization=True)
    if pretrain is not None:
        (staging / PRETRAIN_RECORD).write_text(json.dumps(pretrain.model_dump(mode="json"), indent=2))
    if path.exists():
        retired = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, path)
