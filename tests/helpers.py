"""Shared helpers for the tests: run the real `metassl` CLI in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
