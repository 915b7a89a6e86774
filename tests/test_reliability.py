"""Faults on the real CLI and a real MLflow store: signals, SIGKILL, corrupt or malicious files, a full disk,
divergence, and concurrent starts on a fresh store."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from runner.run.checkpoint import load_checkpoint
from runner.tracking import shown_status
from tests.helpers import RECIPES, ROOT, metassl, tracking_overrides

DIGITS = str(RECIPES / "digits_tiny.yaml")
SCHEDULE = [
    "-o", "schedule.iterations=300", "-o", "schedule.checkpoint_every=50", "-o", "schedule.eval_every=100",
    "-o", "schedule.log_every=10", "-o", "runtime.threads=1",
]  # fmt: skip
RESUME_LINE = re.compile(
    r"^interrupted at iteration (\d+)/300; run (\w+) saved and marked KILLED; continue it with: (metassl run .+)$"
)
# A signal that lands after the loop (while the outputs are logged) names the last iteration instead.
AFTER_TRAINING_LINE = re.compile(
    r"^interrupted after the last iteration \((\d+)\); run (\w+) saved and marked KILLED; continue it with: (metassl"
    r" run .+)$"
)


def store_uri(store: Path) -> str:
    return f"sqlite:///{store / 'mlruns'}/mlflow.db"


def client_for(store: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=store_uri(store))


def start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "runner.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended early: {process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def last_step(store: Path, key: str = "loss/total") -> int:
    database = store / "mlruns" / "mlflow.db"
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(database, timeout=5) as connection:
            row = connection.execute("select max(step) from metrics where key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # the schema is still being created
        return 0
    return row[0] or 0


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1]


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [point.step for point in client.get_metric_history(run_id, key)]


def assert_every_step_once(client: MlflowClient, run_id: str) -> None:
    assert sorted(steps(client, run_id, "loss/total")) == list(range(10, 301, 10))
    assert sorted(steps(client, run_id, "test/accuracy")) == [100, 200, 300]
    for key in client.get_run(run_id).data.metrics:
        logged = steps(client, run_id, key)
        assert len(logged) == len(set(logged)), (key, logged)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    store = tmp_path_factory.mktemp("uninterrupted")
    result = metassl("run", DIGITS, *SCHEDULE, *tracking_overrides(store))
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = result.stdout.split()[1]
    return client_for(store).get_run(run_id).data.metrics


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_resume_loses_nothing(tmp_path: Path, uninterrupted: dict[str, float]):
    process = start("run", DIGITS, *SCHEDULE, *tracking_overrides(tmp_path))
    wait_for(lambda: last_step(tmp_path) >= 70, process)  # past the first checkpoint (50)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    match = RESUME_LINE.match(one_error_line(stderr))
    assert match, stderr[-2000:]
    iteration, run_id, command = int(match[1]), match[2], match[3]
    assert iteration >= 70
    client = client_for(tmp_path)
    assert client.get_run(run_id).info.status == "KILLED"
    checkpoint = next((tmp_path / "mlruns").rglob("checkpoints/last.pt"))
    assert load_checkpoint(checkpoint)["iteration"] == iteration  # saved at the signal, not at 50

    assert command == f"metassl run --resume {run_id} --tracking-uri {store_uri(tmp_path)}"
    resumed = metassl(*command.split()[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming run {run_id} at iteration {iteration}" in resumed.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert_every_step_once(client, run_id)
    for key in ("final/test_accuracy", "test/loss"):  # the same weights as without the signal
        assert run.data.metrics[key] == uninterrupted[key]


@pytest.mark.slow
def test_sigterm_during_start_up_ends_cleanly(tmp_path: Path):
    process = start("run", DIGITS, *SCHEDULE, *tracking_overrides(tmp_path))
    time.sleep(1.5)  # importing torch, loading data: no run exists yet
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert one_error_line(stderr) == "interrupted"


@pytest.mark.slow
def test_sigterm_just_after_training_ends_cleanly(tmp_path: Path):
    process = start("run", DIGITS, *SCHEDULE, *tracking_overrides(tmp_path))
    wait_for(lambda: last_step(tmp_path, "test/accuracy") >= 300, process)  # training is over; outputs are logged
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr
    (run,) = client_for(tmp_path).search_runs([client_for(tmp_path).get_experiment_by_name("metassl").experiment_id])
    if process.returncode == 0:  # the signal came while the outputs were logged: they finish first
        assert run.info.status == "FINISHED"
    else:
        assert process.returncode == 130 and run.info.status == "KILLED"
        line = one_error_line(stderr)
        match = RESUME_LINE.match(line) or AFTER_TRAINING_LINE.match(line)
        assert match is not None and match[1] == "300", line
        resumed = metassl("run", "--resume", run.info.run_id, "--tracking-uri", store_uri(tmp_path))
        assert resumed.returncode == 0, resumed.stderr[-3000:]


@pytest.mark.slow
def test_sigkilled_run_shows_dead_and_resumes_with_every_step_once(tmp_path: Path, uninterrupted: dict[str, float]):
    process = start("run", DIGITS, *SCHEDULE, *tracking_overrides(tmp_path))
    # Kill once metrics were logged past the last checkpoint (a multiple of 50), at least two logs short of the
    # next one: a resume replays those steps. SIGSTOP freezes the run at once, so the slow status check below can't
    # let it reach the next checkpoint on a loaded machine.
    wait_for(lambda: last_step(tmp_path) > 50 and 0 < last_step(tmp_path) % 50 <= 30, process)
    process.send_signal(signal.SIGSTOP)
    client = client_for(tmp_path)
    (alive,) = client.search_runs([client.get_experiment_by_name("metassl").experiment_id])
    assert shown_status(alive) == "RUNNING"  # what `metassl runs` shows while the process lives
    process.send_signal(signal.SIGKILL)
    process.wait()
    logged_before = last_step(tmp_path)

    listed = metassl("runs", "--tracking-uri", store_uri(tmp_path))
    assert listed.returncode == 0
    header, first = listed.stdout.splitlines()[:2]
    assert header.split()[:3] == ["RUN", "ID", "STATUS"]
    run_id, status = first.split()[:2]
    assert status == "DEAD"

    resumed = metassl("run", "--resume", DIGITS, *SCHEDULE, *tracking_overrides(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.split()[1] == run_id
    at = int(re.search(r"resuming run \w+ at iteration (\d+)", resumed.stderr)[1])
    assert at < logged_before  # so steps in (at, logged_before] were logged twice before this fix
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_every_step_once(client, run_id)
    assert client.get_run(run_id).data.metrics["final/test_accuracy"] == uninterrupted["final/test_accuracy"]


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_first_nan(tmp_path: Path):
    # The lr ramps up linearly (0.1 per iteration): fine for the first checkpoint at 20, hopeless soon after.
    diverging = [
        "-o", "optim.classifier.lr=1000", "-o", "optim.lr_schedule.warmup_iterations=10000",
        "-o", "schedule.checkpoint_every=20", "-o", "schedule.iterations=400", "-o", "runtime.threads=1",
    ]  # fmt: skip
    result = metassl("run", DIGITS, *diverging, *tracking_overrides(tmp_path))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    match = re.fullmatch(
        r"error: training diverged: the loss is (nan|inf) at iteration (\d+); lower optim\.classifier\.lr \(\S+ now\)"
        r" or set optim\.grad_clip \(the run is marked FAILED; its last checkpoint predates the divergence\)",
        line,
    )
    assert match, line
    diverged_at = int(match[2])
    client = client_for(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("metassl").experiment_id])
    assert run.info.status == "FAILED"
    assert "final/test_accuracy" not in run.data.metrics
    checkpoint = load_checkpoint(next((tmp_path / "mlruns").rglob("checkpoints/last.pt")))
    assert 20 <= checkpoint["iteration"] < diverged_at
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["classifier"].values())


@pytest.mark.slow
def test_four_runs_and_a_listing_start_together_on_a_fresh_store(tmp_path: Path):
    short = ["-o", "schedule.iterations=4", "-o", "schedule.eval_every=4", "-o", "runtime.threads=1"]
    processes = [start("run", DIGITS, *short, "-o", f"seed={seed}", *tracking_overrides(tmp_path)) for seed in range(4)]
    processes.append(start("runs", "--tracking-uri", store_uri(tmp_path)))
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("metassl").experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 4


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """A finished 20-iteration run: (store, run id, artifact folder)."""
    store = tmp_path_factory.mktemp("short")
    fast = ["-o", "schedule.iterations=20", "-o", "schedule.checkpoint_every=10", "-o", "runtime.threads=1"]
    result = metassl("run", DIGITS, *fast, *tracking_overrides(store))
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = result.stdout.split()[1]
    artifacts = Path(client_for(store).get_run(run_id).info.artifact_uri.removeprefix("file://"))
    return store, run_id, artifacts


class Exploit:
    """Unpickling this calls os.system: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_malicious_and_corrupt_checkpoints_are_refused_without_running_anything(
    short_run: tuple[Path, str, Path], tmp_path: Path
):
    store, run_id, artifacts = short_run
    client = client_for(store)
    client.set_terminated(run_id, status="KILLED")  # resumable
    checkpoint = artifacts / "checkpoints" / "last.pt"
    good = checkpoint.read_bytes()
    marker = tmp_path / "pwned"
    remedy = "delete it to resume from the start of the run, or start a new run with `metassl run RECIPE`"
    named = f"checkpoints/last.pt of run {run_id}"  # the run's artifact, which resume fetches through MLflow
    cases = {
        "malicious": (
            lambda: torch.save({"iteration": Exploit(marker)}, checkpoint),
            f"error: checkpoint {named} is unsafe to load: it holds Python objects beyond tensors and plain"
            f" data, which are refused so that loading runs no code; {remedy}",
        ),
        "garbage": (
            lambda: checkpoint.write_bytes(os.urandom(4096)),
            f"error: checkpoint {named} is not a metassl checkpoint; {remedy}",
        ),
        "empty": (lambda: checkpoint.write_bytes(b""), f"error: checkpoint {named} is empty; {remedy}"),
        "truncated": (
            lambda: checkpoint.write_bytes(good[: len(good) // 2]),
            f"error: checkpoint {named} is unreadable (",
        ),
    }  # fmt: skip
    try:
        for name, (damage, expected) in cases.items():
            damage()
            result = metassl("run", "--resume", run_id, "--tracking-uri", store_uri(store))
            assert result.returncode == 2, (name, result.stderr[-2000:])
            line = one_error_line(result.stderr)
            assert line == expected or (name == "truncated" and line.startswith(expected) and remedy in line), line
            assert len(result.stderr.strip().splitlines()) == 1
            assert not marker.exists()
            assert client.get_run(run_id).info.status == "KILLED"  # nothing else changed
    finally:
        checkpoint.write_bytes(good)


@pytest.mark.slow
def test_eval_with_garbage_or_mismatched_weights_is_one_line(short_run: tuple[Path, str, Path]):
    store, run_id, artifacts = short_run
    weights = artifacts / "weights" / "classifier.safetensors"
    good = weights.read_bytes()
    remedy = "re-download or re-log the run's weights, or re-run its recipe with `metassl run`"
    try:
        weights.write_bytes(b"\x00garbage" * 100)
        result = metassl("eval", run_id, "--tracking-uri", store_uri(store))
        assert result.returncode == 2
        line = one_error_line(result.stderr)
        assert line.startswith(
            f"error: weights weights/classifier.safetensors of run {run_id} are unreadable ("
        ) and line.endswith(remedy), line

        save_file({"bogus": torch.zeros(3)}, str(weights))
        result = metassl("eval", run_id, "--tracking-uri", store_uri(store))
        assert result.returncode == 2
        line = one_error_line(result.stderr)
        assert line.startswith(
            f"error: weights weights/classifier.safetensors of run {run_id} do not fit the run's classifier (missing "
        ), line
        assert "unexpected bogus" in line and line.endswith(remedy)
    finally:
        weights.write_bytes(good)
    assert metassl("eval", run_id, "--tracking-uri", store_uri(store)).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs (root only); skipped where mounting is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    ballast = disk / "ballast"
    with open(ballast, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return ballast


@pytest.mark.slow
@pytest.mark.parametrize("store_on_full_disk", [False, True])
def test_a_full_disk_fails_cleanly_and_the_last_checkpoint_resumes(
    tmp_path: Path, small_disk: Path, store_on_full_disk: bool
):
    store = small_disk if store_on_full_disk else tmp_path
    where = [
        "-o", f"tracking.tracking_uri={store_uri(store)}", "-o", f"tracking.artifact_root={small_disk / 'artifacts'}",
        "-o", "tracking.log_model=false",
    ]  # fmt: skip
    process = start("run", DIGITS, *SCHEDULE, *where)
    wait_for(lambda: any(small_disk.rglob("checkpoints/last.pt")), process)
    ballast = fill(small_disk)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 2, stderr[-3000:]
    line = one_error_line(stderr)
    assert [line for line in stderr.splitlines() if "error" in line.lower()] == [line], stderr[-3000:]
    assert line.startswith("error: no space left on the disk ("), line
    assert "metassl run --resume" in line
    checkpoint = next(small_disk.rglob("checkpoints/last.pt"))
    assert not list(small_disk.rglob("*.tmp"))
    saved = load_checkpoint(checkpoint)["iteration"]
    assert saved >= 50 and saved % 50 == 0

    run_id = line.split(" run ", 1)[1].split()[0]
    client = client_for(store)
    status = client.get_run(run_id).info.status
    if store_on_full_disk and "could not be marked FAILED" in line:
        assert status == "RUNNING"
        assert f"{run_id}  DEAD" in metassl("runs", "--tracking-uri", store_uri(store)).stdout
    else:
        assert "is marked FAILED" in line and status == "FAILED"

    ballast.unlink()
    resumed = metassl("run", "--resume", run_id, "--tracking-uri", store_uri(store))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming run {run_id} at iteration {saved}" in resumed.stderr
    assert client.get_run(run_id).info.status == "FINISHED"
