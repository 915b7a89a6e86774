"""System metrics: sampled on a thread, logged through the run's tracker with their own times, on a real store."""

from __future__ import annotations

import time
from pathlib import Path

from runner.run.system_metrics import PREFIX, system_metrics
from runner.tracking import MlflowTracker, client_for
from schemas.training import Tracking


def history(tracking: Tracking, run_id: str, key: str) -> list[tuple[int, int]]:
    """(step, timestamp) of each point of one metric."""
    return sorted((point.step, point.timestamp) for point in client_for(tracking).get_metric_history(run_id, key))


def test_samples_are_logged_with_their_times_and_a_resume_continues_their_steps(tmp_path: Path) -> None:
    tracking = Tracking(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path), system_metrics_interval=0.2
    )
    key = PREFIX + "cpu_utilization_percentage"
    with MlflowTracker.open(tracking) as tracker, system_metrics(tracking, tracker) as logs:
        time.sleep(0.7)  # three samples wait on the sampler thread ...
        before = int(time.time() * 1000)
        logs.log_metrics({"train/loss": 1.0}, step=1)  # ... and go out with the loop's own metrics
    run_id = tracker.run_id
    points = history(tracking, run_id, key)
    steps = [step for step, _ in points]
    assert steps == list(range(len(steps))) and len(steps) >= 4  # three or more sampled, one more as the block ended
    assert all(timestamp < before for _, timestamp in points[:3])  # each keeps the time it was taken

    with MlflowTracker.open(tracking, resume_run_id=run_id) as tracker:
        tracker.skip_logged_steps()
        with system_metrics(tracking, tracker):
            pass  # shorter than the interval: the last sample alone
    assert [step for step, _ in history(tracking, run_id, key)] == [*steps, len(steps)]


def test_off_means_no_samples(tmp_path: Path) -> None:
    tracking = Tracking(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path), system_metrics=False
    )
    with MlflowTracker.open(tracking) as tracker, system_metrics(tracking, tracker) as logs:
        assert logs is tracker
    assert not [key for key in client_for(tracking).get_run(tracker.run_id).data.metrics if key.startswith(PREFIX)]
