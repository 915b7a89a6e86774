"""One `metassl run`: validate, build, open the MLflow run, train, log the results."""

from __future__ import annotations

import hashlib
import json
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from runner import environment
from runner.build import Components, build_components, prepare_data
from runner.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FILE, checkpoint_path, load_checkpoint
from runner.evaluate import Evaluation
from runner.loop import LoopState, console, restore_state, train
from runner.plots import close, confusion_figure, learning_curves_figure
from runner.pretraining.pretrain import ensure_generator
from runner.tracking import (
    FINAL_ACCURACY,
    RECIPE_ARTIFACT,
    Tracker,
    check_store,
    latest_unfinished_run,
    recipe_of_run,
)
from schemas import Recipe, UserError, recipe_to_dict
from schemas.training import Tracking

WEIGHTS_ARTIFACT = "model/classifier.safetensors"


@dataclass
class RunResult:
    run_id: str
    accuracy: float
    wall_seconds: float
    evaluation: Evaluation


def recipe_hash(recipe: Recipe) -> str:
    canonical = json.dumps(recipe_to_dict(recipe), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_tags(recipe: Recipe) -> dict[str, str]:
    labels = recipe.data.total_labels or f"{recipe.data.labels_per_class}/class"
    return {
        "method": recipe.method.name,
        "dataset": recipe.data.name,
        "labels": str(labels),
        "seed": str(recipe.seed),
        "classifier": recipe.classifier.name,
        "generator": recipe.generator.name,
        "metassl.recipe_hash": recipe_hash(recipe),
    }


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _log_run_inputs(tracker: Tracker, components: Components) -> None:
    recipe = components.recipe
    resolved = recipe_to_dict(recipe)
    tracker.log_params(resolved)
    tracker.log_dict(resolved, RECIPE_ARTIFACT)
    tracker.log_dict(components.label_split.to_dict(), "split/label_split.json")
    tracker.log_dict(environment.describe(), "environment/environment.json")
    tracker.log_text(environment.pip_freeze(), "environment/pip_freeze.txt")
    commit = environment.git_commit(Path(__file__).resolve().parent)
    if commit:
        tracker.set_tags({"mlflow.source.git.commit": commit})


def _log_run_outputs(tracker: Tracker, components: Components, evaluation: Evaluation, state: LoopState) -> None:
    from safetensors.torch import save_file

    data = components.data
    figure = confusion_figure(evaluation.confusion, data.classes)
    tracker.log_figure(figure, "plots/confusion_matrix.png")
    close(figure)
    figure = learning_curves_figure(state.history)
    tracker.log_figure(figure, "plots/learning_curves.png")
    close(figure)
    final = {"test/accuracy": evaluation.accuracy, "test/loss": evaluation.loss}
    tracker.log_dict(
        {**final, "per_class_accuracy": dict(zip(data.classes, evaluation.per_class_accuracy, strict=True))},
        "metrics/final.json",
    )
    tracker.log_metrics({FINAL_ACCURACY: evaluation.accuracy}, step=state.iteration)
    if components.recipe.tracking.log_model:
        weights = {k: v.detach().cpu().contiguous() for k, v in components.eval_model().state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "classifier.safetensors"
            save_file(weights, str(path), metadata={"classifier": components.recipe.classifier.name})
            tracker.log_artifact(path, "model")


def execute(
    recipe: Recipe,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    on_validation: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Train `recipe` in a new MLflow run, or continue `resume_run_id` from its last checkpoint.

    `parent_run_id` nests the new run under a parent (a sweep); `extra_tags` are added to its tags;
    `on_validation(iteration, val_accuracy)` is called at each evaluation (tuning prunes through it).
    """
    started = time.perf_counter()
    check_store(recipe.tracking)  # a dead tracking server fails now, not after loading the data
    prepared = prepare_data(recipe)  # a missing dataset fails here, before any MLflow run exists
    ensure_generator(recipe.generator, tracking=recipe.tracking, runtime=recipe.runtime)
    components = build_components(recipe, prepared)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="metassl-run-") as scratch,
            Tracker.open(
                recipe.tracking,
                run_name=recipe.tracking.run_name or recipe.name,
                tags={**run_tags(recipe), **(extra_tags or {})},
                resume_run_id=resume_run_id,
                parent_run_id=parent_run_id,
            ) as tracker,
        ):
            # The checkpoint is written here, then logged to the run's artifact store (local or a server).
            checkpoint_file = checkpoint_path(Path(scratch))
            state = LoopState()
            if resume_run_id is None:
                _log_run_inputs(tracker, components)
            else:
                downloaded = tracker.download(f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}", Path(scratch))
                checkpoint = None if downloaded is None else load_checkpoint(downloaded)
                if checkpoint is not None:
                    state = restore_state(components, checkpoint)
                console.print(f"resuming run {resume_run_id} at iteration {state.iteration}")
            console.print(f"run {tracker.run_id}: {recipe.name} on {components.device}")
            evaluation = train(components, tracker, checkpoint_file, state, on_validation)
            _log_run_outputs(tracker, components, evaluation, state)
            run_id = tracker.run_id
    finally:
        signal.signal(signal.SIGTERM, previous)
    return RunResult(run_id, evaluation.accuracy, time.perf_counter() - started, evaluation)


def resume(run_id: str, tracking: Tracking) -> RunResult:
    logged = recipe_of_run(run_id, tracking)
    recipe, run = logged.recipe, logged.run
    if run.info.status == "FINISHED":
        raise UserError(f"run {run_id} already finished; start a new one with `metassl run` on its recipe")
    return execute(recipe, resume_run_id=run_id)


def resume_latest(recipe: Recipe) -> RunResult:
    run_id = latest_unfinished_run(recipe.tracking, recipe_hash(recipe))
    if run_id is None:
        raise UserError(f"--resume: no unfinished run of recipe '{recipe.name}' in {recipe.tracking.tracking_uri}")
    return execute(recipe, resume_run_id=run_id)
