"""Shared helpers for the tests: run the real `metassl` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import re
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


def start_cli(*args: str, env: dict[str, str] | None = None, own_group: bool = False) -> subprocess.Popen[str]:
    """Start `python -m runner.cli ARGS` in the background, its output piped; `own_group`: in its own process group,
    so that a test can signal it together with its children."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        start_new_session=own_group,
    )


def tracking_overrides(tmp_path: Path) -> list[str]:
    """Point a run's MLflow store into a temporary folder."""
    store = tmp_path / "mlruns"
    return ["-o", f"tracking.tracking_uri=sqlite:///{store}/mlflow.db", "-o", f"tracking.artifact_root={store}"]


COSTS = (
    "perf/",
    "system/",
    "synthetic/generated",
)  # timings, machine samples, rows rendered (a resumed cache starts empty)


def result_metrics(client: Any, run_id: str) -> dict[str, float]:
    """Every metric's last value but its costs: what an exact resume or a re-run must reproduce."""
    metrics = client.get_run(run_id).data.metrics
    return {key: value for key, value in metrics.items() if not key.startswith(COSTS)}


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


def devices_in_progress(stderr: str) -> dict[str, str]:
    """Each child's devices, from a sweep's or a study's progress lines (`[child] started on device 0,1` until the
    child's next line); asserts that no two live children shared a device and that two or more were live at once."""
    live: dict[str, set[str]] = {}
    shown: dict[str, str] = {}
    most = 0
    for line in stderr.splitlines():
        match = re.match(r"(\[[^\]]+\]) (.*)", line)
        if not match:
            continue
        child, text = match.groups()
        started = re.search(r"started on device ([^\s:]+)", text)
        if started:
            devices = set(started.group(1).split(","))
            for other, held in live.items():
                assert not devices & held, f"{child} started on {devices & held} while {other} held it"
            live[child], shown[child] = devices, started.group(1)
            most = max(most, len(live))
        elif child in live:
            del live[child]
    assert most >= 2, "never two children at once: the check shows nothing about sharing"
    return shown
