"""The tracking store: checking its URI, opening it once per process, and finding or creating an experiment."""

from __future__ import annotations

import fcntl
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from runner.faults import disk_full
from runner.tracking.names import EXPERIMENT_KIND_TAG
from schemas import UserError
from schemas.training import Tracking


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


def is_server(uri: str) -> bool:
    """An MLflow tracking server (as opposed to a store on this machine's disk)."""
    return uri.startswith(("http://", "https://", "databricks"))


@contextmanager
def quick_http_requests(timeout: int = PROBE_TIMEOUT_SECONDS) -> Iterator[None]:
    """MLflow retries a dead server for minutes by default; one short try says enough."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
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
    """Fail in seconds, with one line, when a tracking server does not answer.

    A plain HTTP request first, for a clear reason (connection refused, timed out); then one MLflow call with
    retries off, since MLflow's own client would retry an unreachable server for minutes.
    """
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_SECONDS):
            pass
    except urllib.error.HTTPError:
        pass  # something answers; the MLflow call below says whether it is MLflow
    except (urllib.error.URLError, OSError) as exc:
        _unreachable(uri, str(getattr(exc, "reason", exc)))
    try:
        with quick_http_requests():
            client.search_experiments(max_results=1)
    except Exception as exc:
        _unreachable(uri, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)


def _unreachable(uri: str, reason: str) -> None:
    raise UserError(
        f"tracking.tracking_uri: no MLflow server answers at {uri} ({reason}); start one (mlflow server) or fix the URI"
    )


def sqlite_file(uri: str) -> Path | None:
    """The database file a `sqlite:///PATH` URI opens (PATH is relative to the current folder), or None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))


def describe_store(uri: str) -> str:
    """One line saying where a store is; for SQLite, the absolute file, and the four-slash form where it matters."""
    database = sqlite_file(uri)
    if database is None:
        return f"store {uri}"
    line = f"store {uri} (the file {database.absolute()})"
    top = database.parts[0] if database.parts else ""
    if not database.is_absolute() and top not in (".", "..") and (Path("/") / top).is_dir():
        line += (
            f"; note: three slashes make {database} relative to this folder, write sqlite:////{database}"
            f" (four slashes) for /{database}"
        )
    return line


@contextmanager
def store_lock(tracking: Tracking) -> Iterator[None]:
    """Serialize creating a SQLite store, its schema migration, and creating an experiment across processes.

    MLflow migrates a fresh database on first open; two processes doing it at once corrupt each other's work.
    """
    database = sqlite_file(tracking.tracking_uri)
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


_clients: dict[str, Any] = {}  # one client per store and process: opening one is a lock and a migration check


def client_for(tracking: Tracking) -> Any:
    """The process's client on the store, opened on first use: a server must answer, a local store is created or
    migrated under a lock. A store that fails to open is tried again on the next call."""
    uri = tracking.tracking_uri
    if uri in _clients:
        return _clients[uri]
    from mlflow.tracking import MlflowClient

    if is_server(uri):
        client = MlflowClient(tracking_uri=uri)
        _probe(client, uri)
    else:
        with store_lock(tracking):
            try:
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)  # creates or migrates the schema, under the lock
            except Exception as exc:
                if disk_full(exc):
                    raise
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise UserError(f"tracking.tracking_uri: cannot open the store {uri} ({reason})") from None
    _clients[uri] = client
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
    database = sqlite_file(tracking.tracking_uri)
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
        client_for(tracking)


def experiment_id(tracking: Tracking) -> str:
    """Find or create the experiment. On a server it keeps the server's default artifact location, so every
    machine sees the artifacts; only a store on this disk gets the local `tracking.artifact_root`."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking)
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
    with store_lock(tracking):
        try:
            return client.create_experiment(
                tracking.experiment, artifact_location=location, tags=dict([EXPERIMENT_KIND_TAG])
            )
        except MlflowException:  # another worker created it between our lookup and create
            experiment = client.get_experiment_by_name(tracking.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id
