"""CPU, memory, disk, network (and GPU, with nvidia-ml-py) while a run trains: the run's "System metrics" tab,
metrics named `system/...`, sampled by MLflow's own collectors.

A thread only samples; the samples are logged from the training thread through the run's tracker, with their own
timestamps. So they ride out a tracking outage like every other metric, nothing else writes to the store at the same
time, and a run that stops never waits on a sampler stuck in MLflow's retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from runner.tracking.tracker import MlflowTracker, Tracker
from schemas.training import Tracking

PREFIX = "system/"


class SystemSampler:
    """Samples every `interval` seconds on a thread of its own; `take()` hands over the samples not yet logged."""

    def __init__(self, run_id: str, interval: float, first_step: int) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.collector = SystemMetricsMonitor(run_id, sampling_interval=interval)  # never started: it collects only
        self.interval = interval
        self.step = first_step
        self.ready: list[tuple[dict[str, float], int, int]] = []  # (metrics, step, timestamp in ms)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample_until_stopped, daemon=True, name="metassl-system-metrics")

    def _sample_until_stopped(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        with self.lock:
            self.collector.collect_metrics()
            metrics = {PREFIX + key: value for key, value in self.collector.aggregate_metrics().items()}
            for monitor in self.collector.monitors:
                monitor.clear_metrics()
            self.ready.append((metrics, self.step, int(time.time() * 1000)))
            self.step += 1

    def take(self) -> list[tuple[dict[str, float], int, int]]:
        with self.lock:
            ready, self.ready = self.ready, []
        return ready

    def start(self) -> None:
        self.collector.collect_metrics()  # CPU use is measured from here on
        self.thread.start()

    def stop(self) -> None:
        """The last sample, as the block ends: a run shorter than the interval still has one."""
        self.stopped.set()
        self.thread.join()
        self.sample()


class SampledTracker:
    """The run's tracker, which also logs the sampler's samples each time the loop logs its own metrics."""

    def __init__(self, tracker: MlflowTracker, sampler: SystemSampler) -> None:
        self.tracker = tracker
        self.sampler = sampler

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)

    def log_metrics(self, metrics: Mapping[str, Any], step: int, timestamp_ms: int | None = None) -> None:
        self.tracker.log_metrics(metrics, step, timestamp_ms)
        self.log_samples()

    def log_samples(self) -> None:
        for metrics, step, timestamp_ms in self.sampler.take():
            self.tracker.log_metrics(metrics, step, timestamp_ms)


@contextmanager
def system_metrics(tracking: Tracking, tracker: MlflowTracker) -> Iterator[Tracker]:
    """The tracker the training loop should log through: with `tracking.system_metrics` on, one that also logs
    a sample every `tracking.system_metrics_interval` seconds. A resumed run's samples continue its steps."""
    if not tracking.system_metrics:
        yield tracker
        return
    logged = [step for key, step in tracker.logged_through.items() if key.startswith(PREFIX)]
    sampler = SystemSampler(tracker.run_id, tracking.system_metrics_interval, first_step=max(logged, default=-1) + 1)
    sampled = SampledTracker(tracker, sampler)
    sampler.start()
    try:
        yield sampled
    finally:
        sampler.stop()
    sampled.log_samples()  # only when the block ended well: a failed run's tracker may be past writing
