"""The one module that talks to MLflow: one `Tracker` per run."""

from __future__ import annotations

import fcntl
import io
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from schemas import UserError
from schemas.training import Tracking

PARENT_TAG = "mlflow.parentRunId"
RECIPE_ARTIFACT = "recipe.yaml"
# Who runs a RUNNING run, so `metassl runs` can tell a dead one (SIGKILL, out of memory) from a live one.
HOST_TAG, PID_TAG, PID_START_TAG = "metassl.host", "metassl.pid", "metassl.pid_start"
PROBE_TIMEOUT_S = 3.0


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))


@contextmanager
def _store_lock(tracking: Tracking) -> Iterator[None]:
    """Serialize creating a SQLite store, its schema migration, and creating an experiment across processes.

    MLflow migrates a fresh database on first open; two processes doing it at once corrupt each other's work.
    """
    database = _sqlite_path(tracking.tracking_uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(database.parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _client(tracking: Tracking) -> Any:
    from mlflow.tracking import MlflowClient

    from runner.faults import disk_full

    with _store_lock(tracking):
        try:
            client = MlflowClient(tracking_uri=tracking.tracking_uri)
            client.search_experiments(max_results=1)  # opens the store: creates or migrates its schema, under the lock
        except Exception as exc:
            if disk_full(exc):
                raise
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"tracking.tracking_uri: cannot open the store {tracking.tracking_uri} ({reason})"
            ) from None
    return client


def _experiment_id(client: Any, tracking: Tracking) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = (Path(tracking.artifact_root) / tracking.experiment).resolve()
    location.mkdir(parents=True, exist_ok=True)
    with _store_lock(tracking):
        try:
            return client.create_experiment(tracking.experiment, artifact_location=location.as_uri())
        except MlflowException:  # another process created it first (a server store, which the lock cannot cover)
            experiment = client.get_experiment_by_name(tracking.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: _process_start(pid) or ""}


def is_dead(run: Any) -> bool:
    """A RUNNING run whose process (on this host) is gone. Runs of other hosts cannot be checked: not dead."""
    tags = run.data.tags
    if run.info.status != "RUNNING" or tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG):
        return False
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by another user
    started = _process_start(pid)
    return bool(tags.get(PID_START_TAG)) and started is not None and started != tags[PID_START_TAG]


def shown_status(run: Any) -> str:
    return "DEAD" if is_dead(run) else run.info.status


def refuse_live_run(run: Any) -> None:
    """Resuming a run whose process still runs would have two processes write one run."""
    tags = run.data.tags
    alive_here = tags.get(HOST_TAG) == socket.gethostname() and not is_dead(run)
    if run.info.status == "RUNNING" and tags.get(PID_TAG) and alive_here:
        raise UserError(
            f"run {run.info.run_id} is still running (pid {tags[PID_TAG]}); stop it first (Ctrl-C or kill"
            f" {tags[PID_TAG]}), then resume"
        )


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unwritable(path: Path) -> str | None:
    target = _nearest_existing(path)
    if not os.access(target, os.W_OK) or (target.is_dir() and not os.access(target, os.X_OK)):
        return f"{target} is not writable"
    if target != path.absolute() and target.is_file():
        return f"{target} is a file, not a folder"
    return None


def check_store(tracking: Tracking) -> None:
    """Fail fast, in one line, on a store a run could not write to: read-only, or no server answering.

    Touches nothing: it runs before any data loads and from `metassl validate`.
    """
    database = _sqlite_path(tracking.tracking_uri)
    if database is not None:
        problem = _unwritable(database) or _unwritable(database.parent)
        if problem:
            raise UserError(f"tracking.tracking_uri: the store {tracking.tracking_uri} is read-only ({problem})")
    scheme = urlparse(tracking.tracking_uri).scheme
    if scheme in ("", "file", "sqlite"):
        problem = _unwritable(Path(tracking.artifact_root))
        if problem:
            raise UserError(f"tracking.artifact_root: {tracking.artifact_root} is read-only ({problem})")
    if scheme in ("http", "https"):
        _probe_server(tracking.tracking_uri)


def _probe_server(uri: str) -> None:
    """Any HTTP answer will do; MLflow's own client would retry an unreachable server for minutes."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"tracking.tracking_uri: no MLflow server answers at {uri} ({reason}); start one (mlflow server) or fix"
            " the URI"
        ) from None


def _end_run(client: Any, run_id: str, status: str) -> bool:
    """Set the final status; False when even that fails (the store's disk is full, the server is gone)."""
    try:
        client.set_terminated(run_id, status=status)
    except Exception:
        return False
    return True


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (MLflow params are flat)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _scalar(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


class Tracker:
    """Logs one MLflow run. Open it with `Tracker.open(...)`, which ends the run with the right status."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.logged_through: dict[str, int] = {}  # metric -> last step already logged; those are not logged again
        self.ended_as: str | None = None  # the final status, once it is stored

    @classmethod
    @contextmanager
    def open(
        cls,
        tracking: Tracking,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        resume_run_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> Iterator[Tracker]:
        """Start (or resume) a run; mark it FINISHED, FAILED, or KILLED (Ctrl-C) when the block ends."""
        client = _client(tracking)
        if resume_run_id is not None:
            client.update_run(resume_run_id, status="RUNNING")
            run_id = resume_run_id
        else:
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags[PARENT_TAG] = parent_run_id
            run = client.create_run(_experiment_id(client, tracking), tags=all_tags, run_name=run_name)
            run_id = run.info.run_id
        tracker = cls(client, run_id)
        try:
            tracker.set_tags(owner_tags())
            yield tracker
        except KeyboardInterrupt:
            tracker.ended_as = "KILLED" if _end_run(client, run_id, "KILLED") else None
            raise
        except BaseException:
            tracker.ended_as = "FAILED" if _end_run(client, run_id, "FAILED") else None
            raise
        client.set_terminated(run_id, status="FINISHED")
        tracker.ended_as = "FINISHED"

    @classmethod
    def attach(cls, tracking: Tracking, run_id: str) -> Tracker:
        """Log more to an existing run without touching its status (a sweep's parent, a report)."""
        return cls(_client(tracking), run_id)

    @property
    def artifact_dir(self) -> Path:
        """The run's local artifact folder (the store is local: `mlruns/`)."""
        return local_artifact_dir(self.client, self.run_id)

    def skip_logged_steps(self) -> None:
        """From now on, drop metric points at or before the last step already logged for that metric.

        A resumed run replays the iterations after its checkpoint; a killed run may have logged some of them.
        """
        keys = self.client.get_run(self.run_id).data.metrics
        self.logged_through = {
            key: max(point.step for point in self.client.get_metric_history(self.run_id, key)) for key in keys
        }

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(key, _scalar(value), now, step)
            for key, value in metrics.items()
            if step > self.logged_through.get(key, -1)
        ]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_image_grid(self, images: Any, artifact_file: str, nrow: int | None = None) -> None:
        """Log `N x C x H x W` images in [0, 1] as one PNG grid."""
        import math

        from torchvision.utils import make_grid, save_image

        images = images.detach().float().cpu().clamp(0, 1)
        grid = make_grid(images, nrow=nrow or max(1, int(math.sqrt(len(images)))), padding=2, pad_value=1.0)
        buffer = io.BytesIO()
        save_image(grid, buffer, format="png")
        target = self.artifact_dir / artifact_file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buffer.getvalue())

    def get_run(self) -> Any:
        return self.client.get_run(self.run_id)


def local_artifact_dir(client: Any, run_id: str) -> Path:
    uri = client.get_run(run_id).info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise UserError(f"run {run_id} keeps artifacts at {uri}; metassl needs a local artifact store (mlruns/)")
    path = Path(unquote(parsed.path))
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_run(tracking: Tracking, run_id: str) -> tuple[Any, Any]:
    """(client, run) for a run id, or a one-line UserError."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking)
    try:
        return client, client.get_run(run_id)
    except MlflowException:
        raise UserError(
            f"run '{run_id}' not found in {tracking.tracking_uri}; list runs with `metassl runs` or open `metassl ui`"
        ) from None


def tracking_of_run(tracking_uri: str, run_id: str) -> tuple[Tracking, Any]:
    """The `Tracking` (store + the run's experiment) of an existing run, and the run."""
    client, run = find_run(Tracking(tracking_uri=tracking_uri), run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    return Tracking(tracking_uri=tracking_uri, experiment=experiment.name), run


def latest_unfinished_run(tracking: Tracking, recipe_hash: str) -> Any | None:
    """The newest run of this recipe that did not finish, dead or stopped (to continue with `--resume RECIPE`)."""
    filter_string = f"tags.`metassl.recipe_hash` = '{_quote(recipe_hash)}' and attributes.status != 'FINISHED'"
    runs = _search(tracking, filter_string, ["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _search(
    tracking: Tracking, filter_string: str, order_by: list[str] | None = None, max_results: int | None = None
) -> list[Any]:
    """Runs of the tracking block's experiment matching `filter_string`, all pages (or the first `max_results`)."""
    client = _client(tracking)
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
    client = _client(tracking)
    if client.get_experiment_by_name(tracking.experiment) is None:
        raise UserError(
            f"no experiment or run '{tracking.experiment}' in {tracking.tracking_uri}; list runs with `metassl runs`"
        )
    return _search(tracking, "", ["attributes.start_time DESC"])


def mark_failed(tracking: Tracking, run_id: str) -> None:
    """End a run left RUNNING by a process that died without cleaning up (SIGKILL, out of memory)."""
    _client(tracking).set_terminated(run_id, status="FAILED")


def list_runs(tracking: Tracking, max_results: int = 20) -> list[Any]:
    return _search(tracking, "", ["attributes.start_time DESC"], max_results=max_results)
