"""The one module that talks to MLflow: one `Tracker` per run."""

from __future__ import annotations

import fcntl
import io
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from schemas import Recipe, UserError, validate_recipe
from schemas.training import Tracking

PARENT_TAG = "mlflow.parentRunId"
RECIPE_ARTIFACT = "recipe.yaml"
FINAL_ACCURACY = "final/test_accuracy"  # the metric a finished run reports; `runs`, sweeps and reports read it


def quiet_libraries() -> None:
    """MLflow and alembic log INFO lines on every store open; users want the run's output, not theirs."""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per fetched checkpoint or recipe
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # It logs a traceback before re-raising a store error (unopenable, disk full); the CLI reports it in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


PROBE_TIMEOUT_SECONDS = 5
_reachable: set[str] = set()


def is_server(uri: str) -> bool:
    """An MLflow tracking server (as opposed to a store on this machine's disk)."""
    return uri.startswith(("http://", "https://", "databricks"))


@contextmanager
def _quick_http_requests() -> Iterator[None]:
    """MLflow retries a dead server for minutes by default; one short try says enough."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(PROBE_TIMEOUT_SECONDS)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _probe(client: Any, uri: str) -> None:
    """Fail in seconds, with one line, when a tracking server does not answer (once per process and URI).

    A plain HTTP request first, for a clear reason (connection refused, timed out); then one MLflow call with
    retries off, since MLflow's own client would retry an unreachable server for minutes.
    """
    if uri in _reachable:
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_SECONDS):
            pass
    except urllib.error.HTTPError:
        pass  # something answers; the MLflow call below says whether it is MLflow
    except (urllib.error.URLError, OSError) as exc:
        _unreachable(uri, str(getattr(exc, "reason", exc)))
    try:
        with _quick_http_requests():
            client.search_experiments(max_results=1)
    except Exception as exc:
        _unreachable(uri, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
    _reachable.add(uri)


def _unreachable(uri: str, reason: str) -> None:
    raise UserError(
        f"tracking.tracking_uri: no MLflow server answers at {uri} ({reason}); start one (mlflow server) or fix the URI"
    )


# Who runs a RUNNING run, so `metassl runs` can tell a dead one (SIGKILL, out of memory) from a live one.
HOST_TAG, PID_TAG, PID_START_TAG = "metassl.host", "metassl.pid", "metassl.pid_start"


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
    """A client on the store, opened now: a server must answer, a local store is created or migrated under a lock."""
    from mlflow.tracking import MlflowClient

    from runner.run.faults import disk_full

    uri = tracking.tracking_uri
    if is_server(uri):
        client = MlflowClient(tracking_uri=uri)
        _probe(client, uri)
        return client
    with _store_lock(tracking):
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # opens the store: creates or migrates its schema, under the lock
        except Exception as exc:
            if disk_full(exc):
                raise
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UserError(f"tracking.tracking_uri: cannot open the store {uri} ({reason})") from None
    return client


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
    """Fail fast, in one line, on a store a run could not write to (read-only), or a server that does not answer.

    It runs before any data loads, and from `metassl validate`.
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
    if is_server(tracking.tracking_uri):
        _client(tracking)


# MLflow 3's experiment kind "Machine learning": UIs that choose the view from this tag open the model-training view
# (runs, metrics, charts), not the GenAI one (traces, evaluations). MLflow 3.17 chooses it per browser instead (a
# toggle, or the URL's workflowType), so `metassl ui` also prints a link to that view.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


def _experiment_id(client: Any, tracking: Tracking) -> str:
    """Find or create the experiment. On a server it keeps the server's default artifact location, so every
    machine sees the artifacts; only a store on this disk gets the local `tracking.artifact_root`."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG[0] not in experiment.tags:  # made by an older metassl or by hand
            client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND_TAG)
        return experiment.experiment_id
    location = None
    if not is_server(tracking.tracking_uri):
        folder = (Path(tracking.artifact_root) / tracking.experiment).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.as_uri()
    with _store_lock(tracking):
        try:
            return client.create_experiment(
                tracking.experiment, artifact_location=location, tags=dict([EXPERIMENT_KIND_TAG])
            )
        except MlflowException:  # another worker created it between our lookup and create
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
        self.log_bytes(buffer.getvalue(), artifact_file)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """Write `data` to a temp file and log it under `artifact_file` (folders/name.ext)."""
        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="metassl-artifact-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), folder or None)

    def download(self, artifact_file: str, folder: Path) -> Path | None:
        """Fetch one artifact of this run into `folder` (from the server, or the local store); None if absent."""
        return download_artifact(self.client, self.run_id, artifact_file, folder)


def download_artifact(client: Any, run_id: str, artifact_file: str, folder: Path) -> Path | None:
    """One artifact of a run, fetched through MLflow into `folder`; None if the run has no such artifact."""
    parent, _, name = artifact_file.rpartition("/")
    if name not in {Path(info.path).name for info in client.list_artifacts(run_id, parent or None)}:
        return None
    return Path(client.download_artifacts(run_id, artifact_file, str(folder)))


def metric_histories(tracking: Tracking, run_ids: list[str], key: str) -> list[dict[int, float]]:
    """Each run's logged values of `key`, step -> value (empty for a run that never logged it)."""
    client = _client(tracking)
    return [{point.step: point.value for point in client.get_metric_history(run_id, key)} for run_id in run_ids]


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


def create_run(tracking: Tracking, run_name: str, tags: Mapping[str, str]) -> str:
    """A new run left RUNNING (a candidate parent that several workers race to create; see runner/studies/claims.py)."""
    client = _client(tracking)
    return client.create_run(_experiment_id(client, tracking), tags=dict(tags), run_name=run_name).info.run_id


def delete_run(tracking: Tracking, run_id: str) -> None:
    _client(tracking).delete_run(run_id)


def set_status(tracking: Tracking, run_id: str, status: str) -> None:
    _client(tracking).set_terminated(run_id, status=status)


def mark_failed(tracking: Tracking, run_id: str) -> None:
    """End a run left RUNNING by a process that died without cleaning up (SIGKILL, out of memory)."""
    _client(tracking).set_terminated(run_id, status="FAILED")


def list_runs(tracking: Tracking, max_results: int = 20) -> list[Any]:
    return _search(tracking, "", ["attributes.start_time DESC"], max_results=max_results)


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
    recipe = validate_recipe(yaml.safe_load(text), f"run {run_id} {RECIPE_ARTIFACT}")
    return LoggedRun(recipe, run, client)
