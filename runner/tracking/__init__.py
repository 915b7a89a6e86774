"""The one package that talks to MLflow.

- `store`: the tracking URI, opening the store (one client per store and process), experiments;
- `tracker`: the `Tracker` protocol a run logs through, `MlflowTracker` and `NullTracker`;
- `queries`: finding runs, their artifacts and recipes, and setting their status;
- `liveness`: whether a RUNNING run's process is still alive;
- `names`: the tags, artifacts and metrics other commands read back;
- `outbox`: a run's writes to a tracking server, queued through its outages.

Callers import from here; the modules are the implementation.
"""

from runner.tracking.liveness import is_dead, owner_tags, refuse_live_run, shown_status
from runner.tracking.names import (
    EXPERIMENT_KIND_TAG,
    FINAL_ACCURACY,
    HOST_TAG,
    PARENT_TAG,
    PID_START_TAG,
    PID_TAG,
    RECIPE_ARTIFACT,
)
from runner.tracking.outbox import TrackingOutage, local_folder
from runner.tracking.queries import (
    LoggedRun,
    child_runs,
    create_run,
    delete_run,
    download_artifact,
    experiment_runs,
    find_run,
    latest_unfinished_run,
    list_runs,
    mark_failed,
    metric_histories,
    recipe_of_run,
    runs_with_tag,
    set_status,
    tracking_of_run,
)
from runner.tracking.store import (
    check_store,
    client_for,
    describe_store,
    experiment_id,
    is_server,
    quiet_libraries,
    sqlite_file,
    store_lock,
)
from runner.tracking.tracker import MlflowTracker, NullTracker, Tracker, flatten

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "FINAL_ACCURACY",
    "HOST_TAG",
    "PARENT_TAG",
    "PID_START_TAG",
    "PID_TAG",
    "RECIPE_ARTIFACT",
    "LoggedRun",
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "TrackingOutage",
    "check_store",
    "child_runs",
    "client_for",
    "create_run",
    "delete_run",
    "describe_store",
    "download_artifact",
    "experiment_id",
    "experiment_runs",
    "find_run",
    "flatten",
    "is_dead",
    "is_server",
    "latest_unfinished_run",
    "list_runs",
    "local_folder",
    "mark_failed",
    "metric_histories",
    "owner_tags",
    "quiet_libraries",
    "recipe_of_run",
    "refuse_live_run",
    "runs_with_tag",
    "set_status",
    "shown_status",
    "sqlite_file",
    "store_lock",
    "tracking_of_run",
]
