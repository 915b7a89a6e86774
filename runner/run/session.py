"""One `metassl run`: validate, build, open the MLflow run, train, log the results."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from runner import cpu_isa, faults
from runner.pretraining.runs import generator_link_tags
from runner.registry import GENERATORS
from runner.run import environment, interrupts
from runner.run.build import Components, build_components, prepare_data
from runner.run.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FILE, checkpoint_path, load_checkpoint, newer_local
from runner.run.evaluate import Evaluation
from runner.run.lineage import log_datasets
from runner.run.logged_model import log_model
from runner.run.loop import LoopState, console, restore_state, train
from runner.run.plots import close, confusion_figure, learning_curves_figure
from runner.run.system_metrics import system_metrics
from runner.tracking import (
    FINAL_ACCURACY,
    RECIPE_ARTIFACT,
    MlflowTracker,
    Tracker,
    check_store,
    describe_store,
    download_artifact,
    find_run,
    latest_unfinished_run,
    local_folder,
    recipe_of_run,
    refuse_live_run,
)
from schemas import Recipe, UserError, recipe_to_dict
from schemas.training import Tracking

# Not under `model/`: MLflow lists `runs:/ID/model/...` as the logged MLflow Model named `model`.
WEIGHTS_ARTIFACT = "weights/classifier.safetensors"
LEGACY_WEIGHTS_ARTIFACT = "model/classifier.safetensors"  # runs logged before the MLflow Model


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


def _log_run_outputs(tracker: MlflowTracker, components: Components, evaluation: Evaluation, state: LoopState) -> None:
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
            tracker.log_artifact(path, WEIGHTS_ARTIFACT.rpartition("/")[0])
            log_model(tracker, components, path, state.iteration, run_tags(components.recipe))


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
    cpu_isa.pin(recipe.runtime.cpu_isa)  # set by the CLI before torch started; here, checked
    check_store(recipe.tracking)  # a read-only or unreachable store fails before any data loads
    prepared = prepare_data(recipe)  # a missing dataset fails here, before any MLflow run exists
    GENERATORS.prepare(recipe.generator, tracking=recipe.tracking, runtime=recipe.runtime)
    components = build_components(recipe, prepared)
    run_id = resume_run_id
    tracker: MlflowTracker | None = None
    # The checkpoint is written in `scratch`, then logged to the run's artifact store (local or a server).
    with tempfile.TemporaryDirectory(prefix="metassl-run-") as scratch:
        state = LoopState()
        if resume_run_id is not None:  # a bad checkpoint fails here, before the run's status changes
            state = _restored_state(recipe, resume_run_id, components, Path(scratch))
        try:
            with (
                interrupts.deferred(),
                MlflowTracker.open(
                    recipe.tracking,
                    run_name=recipe.tracking.run_name or recipe.name,
                    tags={
                        **run_tags(recipe),
                        **generator_link_tags(recipe.generator, recipe.tracking),
                        **(extra_tags or {}),
                    },
                    resume_run_id=resume_run_id,
                    parent_run_id=parent_run_id,
                ) as tracker,
            ):
                run_id = tracker.run_id
                checkpoint_file = checkpoint_path(tracker.local_folder or Path(scratch))
                if resume_run_id is None:
                    _log_run_inputs(tracker, components)
                    log_datasets(tracker.client, tracker.run_id, components.data, recipe.data.name, recipe.seed)
                else:
                    tracker.skip_logged_steps()
                    console.print(f"resuming run {resume_run_id} at iteration {state.iteration}")
                console.print(f"run {tracker.run_id}: {escape(recipe.name)} on {components.device}")
                console.print(escape(describe_store(recipe.tracking.tracking_uri)))
                with system_metrics(recipe.tracking, tracker.run_id, resume=resume_run_id is not None):
                    evaluation = train(components, tracker, checkpoint_file, state, on_validation)
                if interrupts.requested():
                    raise interrupts.Interrupted(f"interrupted after the last iteration ({state.iteration})")
                _log_run_outputs(tracker, components, evaluation, state)
        except KeyboardInterrupt as exc:
            if run_id is None:
                raise
            done = str(exc) if isinstance(exc, interrupts.Interrupted) else "interrupted"
            marked = "marked KILLED" if tracker is None or tracker.ended_as else "not marked (its server is down)"
            raise interrupts.Interrupted(
                f"{done}; run {run_id} saved and {marked}; continue it with: "
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
                f"no space left on the disk ({faults.full_disk_location(exc)}); run {run_id} {status}; its last"
                f" checkpoint is intact: free some space, then continue with: metassl run --resume {run_id}"
                f" --tracking-uri {recipe.tracking.tracking_uri}"
            ) from None
    return RunResult(run_id, evaluation.accuracy, time.perf_counter() - started, evaluation)


def _restored_state(recipe: Recipe, run_id: str, components: Components, scratch: Path) -> LoopState:
    """The loop state from the run's checkpoint (a fresh start if it has none); a damaged one is a UserError."""
    client, _ = find_run(recipe.tracking, run_id)
    artifact = f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}"
    path = download_artifact(client, run_id, artifact, scratch)
    checkpoint = None if path is None else load_checkpoint(path, f"{artifact} of run {run_id}")
    checkpoint = newer_local(checkpoint, checkpoint_path(local_folder(run_id)))
    if checkpoint is None:
        return LoopState()
    try:
        return restore_state(components, checkpoint)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(
            f"checkpoint {artifact} of run {run_id} does not fit this recipe ({reason}); delete it to resume from the"
            " start of the run, or start a new run with `metassl run RECIPE`"
        ) from None


def resume(run_id: str, tracking: Tracking) -> RunResult:
    logged = recipe_of_run(run_id, tracking)
    recipe, run = logged.recipe, logged.run
    if run.info.status == "FINISHED":
        raise UserError(f"run {run_id} already finished; start a new one with `metassl run` on its recipe")
    refuse_live_run(run)
    # The store it was found in, not the one its recipe names: the same store may be reached another way now.
    store = recipe.tracking.model_copy(update={"tracking_uri": tracking.tracking_uri})
    return execute(recipe.model_copy(update={"tracking": store}), resume_run_id=run_id)


def resume_latest(recipe: Recipe) -> RunResult:
    check_store(recipe.tracking)
    run = latest_unfinished_run(recipe.tracking, recipe_hash(recipe))
    if run is None:
        raise UserError(f"--resume: no unfinished run of recipe '{recipe.name}' in {recipe.tracking.tracking_uri}")
    refuse_live_run(run)
    return execute(recipe, resume_run_id=run.info.run_id)
