"""Shared helpers for the tests: run the real `metassl` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def metassl(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `python -m runner.cli ARGS` like a user would, returning exit code, stdout and stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tracking_overrides(tmp_path: Path) -> list[str]:
    """Point a run's MLflow store into a temporary folder."""
    store = tmp_path / "mlruns"
    return ["-o", f"tracking.tracking_uri=sqlite:///{store}/mlflow.db", "-o", f"tracking.artifact_root={store}"]


def kill_after_first_checkpoint(store: Path, *args: str, timeout: float = 120) -> Path:
    """Start `metassl ARGS` (its store under `store`), SIGKILL it once a checkpoint exists; that checkpoint."""
    process = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    checkpoints: list[Path] = []
    while not checkpoints and time.monotonic() < deadline and process.poll() is None:
        checkpoints = list((store / "mlruns").rglob("checkpoints/last.pt"))
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoints, "no checkpoint was written before the run ended"
    return checkpoints[0]


def devices_of(client: Any, run_id: str) -> str | None:
    """The CUDA_VISIBLE_DEVICES a run's process had, as the run itself recorded it (environment/environment.json)."""
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, "environment/environment.json", folder)
        return json.loads(Path(path).read_text())["cuda_visible_devices"]


def assert_no_shared_device(runs: list[Any], devices: dict[str, str | None]) -> None:
    """Runs whose lifetimes overlapped had different devices (`devices`: run id -> CUDA_VISIBLE_DEVICES)."""
    overlapping = 0
    for a in runs:
        for b in runs:
            if (
                a.info.run_id < b.info.run_id
                and a.info.start_time < b.info.end_time
                and b.info.start_time < a.info.end_time
            ):
                overlapping += 1
                shared = set(devices[a.info.run_id].split(",")) & set(devices[b.info.run_id].split(","))
                assert not shared, f"runs {a.info.run_id} and {b.info.run_id} ran at once on {shared}"
    assert overlapping, "no two runs overlapped: the test shows nothing about sharing"
