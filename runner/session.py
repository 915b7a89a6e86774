"""One `metassl run`: validate, build, open the MLflow run, train, log the results."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.markup import escape

from runner import environment, faults, interrupts
from runner.build import Components, build_components, prepare_data
from runner.checkpoint import checkpoint_path, load_checkpoint
from runner.evaluate import Evaluation
from runner.loop import LoopState, console, restore_state, train
from runner.plots import close, confusion_figure, learning_curves_figure
from runner.tracking import (
    RECIPE_ARTIFACT,
    Tracker,
    check_store,
    find_run,
    latest_unfinished_run,
    local_artifact_dir,
    refuse_live_run,
)
from schemas import Recipe, UserError, recipe_to_dict, validate_recipe
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
    tracker.log_metrics({"final/test_accuracy": evaluation.accuracy}, step=state.iteration)
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
) -> RunResult:
    """Train `recipe` in a new MLflow run, or continue `resume_run_id` from its last checkpoint.

    `parent_run_id` nests the new run under a parent (a sweep); `extra_tags` are added to its tags.
    """
    started = time.perf_counter()
    check_store(recipe.tracking)  # a read-only or unreachable store fails before any data loads
    prepared = prepare_data(recipe)  # a missing dataset fails here, before any MLflow run exists
    components = build_components(recipe, prepared)
    state = LoopState()
    if resume_run_id is not None:  # a bad checkpoint fails here, before the run's status changes
        state = _restored_state(recipe, resume_run_id, components)
    run_id = resume_run_id
    tracker: Tracker | None = None
    try:
        with (
            interrupts.deferred(),
            Tracker.open(
                recipe.tracking,
                run_name=recipe.tracking.run_name or recipe.name,
                tags={**run_tags(recipe), **(extra_tags or {})},
                resume_run_id=resume_run_id,
                parent_run_id=parent_run_id,
            ) as tracker,
        ):
            run_id = tracker.run_id
            checkpoint_file = checkpoint_path(tracker.artifact_dir)
            if resume_run_id is None:
                _log_run_inputs(tracker, components)
            else:
                tracker.skip_logged_steps()
                console.print(f"resuming run {resume_run_id} at iteration {state.iteration}")
            console.print(f"run {tracker.run_id}: {escape(recipe.name)} on {components.device}")
            evaluation = train(components, tracker, checkpoint_file, state)
            if interrupts.requested():
                raise interrupts.Interrupted(f"interrupted after the last iteration ({state.iteration})")
            _log_run_outputs(tracker, components, evaluation, state)
    except KeyboardInterrupt as exc:
        if run_id is None:
            raise
        done = str(exc) if isinstance(exc, interrupts.Interrupted) else "interrupted"
        raise interrupts.Interrupted(
            f"{done}; run {run_id} saved and marked KILLED; continue it with: "
            f"metassl run --resume {run_id} --tracking-uri {recipe.tracking.tracking_uri}"
        ) from None
    except Exception as exc:
        if run_id is None or tracker is None or not faults.disk_full(exc):
            raise
        status = (
            "is marked FAILED"
            if tracker.ended_as == "FAILED"
            else "could not be marked FAILED as its store is on the full disk (`metassl runs` shows it DEAD)"
        )
        raise UserError(
            f"no space left on the disk ({faults.full_disk_location(exc)}); run {run_id} {status}; its last checkpoint"
            f" is intact: free some space, then continue with: metassl run --resume {run_id} --tracking-uri"
            f" {recipe.tracking.tracking_uri}"
        ) from None
    return RunResult(run_id, evaluation.accuracy, time.perf_counter() - started, evaluation)


def _restored_state(recipe: Recipe, run_id: str, components: Components) -> LoopState:
    """The loop state from the run's checkpoint (a fresh start if it has none); a damaged one is a UserError."""
    client, _ = find_run(recipe.tracking, run_id)
    path = checkpoint_path(local_artifact_dir(client, run_id))
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        return LoopState()
    try:
        return restore_state(components, checkpoint)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(
            f"checkpoint {path} does not fit this recipe ({reason}); delete it to resume from the start of the run,"
            " or start a new run with `metassl run RECIPE`"
        ) from None


@dataclass
class LoggedRun:
    recipe: Recipe
    run: Any
    artifact_dir: Path


def recipe_of_run(run_id: str, tracking: Tracking) -> LoggedRun:
    """The resolved recipe logged with a run, the run itself, and its artifact folder."""
    client, run = find_run(tracking, run_id)
    artifact_dir = local_artifact_dir(client, run_id)
    path = artifact_dir / RECIPE_ARTIFACT
    if not path.exists():
        raise UserError(f"run {run_id} has no {RECIPE_ARTIFACT} artifact; it was not started by metassl run")
    recipe = validate_recipe(yaml.safe_load(path.read_text()), f"run {run_id} {RECIPE_ARTIFACT}")
    return LoggedRun(recipe, run, artifact_dir)


def resume(run_id: str, tracking: Tracking) -> RunResult:
    logged = recipe_of_run(run_id, tracking)
    recipe, run = logged.recipe, logged.run
    if run.info.status == "FINISHED":
        raise UserError(f"run {run_id} already finished; start a new one with `metassl run` on its recipe")
    refuse_live_run(run)
    return execute(recipe, resume_run_id=run_id)


def resume_latest(recipe: Recipe) -> RunResult:
    check_store(recipe.tracking)
    run = latest_unfinished_run(recipe.tracking, recipe_hash(recipe))
    if run is None:
        raise UserError(f"--resume: no unfinished run of recipe '{recipe.name}' in {recipe.tracking.tracking_uri}")
    refuse_live_run(run)
    return execute(recipe, resume_run_id=run.info.run_id)


def quiet_libraries() -> None:
    """MLflow and alembic log INFO lines on every store open; users want the run's output, not theirs."""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # It logs a traceback before re-raising a store error (unopenable, disk full); the CLI reports it in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
