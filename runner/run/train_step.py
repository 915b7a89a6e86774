"""One training iteration: warm-up or meta + SSL phase, backward, clipping, optimizer, schedule and EMA steps.

The loop, the phase-cost benchmark and the tests all run this one function, so what they measure is what users run.
"""

from __future__ import annotations

from typing import Any

import torch

from runner.run.build import Components


def grad_scaler(components: Components) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast on CUDA; a pass-through everywhere else."""
    enabled = components.device.type == "cuda" and components.recipe.runtime.precision == "fp16"
    return torch.amp.GradScaler("cuda", enabled=enabled)


def train_step(
    components: Components, iteration: int, scaler: torch.amp.GradScaler
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Run iteration `iteration` and return its loss and the method's metrics (tensors not yet synchronised)."""
    recipe, method, optimizer = components.recipe, components.method, components.optimizer
    cadence = recipe.method.meta_cadence()
    images, labels = components.data.labeled_batch(recipe.data.batch_size)
    metrics: dict[str, Any] = {}
    if iteration < recipe.schedule.warmup:
        with components.ctx.autocast():
            loss, metrics = method.supervised_loss(images, labels)
    else:
        if cadence is not None and iteration % cadence.every == 0:
            metrics.update(method.meta_phase(iteration, cadence.steps))
        with components.ctx.autocast():
            loss, ssl_metrics = method.ssl_loss(iteration, images, labels)
        metrics.update(ssl_metrics)

    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if recipe.optim.grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(components.classifier.parameters(), recipe.optim.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    components.scheduler.step()
    if components.ema is not None:
        components.ema.update(components.classifier)
    return loss, metrics
