"""A tune trial inside its `metassl run` child: each validation goes to Optuna (which may prune the trial), and
the result is told to the study. The tune worker that launched the child keeps the trial's heartbeat."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas import Recipe

TRIAL_ENV = "METASSL_TUNE_TRIAL"  # set by the worker: where the study is and which trial this child runs


def link(storage: str, study: str, trial_id: int, number: int, wait: float) -> dict[str, str]:
    """The child's environment entry (the storage URL travels here, not on a command line `ps` shows)."""
    fields = {"storage": storage, "study": study, "trial_id": trial_id, "number": number, "wait": wait}
    return {TRIAL_ENV: json.dumps(fields)}


def is_trial() -> bool:
    return bool(os.environ.get(TRIAL_ENV))


def run_as_trial(recipe: Recipe, parent_run_id: str | None, extra_tags: dict[str, str]) -> str:
    """Train `recipe` as the trial named in the environment; return the line the worker shows."""
    import optuna

    from runner import distributed
    from runner.run import session
    from runner.studies.outage import Patience
    from runner.studies.tune import OBJECTIVE, TRIAL_STATE_TAG, TRIAL_TAG, open_storage
    from runner.tracking import MlflowTracker, runs_with_tag, set_status

    fields: dict[str, Any] = json.loads(os.environ[TRIAL_ENV])
    number = fields["number"]
    patience = Patience(f"trial {number}", float(fields["wait"]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(fields["storage"], patience=patience)
    study = patience.call(optuna.load_study, study_name=fields["study"], storage=storage)
    trial = optuna.trial.Trial(study, int(fields["trial_id"]))
    total = recipe.schedule.iterations
    last: list[float] = []

    def on_validation(iteration: int, accuracy: float) -> None:
        last.append(accuracy)
        if iteration < total:  # the last evaluation is the result, not a reason to stop
            patience.call(trial.report, accuracy, iteration)
            if patience.call(trial.should_prune):
                raise optuna.TrialPruned(f"pruned at iteration {iteration}")

    dist = distributed.current()  # in a `--nproc` trial, rank 0 alone reports to Optuna and decides prunes
    try:
        result = session.execute(
            recipe, parent_run_id=parent_run_id, extra_tags=extra_tags, on_validation=on_validation
        )
    except distributed.RankStopped:
        if dist.is_main:
            raise
        return ""  # rank 0 pruned the trial or failed, and speaks for it
    except optuna.TrialPruned as exc:
        runs = runs_with_tag(recipe.tracking, TRIAL_TAG, extra_tags[TRIAL_TAG])
        if runs:
            patience.call(trial.set_user_attr, "run_id", runs[0].info.run_id)
            MlflowTracker.attach(recipe.tracking, runs[0].info.run_id).set_tags({TRIAL_STATE_TAG: "PRUNED"})
            set_status(recipe.tracking, runs[0].info.run_id, "KILLED")
        patience.call(study.tell, number, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        return f"pruned ({exc}; {OBJECTIVE} {last[-1]:.4f})"
    if not dist.is_main:
        return ""
    value = last[-1]
    MlflowTracker.attach(recipe.tracking, result.run_id).set_tags({TRIAL_STATE_TAG: "COMPLETE"})
    MlflowTracker.attach(recipe.tracking, result.run_id).log_metrics({"tune/objective": value}, step=total)
    patience.call(trial.set_user_attr, "run_id", result.run_id)
    patience.call(study.tell, number, value, skip_if_finished=True)
    return f"{OBJECTIVE} {value:.4f} (test {result.accuracy:.4f}, run {result.run_id}, {result.wall_seconds:.0f} s)"
