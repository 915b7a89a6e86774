"""Shared helpers for the tests: run the real `metassl` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
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
