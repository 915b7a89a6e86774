"""What the training loop logs through: the `Tracker` protocol, MLflow's implementation, and a null one.

The loop, the methods and the reports see only `Tracker`. `MlflowTracker` logs one MLflow run; `NullTracker` drops
everything, so a benchmark or a test can run the loop without a store, and a process that is not the one logging
(a rank other than 0) can run the same code.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from runner.tracking.liveness import owner_tags
from runner.tracking.names import PARENT_TAG
from runner.tracking.queries import download_artifact
from runner.tracking.store import client_for, experiment_id
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


def _scalar(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


class Tracker(Protocol):
    """Where one run's parameters, metrics and artifacts go."""

    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None: ...
    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_image_grid(self, images: Any, artifact_file: str, nrow: int | None = None) -> None: ...
    def log_bytes(self, data: bytes, artifact_file: str) -> None: ...


class NullTracker:
    """Logs nothing: the loop without MLflow (benchmarks, tests), or a process other than the logging one."""

    def __init__(self, run_id: str = "") -> None:
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
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


class MlflowTracker:
    """Logs one MLflow run. Open it with `MlflowTracker.open(...)`, which ends the run with the right status."""

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
