"""CPU, memory (and GPU, with nvidia-ml-py) while a run trains, by MLflow's own system-metrics monitor: the run's
"System metrics" tab, metrics named `system/...`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from schemas.training import Tracking


@contextmanager
def system_metrics(tracking: Tracking, run_id: str, resume: bool = False) -> Iterator[None]:
    """Sample every `tracking.system_metrics_interval` seconds while the block runs (nothing when it is off)."""
    if not tracking.system_metrics:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=tracking.system_metrics_interval,
        resume_logging=resume,
        tracking_uri=tracking.tracking_uri,
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
