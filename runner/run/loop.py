"""The alternation schedule: warm-up, meta phase, SSL phase, evaluation, checkpoints."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from runner.distributed import Distributed
from runner.progress import SilentProgress, StageProgress
from runner.run import interrupts
from runner.run.build import Components
from runner.run.checkpoint import CHECKPOINT_DIR, save_checkpoint
from runner.run.evaluate import Evaluation, evaluate
from runner.run.runtime import rng_state, set_rng_state
from runner.run.train_step import grad_scaler, train_step
from runner.tracking import Tracker
from schemas import UserError

console = Console(stderr=True)


@dataclass
class LoopState:
    """What the loop itself must carry across a resume."""

    iteration: int = 0
    history: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    last_accuracy: float | None = None


def rank_state(components: Components) -> dict[str, Any]:
    """What differs between ranks: their RNG streams (global and the labeled order's)."""
    return {"rng": rng_state(), "data": components.data.state_dict()}


def checkpoint_state(components: Components, state: LoopState, run_id: str) -> dict[str, Any]:
    """The whole run's state; a collective under torchrun (every rank's RNG state is gathered), written by rank 0."""
    ranks = components.dist.gather_objects(rank_state(components))
    return {
        "iteration": state.iteration,
        "history": dict(state.history),
        "last_accuracy": state.last_accuracy,
        "run_id": run_id,
        "classifier": components.classifier.state_dict(),
        "optimizer": components.optimizer.state_dict(),
        "scheduler": components.scheduler.state_dict(),
        "ema": components.ema.state_dict() if components.ema else None,
        "method": components.method.state_dict(),
        "data": ranks[0]["data"],  # the labeled order's own RNG
        "rng": ranks[0]["rng"],
        "world_size": components.dist.world_size,
        "ranks": ranks,  # every rank's own "rng" and "data", in rank order
    }


def restore_state(components: Components, checkpoint: dict[str, Any]) -> LoopState:
    """The loop state of `checkpoint` (the same on every rank), with this rank's own RNG streams."""
    dist = components.dist
    saved_world = int(checkpoint.get("world_size", 1))
    if saved_world != dist.world_size:
        raise UserError(
            f"its checkpoint was written by {saved_world} process(es) and this run has {dist.world_size}: each rank"
            f" continues its own RNG stream, so resume it with the same number (metassl run --resume RUN_ID --nproc"
            f" {saved_world}, or torchrun with {saved_world} processes in all)"
        )
    own = checkpoint["ranks"][dist.rank] if "ranks" in checkpoint else checkpoint
    components.classifier.load_state_dict(checkpoint["classifier"])
    components.optimizer.load_state_dict(checkpoint["optimizer"])
    components.scheduler.load_state_dict(checkpoint["scheduler"])
    if components.ema is not None and checkpoint["ema"] is not None:
        components.ema.load_state_dict(checkpoint["ema"])
    components.method.load_state_dict(checkpoint["method"])
    components.data.load_state_dict(own["data"])
    set_rng_state(own["rng"])
    history: dict[str, list[tuple[int, float]]] = defaultdict(list)
    history.update({key: [tuple(point) for point in points] for key, points in checkpoint["history"].items()})
    if "train/loss" in history:  # a checkpoint from before the curves took the logged metric names
        history["loss/total"] = history.pop("train/loss")
    return LoopState(checkpoint["iteration"], history, checkpoint["last_accuracy"])


def _mean_metrics(window: dict[str, list[Any]]) -> dict[str, float]:
    return {
        key: float(torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).mean())
        for key, values in window.items()
    }


def _mean_over_ranks(logged: dict[str, float], dist: Distributed) -> dict[str, float]:
    """Each logged training metric averaged over ranks (every rank logs the same keys); as is on one process."""
    if not dist.enabled:
        return logged
    keys = sorted(logged)
    values = torch.tensor([logged[key] for key in keys], dtype=torch.float64)
    dist.mean_([values])
    return dict(zip(keys, values.tolist(), strict=True))


class Diverged(UserError):
    """A non-finite loss: the run stops before logging, evaluating or saving anything computed from it."""


def ensure_finite(unchecked: list[torch.Tensor], iteration: int, lr: float, dist: Distributed | None = None) -> None:
    """Raise Diverged at the first non-finite loss among the last `len(unchecked)` iterations ending at `iteration`.

    Checked in a batch before anything is logged or saved: one device sync per check, not one per iteration.
    Under torchrun a loss counts as finite only if it is on every rank, so every rank stops at the same iteration.
    """
    if not unchecked:
        return
    finite = torch.isfinite(torch.stack([loss.float() for loss in unchecked]))
    if dist is not None:
        finite = dist.all_ranks(finite)
    if bool(finite.all()):
        unchecked.clear()
        return
    first = int((~finite).nonzero()[0])
    value = float(unchecked[first]) if not bool(torch.isfinite(unchecked[first])) else float("nan")
    at = iteration - len(unchecked) + first + 1
    raise Diverged(
        f"training diverged: the loss is {value} at iteration {at}; lower optim.classifier.lr ({lr:g} now) or set"
        " optim.grad_clip (the run is marked FAILED; its last checkpoint predates the divergence)"
    )


def run_evaluation(components: Components, split: str = "test") -> Evaluation:
    """Evaluate on the test split, or on the held-out validation split (`val`) used for tuning.

    Under torchrun every rank evaluates its shard of the batches with rank 0's weights and BatchNorm statistics."""
    data, dist = components.data, components.dist
    size = components.recipe.data.eval_batch_size
    shard = (dist.rank, dist.world_size)
    batches = data.test_batches(size, shard) if split == "test" else data.holdout_batches(size, shard)
    model = components.eval_model()
    dist.broadcast_buffers(model)
    return evaluate(model, batches, data.num_classes, components.ctx.autocast, dist)


def replicas_identical(components: Components) -> bool:
    """Whether every rank holds the same classifier weights and method state (the latent bank, its optimizer); a
    collective. True on one process."""
    if not components.dist.enabled:
        return True
    tensors = [p.detach() for p in components.classifier.parameters()]
    tensors += [t for t in _tensors(components.method.state_dict()) if t.is_floating_point() or t.dtype == torch.long]
    return components.dist.identical(tensors)


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    if isinstance(tree, list | tuple):
        return [t for item in tree for t in _tensors(item)]
    return []


def train(
    components: Components,
    tracker: Tracker,
    checkpoint_file: Path,
    state: LoopState,
    on_validation: Callable[[int, float], None] | None = None,
) -> Evaluation:
    """Run iterations `state.iteration .. schedule.iterations`, then return the final evaluation.

    The checkpoint is written to `checkpoint_file` and logged to the run; `on_validation(iteration, accuracy)`
    hears each held-out validation accuracy (a tuning trial reports it to Optuna, which may prune)."""
    recipe = components.recipe
    schedule = recipe.schedule
    method, classifier, data, dist = components.method, components.classifier, components.data, components.dist
    images_per_step = (recipe.data.batch_size + recipe.method.unlabeled_per_step()) * dist.world_size
    scaler = grad_scaler(components)
    window: dict[str, list[Any]] = defaultdict(list)
    window_start, window_steps = time.perf_counter(), 0
    evaluation: Evaluation | None = None
    unchecked: list[torch.Tensor] = []  # losses not yet checked to be finite
    classifier.train()

    fields = {"loss": "-", "acc": "-", "img/s": "-"}
    shown = StageProgress("train", schedule.iterations, start=state.iteration) if dist.is_main else SilentProgress()
    with shown as progress:
        for iteration in range(state.iteration, schedule.iterations):
            loss, metrics = train_step(components, iteration, scaler)
            unchecked.append(loss.detach())

            window["loss/total"].append(loss.detach())
            for key, value in metrics.items():
                window[key].append(value.detach() if isinstance(value, torch.Tensor) else value)
            window_steps += 1
            state.iteration = iteration + 1
            done = state.iteration == schedule.iterations
            stop = dist.any_rank(interrupts.requested())  # torchrun signals every rank, not at the same moment
            due = (schedule.log_every, schedule.eval_every, schedule.checkpoint_every)
            if done or stop or any(state.iteration % every == 0 for every in due):
                ensure_finite(unchecked, state.iteration, components.optimizer.param_groups[0]["lr"], dist)

            if state.iteration % schedule.log_every == 0 or done:
                if components.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - window_start
                logged = _mean_over_ranks(_mean_metrics(window), dist)
                logged["lr"] = components.optimizer.param_groups[0]["lr"]
                logged["perf/images_per_s"] = images_per_step * window_steps / max(elapsed, 1e-9)
                logged["perf/s_per_iteration"] = elapsed / window_steps
                tracker.log_metrics(logged, step=state.iteration)
                for key, value in logged.items():
                    if key.startswith("loss/"):
                        state.history[key].append((state.iteration, value))
                acc = "-" if state.last_accuracy is None else f"{state.last_accuracy:.3f}"
                fields.update(loss=f"{logged['loss/total']:.3f}", acc=acc)
                fields["img/s"] = f"{logged['perf/images_per_s']:.0f}"
                window.clear()
                window_start, window_steps = time.perf_counter(), 0

            if state.iteration % schedule.eval_every == 0 or done:
                evaluation = run_evaluation(components)
                state.last_accuracy = evaluation.accuracy
                state.history["test/accuracy"].append((state.iteration, evaluation.accuracy))
                tracker.log_metrics(evaluation.metrics(data.classes), step=state.iteration)
                if data.validation is not None:
                    validation = run_evaluation(components, "val")
                    tracker.log_metrics(
                        {"val/accuracy": validation.accuracy, "val/loss": validation.loss}, state.iteration
                    )
                    if on_validation is not None:  # may prune: rank 0 decides, for every rank
                        dist.on_main(partial(on_validation, state.iteration, validation.accuracy))
                if dist.is_main:
                    method.log_artifacts(state.iteration, tracker)
                if dist.is_main and not console.is_terminal:
                    print(
                        f"[{state.iteration}/{schedule.iterations}] test accuracy {evaluation.accuracy:.4f}",
                        file=sys.stderr,
                        flush=True,
                    )
                window_start = time.perf_counter()  # evaluation time is not training throughput

            if state.iteration % schedule.checkpoint_every == 0 or done or stop:
                checkpoint = checkpoint_state(components, state, tracker.run_id)
                if dist.is_main:
                    save_checkpoint(checkpoint_file, checkpoint)
                    tracker.log_artifact(checkpoint_file, CHECKPOINT_DIR)
            progress.update(state.iteration, **fields)
            if stop:
                raise interrupts.Interrupted(f"interrupted at iteration {state.iteration}/{schedule.iterations}")

    if evaluation is None:  # resumed from a checkpoint taken at the very end
        evaluation = run_evaluation(components)
    return evaluation
