"""The alternation schedule: warm-up, meta phase, SSL phase, evaluation, checkpoints."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from runner.progress import StageProgress
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


def checkpoint_state(components: Components, state: LoopState, run_id: str) -> dict[str, Any]:
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
        "data": components.data.state_dict(),  # the labeled order's own RNG
        "rng": rng_state(),
    }


def restore_state(components: Components, checkpoint: dict[str, Any]) -> LoopState:
    components.classifier.load_state_dict(checkpoint["classifier"])
    components.optimizer.load_state_dict(checkpoint["optimizer"])
    components.scheduler.load_state_dict(checkpoint["scheduler"])
    if components.ema is not None and checkpoint["ema"] is not None:
        components.ema.load_state_dict(checkpoint["ema"])
    components.method.load_state_dict(checkpoint["method"])
    components.data.load_state_dict(checkpoint["data"])
    set_rng_state(checkpoint["rng"])
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


class Diverged(UserError):
    """A non-finite loss: the run stops before logging, evaluating or saving anything computed from it."""


def ensure_finite(unchecked: list[torch.Tensor], iteration: int, lr: float) -> None:
    """Raise Diverged at the first non-finite loss among the last `len(unchecked)` iterations ending at `iteration`.

    Checked in a batch before anything is logged or saved: one device sync per check, not one per iteration.
    """
    if not unchecked:
        return
    finite = torch.isfinite(torch.stack([loss.float() for loss in unchecked]))
    if bool(finite.all()):
        unchecked.clear()
        return
    first = int((~finite).nonzero()[0])
    value = float(unchecked[first])
    at = iteration - len(unchecked) + first + 1
    raise Diverged(
        f"training diverged: the loss is {value} at iteration {at}; lower optim.classifier.lr ({lr:g} now) or set"
        " optim.grad_clip (the run is marked FAILED; its last checkpoint predates the divergence)"
    )


def run_evaluation(components: Components, split: str = "test") -> Evaluation:
    """Evaluate on the test split, or on the held-out validation split (`val`) used for tuning."""
    data = components.data
    size = components.recipe.data.eval_batch_size
    batches = data.test_batches(size) if split == "test" else data.holdout_batches(size)
    return evaluate(components.eval_model(), batches, data.num_classes, components.ctx.autocast)


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
    method, classifier, data = components.method, components.classifier, components.data
    images_per_step = recipe.data.batch_size + recipe.method.unlabeled_per_step()
    scaler = grad_scaler(components)
    window: dict[str, list[Any]] = defaultdict(list)
    window_start, window_steps = time.perf_counter(), 0
    evaluation: Evaluation | None = None
    unchecked: list[torch.Tensor] = []  # losses not yet checked to be finite
    classifier.train()

    fields = {"loss": "-", "acc": "-", "img/s": "-"}
    with StageProgress("train", schedule.iterations, start=state.iteration) as progress:
        for iteration in range(state.iteration, schedule.iterations):
            loss, metrics = train_step(components, iteration, scaler)
            unchecked.append(loss.detach())

            window["loss/total"].append(loss.detach())
            for key, value in metrics.items():
                window[key].append(value.detach() if isinstance(value, torch.Tensor) else value)
            window_steps += 1
            state.iteration = iteration + 1
            done = state.iteration == schedule.iterations
            stop = interrupts.requested()
            due = (schedule.log_every, schedule.eval_every, schedule.checkpoint_every)
            if done or stop or any(state.iteration % every == 0 for every in due):
                ensure_finite(unchecked, state.iteration, components.optimizer.param_groups[0]["lr"])

            if state.iteration % schedule.log_every == 0 or done:
                if components.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - window_start
                logged = _mean_metrics(window)
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
                    if on_validation is not None:
                        on_validation(state.iteration, validation.accuracy)
                method.log_artifacts(state.iteration, tracker)
                if not console.is_terminal:
                    print(
                        f"[{state.iteration}/{schedule.iterations}] test accuracy {evaluation.accuracy:.4f}",
                        file=sys.stderr,
                        flush=True,
                    )
                window_start = time.perf_counter()  # evaluation time is not training throughput

            if state.iteration % schedule.checkpoint_every == 0 or done or stop:
                save_checkpoint(checkpoint_file, checkpoint_state(components, state, tracker.run_id))
                tracker.log_artifact(checkpoint_file, CHECKPOINT_DIR)
            progress.update(state.iteration, **fields)
            if stop:
                raise interrupts.Interrupted(f"interrupted at iteration {state.iteration}/{schedule.iterations}")

    if evaluation is None:  # resumed from a checkpoint taken at the very end
        evaluation = run_evaluation(components)
    return evaluation
