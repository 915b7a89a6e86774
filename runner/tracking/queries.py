"""Questions about runs already in a store: find one, search by tag, fetch an artifact or a recipe, set a status."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.tracking.names import PARENT_TAG, RECIPE_ARTIFACT
from runner.tracking.store import client_for, experiment_id
from schemas import Recipe, UserError, validate_recipe
from schemas.training import Tracking
from schemas.yaml_budget import parse_yaml


def download_artifact(client: Any, run_id: str, artifact_file: str, folder: Path) -> Path | None:
    """One artifact of a run, fetched through MLflow into `folder`; None if the run has no such artifact."""
    parent, _, name = artifact_file.rpartition("/")
    if name not in {Path(info.path).name for info in client.list_artifacts(run_id, parent or None)}:
        return None
    return Path(client.download_artifacts(run_id, artifact_file, str(folder)))


def metric_histories(tracking: Tracking, run_ids: list[str], key: str) -> list[dict[int, float]]:
    """Each run's logged values of `key`, step -> value (empty for a run that never logged it)."""
    client = client_for(tracking)
    return [{point.step: point.value for point in client.get_metric_history(run_id, key)} for run_id in run_ids]


def find_run(tracking: Tracking, run_id: str) -> tuple[Any, Any]:
    """(client, run) for a run id, or a one-line UserError."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking)
    try:
        return client, client.get_run(run_id)
    except MlflowException:
        raise UserError(
            f"run '{run_id}' not found in {tracking.tracking_uri}; list runs with `metassl runs` or open `metassl ui`"
        ) from None


def tracking_of_run(tracking: Tracking, run_id: str) -> tuple[Tracking, Any]:
    """The `Tracking` of an existing run (the same store, the run's own experiment), and the run."""
    client, run = find_run(tracking, run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    return tracking.model_copy(update={"experiment": experiment.name}), run


def latest_unfinished_run(tracking: Tracking, recipe_hash: str) -> Any | None:
    """The newest run of this recipe that did not finish, dead or stopped (to continue with `--resume RECIPE`)."""
    filter_string = f"tags.`metassl.recipe_hash` = '{_quote(recipe_hash)}' and attributes.status != 'FINISHED'"
    runs = _search(tracking, filter_string, ["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _search(
    tracking: Tracking, filter_string: str, order_by: list[str] | None = None, max_results: int | None = None
) -> list[Any]:
    """Runs of the tracking block's experiment matching `filter_string`, all pages (or the first `max_results`)."""
    client = client_for(tracking)
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        return []
    runs: list[Any] = []
    token = None
    while True:
        page_size = 1000 if max_results is None else min(1000, max_results - len(runs))
        page = client.search_runs(
            [experiment.experiment_id], filter_string, order_by=order_by, max_results=page_size, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token or (max_results is not None and len(runs) >= max_results):
            return runs


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def runs_with_tag(tracking: Tracking, key: str, value: str) -> list[Any]:
    """Runs of the recipe's experiment whose tag `key` equals `value`, newest first."""
    return _search(tracking, f"tags.`{key}` = '{_quote(value)}'", ["attributes.start_time DESC"])


def child_runs(tracking: Tracking, parent_run_id: str) -> list[Any]:
    """The nested runs of a parent (a sweep's children), newest first."""
    return runs_with_tag(tracking, PARENT_TAG, parent_run_id)


def experiment_runs(tracking: Tracking) -> list[Any]:
    """Every run of the experiment, newest first; a UserError if the experiment does not exist."""
    if client_for(tracking).get_experiment_by_name(tracking.experiment) is None:
        raise UserError(
            f"no experiment or run '{tracking.experiment}' in {tracking.tracking_uri}; list runs with `metassl runs`"
        )
    return _search(tracking, "", ["attributes.start_time DESC"])


def list_runs(tracking: Tracking, max_results: int = 20) -> list[Any]:
    return _search(tracking, "", ["attributes.start_time DESC"], max_results=max_results)


def create_run(tracking: Tracking, run_name: str, tags: Mapping[str, str]) -> str:
    """A new run left RUNNING (a candidate parent that several workers race to create; see runner/studies/claims.py)."""
    return client_for(tracking).create_run(experiment_id(tracking), tags=dict(tags), run_name=run_name).info.run_id


def delete_run(tracking: Tracking, run_id: str) -> None:
    client_for(tracking).delete_run(run_id)


def set_status(tracking: Tracking, run_id: str, status: str) -> None:
    client_for(tracking).set_terminated(run_id, status=status)


def mark_failed(tracking: Tracking, run_id: str) -> None:
    """End a run left RUNNING by a process that died without cleaning up (SIGKILL, out of memory)."""
    set_status(tracking, run_id, "FAILED")


@dataclass
class LoggedRun:
    recipe: Recipe
    run: Any
    client: Any

    def download(self, artifact_file: str, folder: Path) -> Path | None:
        """Fetch one of the run's artifacts into `folder` through MLflow; None if it has none."""
        return download_artifact(self.client, self.run.info.run_id, artifact_file, folder)


def recipe_of_run(run_id: str, tracking: Tracking) -> LoggedRun:
    """The resolved recipe logged with a run, the run itself, and a client to fetch its artifacts."""
    client, run = find_run(tracking, run_id)
    with tempfile.TemporaryDirectory(prefix="metassl-recipe-") as tmp:
        path = download_artifact(client, run_id, RECIPE_ARTIFACT, Path(tmp))
        if path is None:
            raise UserError(f"run {run_id} has no {RECIPE_ARTIFACT} artifact; it was not started by metassl run")
        text = path.read_text()
    source = f"run {run_id} {RECIPE_ARTIFACT}"
    recipe = validate_recipe(parse_yaml(text, source), source)  # within the budget: a shared store is not trusted
    return LoggedRun(recipe, run, client)
