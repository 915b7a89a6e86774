"""What the training loop logs through: the `Tracker` protocol, MLflow's implementation, and a null one.

The loop, the methods and the reports see only `Tracker`. `MlflowTracker` logs one MLflow run; `NullTracker` drops
everything, so a benchmark or a test can run the loop without a store, and a process that is not the one logging
(a rank other than 0) can run the same code.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import yaml

from runner.tracking.liveness import owner_tags
from runner.tracking.names import PARENT_TAG
from runner.tracking.outbox import WRITE_TIMEOUT_SECONDS, Outbox, Write, perform
from runner.tracking.queries import download_artifact
from runner.tracking.store import client_for, experiment_id, is_server, quick_http_requests
from schemas.training import Tracking


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


BATCH_SIZES = {"params": 100, "metrics": 500}  # per request, under MLflow's limits


def _scalar(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


class Tracker(Protocol):
    """Where one run's parameters, metrics and artifacts go."""

    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, Any], step: int, timestamp_ms: int | None = None) -> None: ...
    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_image_grid(self, images: Any, artifact_file: str, nrow: int | None = None) -> None: ...
    def log_bytes(self, data: bytes, artifact_file: str) -> None: ...


class NullTracker:
    """Logs nothing: the loop without MLflow (benchmarks, tests), or a process other than the logging one."""

    local_folder: Path | None = None  # no checkpoint of its own on this machine (see MlflowTracker.local_folder)

    def __init__(self, run_id: str = "") -> None:
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int, timestamp_ms: int | None = None) -> None:
        pass

    def log_dict(self, data: Any, artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        pass

    def log_image_grid(self, images: Any, artifact_file: str, nrow: int | None = None) -> None:
        pass

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        pass


def _end_run(client: Any, run_id: str, status: str) -> bool:
    """Set the final status; False when even that fails (the store's disk is full, the server is gone)."""
    try:
        client.set_terminated(run_id, status=status)
    except Exception:
        return False
    return True


def _sent_all(outbox: Outbox) -> bool:
    """One more try at what is queued, without waiting for a server that is down."""
    try:
        outbox.flush()
    except Exception:
        return False
    return not outbox.pending


class MlflowTracker:
    """Logs one MLflow run. Open it with `MlflowTracker.open(...)`, which ends the run with the right status.

    On a tracking server, an opened run writes through an `Outbox`: an outage queues its logs while training goes
    on, and `local_folder` (this machine) holds its checkpoint, so the work is safe whatever the server does.
    """

    def __init__(self, client: Any, run_id: str, outbox: Outbox | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.outbox = outbox
        self.logged_through: dict[str, int] = {}  # metric -> last step already logged; those are not logged again
        self.ended_as: str | None = None  # the final status, once it is stored

    @property
    def local_folder(self) -> Path | None:
        """Where this run keeps its checkpoint on this machine when its store is a server; None for a local store."""
        return None if self.outbox is None else self.outbox.folder

    @classmethod
    @contextmanager
    def open(
        cls,
        tracking: Tracking,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        resume_run_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> Iterator[MlflowTracker]:
        """Start (or resume) a run; mark it FINISHED, FAILED, or KILLED (Ctrl-C) when the block ends."""
        client = client_for(tracking)
        if resume_run_id is not None:
            client.update_run(resume_run_id, status="RUNNING")
            run_id = resume_run_id
        else:
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags[PARENT_TAG] = parent_run_id
            run_id = client.create_run(experiment_id(tracking), tags=all_tags, run_name=run_name).info.run_id
        outbox = None
        if is_server(tracking.tracking_uri):
            outbox = Outbox(client, run_id, tracking.tracking_uri, tracking.server_wait)
        tracker = cls(client, run_id, outbox)
        try:
            if outbox is not None:
                outbox.drain()  # what a previous process of this run could not send
            tracker.set_tags(owner_tags())
            yield tracker
            tracker._end("FINISHED")
        except KeyboardInterrupt:
            tracker._end("KILLED")
            raise
        except BaseException:
            tracker._end("FAILED")
            raise
        finally:
            if outbox is not None:
                outbox.close(ended=tracker.ended_as is not None)

    def _end(self, status: str) -> None:
        """Store the final status after every queued write. A run that finished waits for a server that is down
        (up to `tracking.server_wait`); one that failed or was stopped does not, and its status stays unset then."""
        outbox = self.outbox
        if outbox is not None:
            if status == "FINISHED":
                outbox.drain()
            elif outbox.is_down() or not _sent_all(outbox):
                return
        with quick_http_requests(WRITE_TIMEOUT_SECONDS) if outbox is not None else nullcontext():
            if status == "FINISHED":
                self.client.set_terminated(self.run_id, status=status)
            elif not _end_run(self.client, self.run_id, status):
                return
        self.ended_as = status

    def wait_for_server(self) -> None:
        """Before a call that cannot be queued: send what is queued, waiting out an outage up to
        `tracking.server_wait` (then `TrackingOutage`, one line, the run safe in its local folder)."""
        if self.outbox is not None:
            self.outbox.drain()

    @classmethod
    def attach(cls, tracking: Tracking, run_id: str) -> MlflowTracker:
        """Log more to an existing run without touching its status (a sweep's parent, a report)."""
        return cls(client_for(tracking), run_id)

    def skip_logged_steps(self) -> None:
        """From now on, drop metric points at or before the last step already logged for that metric.

        A resumed run replays the iterations after its checkpoint; a killed run may have logged some of them.
        """
        keys = self.client.get_run(self.run_id).data.metrics
        self.logged_through = {
            key: max(point.step for point in self.client.get_metric_history(self.run_id, key)) for key in keys
        }

    def _write(self, write: Write) -> None:
        if self.outbox is not None:
            self.outbox.send(write)
        else:
            perform(self.client, self.run_id, write)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [[key, str(value)[:6000]] for key, value in flatten(params).items()]
        for start in range(0, len(items), BATCH_SIZES["params"]):
            self._write(Write("params", items[start : start + BATCH_SIZES["params"]]))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._write(Write("tags", [[key, str(value)] for key, value in tags.items()]))

    def log_metrics(self, metrics: Mapping[str, Any], step: int, timestamp_ms: int | None = None) -> None:
        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        items = [
            [key, _scalar(value), now, step]
            for key, value in metrics.items()
            if step > self.logged_through.get(key, -1)
        ]
        for start in range(0, len(items), BATCH_SIZES["metrics"]):
            self._write(Write("metrics", items[start : start + BATCH_SIZES["metrics"]]))

    def _log_file(self, artifact_file: str, write_to: Callable[[Path], None]) -> None:
        """Write an artifact's content to a file, then log it; through a server, the file waits in the outbox."""
        folder, _, name = artifact_file.rpartition("/")
        if self.outbox is not None:
            path = self.outbox.spool(name)
            write_to(path)
            self.outbox.send(Write("artifact", [[str(path), folder or None]], owned=True, destination=artifact_file))
            return
        with tempfile.TemporaryDirectory(prefix="metassl-artifact-") as tmp:
            path = Path(tmp) / name
            write_to(path)
            self.client.log_artifact(self.run_id, str(path), folder or None)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        if artifact_file.endswith((".yaml", ".yml")):  # as MLflow's own `log_dict` writes them
            text = yaml.dump(data, indent=2, default_flow_style=False)
        else:
            text = json.dumps(data, indent=2, default=str)
        self._log_file(artifact_file, lambda path: path.write_text(text))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._log_file(artifact_file, lambda path: path.write_text(text))

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file. Through a server, a file outside the run's local folder is copied there first (it may be gone
        by the time an outage ends); one inside it (the checkpoint) is sent as it is then."""
        local_path = Path(local_path)
        destination = f"{artifact_path}/{local_path.name}" if artifact_path else local_path.name
        if self.outbox is not None and not local_path.is_relative_to(self.outbox.folder):
            self._log_file(destination, lambda path: shutil.copyfile(local_path, path))
        else:
            self._write(Write("artifact", [[str(local_path), artifact_path]], destination=destination))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._log_file(artifact_file, lambda path: figure.savefig(path))

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
        """Log `data` as the artifact `artifact_file` (folders/name.ext)."""
        self._log_file(artifact_file, lambda path: path.write_bytes(data))

    def download(self, artifact_file: str, folder: Path) -> Path | None:
        """Fetch one artifact of this run into `folder` (from the server, or the local store); None if absent."""
        return download_artifact(self.client, self.run_id, artifact_file, folder)
