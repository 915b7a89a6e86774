"""One `metassl run`: validate, build, open the MLflow run, train, log the results."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from runner import cpu_isa, distributed, faults
from runner.common.device import select_device
from runner.pretraining.runs import generator_link_tags
from runner.registry import GENERATORS
from runner.run import environment, interrupts
from runner.run.build import Components, build_components, prepare_data
from runner.run.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FILE, checkpoint_path, load_checkpoint, newer_local
from runner.run.evaluate import Evaluation
from runner.run.lineage import log_datasets
from runner.run.logged_model import log_model
from runner.run.loop import LoopState, console, replicas_identical, restore_state, train
from runner.run.plots import close, confusion_figure, learning_curves_figure
from runner.run.system_metrics import system_metrics
from runner.tracking import (
    FINAL_ACCURACY,
    RECIPE_ARTIFACT,
    MlflowTracker,
    NullTracker,
    Tracker,
    check_store,
    describe_store,
    download_artifact,
    find_run,
    latest_unfinished_run,
    local_folder,
    recipe_of_run,
    refuse_live_run,
    runs_with_tag,
)
from schemas import Recipe, UserError, recipe_to_dict, validate_recipe
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


def distributed_params(recipe: Recipe, dist: distributed.Distributed) -> dict[str, Any]:
    """What a torchrun job of `world_size` processes means: each rank draws `data.batch_size` labeled (and the
    method's unlabeled batch size) images per iteration, so one iteration is one optimizer step on the global batch;
    `schedule.iterations` and the learning rates are the recipe's, whatever the world size."""
    unlabeled = int(getattr(recipe.method, "unlabeled_batch_size", 0))
    return {
        "distributed.world_size": dist.world_size,
        "distributed.backend": dist.backend,
        "distributed.global_batch_size": recipe.data.batch_size * dist.world_size,
        "distributed.global_unlabeled_batch_size": unlabeled * dist.world_size,
        "distributed.sync_batchnorm": recipe.runtime.sync_batchnorm
        and distributed.sync_batchnorm_supported(select_device(recipe.runtime), dist),
    }


def _log_run_inputs(tracker: Tracker, components: Components) -> None:
    recipe = components.recipe
    resolved = recipe_to_dict(recipe)
    tracker.log_params(resolved)
    tracker.log_params(distributed_params(recipe, components.dist))
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
            tracker.wait_for_server()  # MLflow's model calls go to the server directly, not through the queue
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
    Under torchrun every rank calls this; rank 0 alone talks to the store and logs.
    """
    started = time.perf_counter()
    cpu_isa.pin(recipe.runtime.cpu_isa)  # set by the CLI before torch started; here, checked
    dist = distributed.current()
    dist.on_main(lambda: check_store(recipe.tracking))  # a read-only or unreachable store fails before data loads
    with dist.one_per_node_first():  # downloads and generator pretraining, once per node
        prepared = prepare_data(recipe)  # a missing dataset fails here, before any MLflow run exists
        GENERATORS.prepare(recipe.generator, tracking=recipe.tracking, runtime=recipe.runtime)
    components = build_components(recipe, prepared, dist)
    if resume_run_id is None and dist.restart_count > 0:  # torchrun restarted the worker group: continue its run
        resume_run_id = dist.on_main(lambda: _run_of_this_job(recipe))
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
                _opened_tracker(recipe, dist, resume_run_id, parent_run_id, extra_tags) as opened,
            ):
                tracker = opened if isinstance(opened, MlflowTracker) else None
                run_id = tracker.run_id if tracker is not None else None
                local = tracker.local_folder if tracker is not None else None
                checkpoint_file = checkpoint_path(local or Path(scratch))
                if tracker is not None:
                    _announce(tracker, components, resume_run_id, state)
                with system_metrics(recipe.tracking, tracker) if tracker is not None else nullcontext(opened) as logs:
                    evaluation = train(components, logs, checkpoint_file, state, on_validation)
                identical = replicas_identical(components)
                if dist.any_rank(interrupts.requested()):
                    raise interrupts.Interrupted(f"interrupted after the last iteration ({state.iteration})")
                if tracker is not None:
                    if dist.enabled:
                        tracker.set_tags({REPLICAS_TAG: str(identical).lower()})
                        if not identical:
                            console.print(
                                f"warning: the {dist.world_size} processes ended with different weights or method"
                                " state; the run logs rank 0's"
                            )
                    _log_run_outputs(tracker, components, evaluation, state)
        except KeyboardInterrupt as exc:
            if run_id is None:
                raise
            done = str(exc) if isinstance(exc, interrupts.Interrupted) else "interrupted"
            processes = f" --nproc {dist.world_size}" if dist.enabled else ""
            marked = "marked KILLED" if tracker is None or tracker.ended_as else "not marked (its server is down)"
            raise interrupts.Interrupted(
                f"{done}; run {run_id} saved and {marked}; continue it with: "
                f"metassl run --resume {run_id}{processes} --tracking-uri {recipe.tracking.tracking_uri}"
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
    return RunResult(run_id or "", evaluation.accuracy, time.perf_counter() - started, evaluation)


REPLICAS_TAG = "metassl.replicas_identical"  # torchrun jobs: every rank ended with the same weights and bank


@contextmanager
def _opened_tracker(
    recipe: Recipe,
    dist: distributed.Distributed,
    resume_run_id: str | None,
    parent_run_id: str | None,
    extra_tags: dict[str, str] | None,
) -> Iterator[Tracker]:
    """Rank 0 logs the run to MLflow (and ends it FINISHED, FAILED or KILLED); every other rank logs nothing."""
    if not dist.is_main:
        yield NullTracker()
        return
    tags = {
        **run_tags(recipe),
        **generator_link_tags(recipe.generator, recipe.tracking),
        "metassl.world_size": str(dist.world_size),
        **(extra_tags or {}),
    }
    if dist.enabled:
        tags[distributed.JOB_TAG] = distributed.job_key()
    with MlflowTracker.open(
        recipe.tracking,
        run_name=recipe.tracking.run_name or recipe.name,
        tags=tags,
        resume_run_id=resume_run_id,
        parent_run_id=parent_run_id,
    ) as tracker:
        yield tracker


def _announce(tracker: MlflowTracker, components: Components, resume_run_id: str | None, state: LoopState) -> None:
    recipe, dist = components.recipe, components.dist
    if resume_run_id is None:
        _log_run_inputs(tracker, components)
        log_datasets(tracker.client, tracker.run_id, components.data, recipe.data.name, recipe.seed)
    else:
        tracker.skip_logged_steps()
        console.print(f"resuming run {resume_run_id} at iteration {state.iteration}")
    processes = f" x {dist.world_size} processes ({dist.backend})" if dist.enabled else ""
    console.print(f"run {tracker.run_id}: {escape(recipe.name)} on {components.device}{processes}")
    console.print(escape(describe_store(recipe.tracking.tracking_uri)))


def _run_of_this_job(recipe: Recipe) -> str | None:
    """The run an earlier attempt of this torchrun job started and did not finish (torchrun --max-restarts)."""
    runs = runs_with_tag(recipe.tracking, distributed.JOB_TAG, distributed.job_key())
    unfinished = [run for run in runs if run.info.status != "FINISHED"]
    if unfinished:
        console.print(f"torchrun restarted the workers: continuing run {unfinished[0].info.run_id}")
    return unfinished[0].info.run_id if unfinished else None


def _restored_state(recipe: Recipe, run_id: str, components: Components, scratch: Path) -> LoopState:
    """The loop state from the run's checkpoint (a fresh start if it has none); a damaged one is a UserError.

    Rank 0 fetches and loads the checkpoint and hands it to the other ranks."""
    artifact = f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}"

    def fetch() -> dict[str, Any] | None:
        client, _ = find_run(recipe.tracking, run_id)
        path = download_artifact(client, run_id, artifact, scratch)
        checkpoint = None if path is None else load_checkpoint(path, f"{artifact} of run {run_id}")
        return newer_local(checkpoint, checkpoint_path(local_folder(run_id)))

    checkpoint = components.dist.on_main(fetch)
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
    def resumable() -> dict[str, Any]:
        logged = recipe_of_run(run_id, tracking)
        recipe, run = logged.recipe, logged.run
        if run.info.status == "FINISHED":
            raise UserError(f"run {run_id} already finished; start a new one with `metassl run` on its recipe")
        refuse_live_run(run)
        # The store it was found in, not the one its recipe names: the same store may be reached another way now.
        store = recipe.tracking.model_copy(update={"tracking_uri": tracking.tracking_uri})
        return recipe_to_dict(recipe.model_copy(update={"tracking": store}))

    # The resolved recipe travels as plain data: every rank validates the same document.
    return execute(validate_recipe(distributed.current().on_main(resumable)), resume_run_id=run_id)


def resume_latest(recipe: Recipe) -> RunResult:
    def unfinished() -> str:
        check_store(recipe.tracking)
        run = latest_unfinished_run(recipe.tracking, recipe_hash(recipe))
        if run is None:
            raise UserError(f"--resume: no unfinished run of recipe '{recipe.name}' in {recipe.tracking.tracking_uri}")
        refuse_live_run(run)
        return run.info.run_id

    return execute(recipe, resume_run_id=distributed.current().on_main(unfinished))
